"""The App runs a panel's events concurrently (on_load, on_sort, on_change_a, ...): the panel's
reads of the same stored evaluation from several threads must all succeed. FiftyOne's shared
run document failed under this ("'str' object has no attribute 'decode'"), which the App journey
hit as an operator error on the panel."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from support.fo import VOC_CLASSES, make_dataset, needs_core, voc_items

pytestmark = [needs_core]


def test_panel_reads_one_evaluation_from_many_threads(fo, data_dir):
    from tfovss_fiftyone import panels
    from tfovss_fiftyone.evaluation import run_evaluation

    ds = make_dataset(fo, voc_items(data_dir), dict(enumerate(VOC_CLASSES)), "threads")
    try:
        shifted = {}
        for s in ds:
            m = np.roll(s.ground_truth.get_mask(), 12, axis=1)
            shifted[s.id] = fo.Segmentation(mask=np.where(m == 255, 0, m).astype(np.uint8))
        ds.set_values("gt_shifted", shifted, key_field="id")
        ds.mask_targets = {**ds.mask_targets, "gt_shifted": ds.mask_targets["ground_truth"]}
        ds.save()
        run_evaluation(ds, "gt_shifted", "ground_truth", "eval_shifted")
        expected = (panels.per_class_rows(ds, "eval_shifted"),
                    panels.top_confused_pairs(ds, "eval_shifted"))
        assert expected[0] and expected[1]

        def one_event(_):
            d = fo.load_dataset(ds.name)  # the same singleton, as in the App's threads
            return (panels.per_class_rows(d, "eval_shifted"),
                    panels.top_confused_pairs(d, "eval_shifted"))

        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(one_event, range(24)))
        assert all(repr(g) == repr(expected) for g in got)  # (NaN IoU: compared as text)
    finally:
        ds.delete()
