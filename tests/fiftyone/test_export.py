"""COCO export: pycocotools decodes it back to the source masks pixel for pixel (RLE and
polygons), image ids / sizes / categories / iscrowd are right, FiftyOne re-imports it, the
operator runs immediate and delegated, and bad input touches nothing."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.coco import decode_coco
from support.fo import URI_EXPORT, run_queued, unique_name


def expected(mask, targets, include_background=False):
    m = mask.astype(np.int64).copy()
    keep = np.isin(m, [v for v in targets if include_background or v != 0])
    m[~keep] = 0
    return m


@pytest.mark.parametrize("encoding", ["rle", "polygon"])
def test_coco_gt_export_roundtrips_pixel_exact(fo, coco_ds, tmp_path, encoding):
    from tfovss_fiftyone.export import export_coco_masks

    out = tmp_path / f"{encoding}.json"
    summary = export_coco_masks(coco_ds, "ground_truth", str(out), encoding=encoding)
    targets = coco_ds.mask_targets["ground_truth"]
    coco, decoded = decode_coco(out)
    d = json.loads(out.read_text())
    # categories from mask_targets (id = mask value, background left out)
    assert [(c["id"], c["name"]) for c in d["categories"]] == \
        [(v, n) for v, n in sorted(targets.items()) if v != 0]
    # image ids and sizes
    assert [im["id"] for im in d["images"]] == list(range(1, len(coco_ds) + 1))
    for sample, im in zip(coco_ds, d["images"]):
        w, h = Image.open(sample.filepath).size
        assert (im["width"], im["height"]) == (w, h)
        assert im["file_name"] == os.path.basename(sample.filepath)
    assert all(a["iscrowd"] == 0 for a in d["annotations"])
    if encoding == "rle":
        assert all(isinstance(a["segmentation"]["counts"], str) for a in d["annotations"])
    else:
        assert all(isinstance(a["segmentation"], list) for a in d["annotations"])
    for sample in coco_ds:
        src = sample.ground_truth.get_mask()
        got = decoded[os.path.basename(sample.filepath)]
        np.testing.assert_array_equal(got, expected(src, targets))
        # one annotation per class present (split="class"); exact areas
        anns = [a for a in d["annotations"]
                if a["image_id"] == d["images"][[s.id for s in coco_ds].index(sample.id)]["id"]]
        present = sorted(v for v in np.unique(src).tolist() if v not in (0, 255))
        assert sorted(a["category_id"] for a in anns) == present
        for a in anns:
            assert a["area"] == int((src == a["category_id"]).sum())
    assert summary["num_images"] == len(coco_ds)
    assert summary["values_not_exported"].keys() <= {"0", "255"}


def test_components_split_and_fiftyone_reimport(fo, voc_ds, tmp_path):
    """Connected regions as separate annotations; FiftyOne's COCO importer reads it back."""
    from tfovss_fiftyone.export import export_coco_masks

    out = tmp_path / "voc.json"
    export_coco_masks(voc_ds, "ground_truth", str(out), split="component")
    d = json.loads(out.read_text())
    assert len(d["annotations"]) > len({(a["image_id"], a["category_id"])
                                        for a in d["annotations"]})
    root = os.path.dirname(voc_ds.first().filepath)
    re_ds = fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset, data_path=root,
                                labels_path=str(out), label_types="segmentations",
                                label_field="seg", name=unique_name("reimport"))
    try:
        assert len(re_ds) == len(voc_ds)
        targets = voc_ds.mask_targets["ground_truth"]
        by_name = {n: v for v, n in targets.items()}
        field = "seg_segmentations" if re_ds.has_field("seg_segmentations") else "seg"
        for sample in re_ds:
            src = voc_ds.match({"filepath": sample.filepath}).first().ground_truth.get_mask()
            rebuilt = np.zeros(src.shape, np.int64)
            dets = sample[field].detections
            assert dets
            for det in dets:
                x, y, w, h = det.bounding_box
                H, W = src.shape
                x0, y0 = int(round(x * W)), int(round(y * H))
                m = det.mask.astype(bool)
                rebuilt[y0:y0 + m.shape[0], x0:x0 + m.shape[1]][m] = by_name[det.label]
            np.testing.assert_array_equal(rebuilt, expected(src, targets))
    finally:
        re_ds.delete()


def test_export_operator_immediate_and_delegated(fo, foo, ade_ds, tmp_path):
    out1 = tmp_path / "imm.json"
    r = foo.execute_operator(URI_EXPORT, ctx={"dataset": ade_ds, "params": {
        "label_field": "ground_truth", "labels_path": str(out1), "encoding": "rle",
        "split": "class"}})
    assert r.result["num_images"] == len(ade_ds)
    _, dec = decode_coco(out1)
    targets = ade_ds.mask_targets["ground_truth"]
    for s in ade_ds:
        np.testing.assert_array_equal(dec[os.path.basename(s.filepath)],
                                      expected(s.ground_truth.get_mask(), targets))

    out2 = tmp_path / "dlg.json"
    r = foo.execute_operator(URI_EXPORT, ctx={"dataset": ade_ds, "params": {
        "label_field": "ground_truth", "labels_path": str(out2), "encoding": "polygon",
        "split": "class", "include_background": True}, "request_delegation": True})
    assert r.delegated and not out2.exists()
    done = run_queued(ade_ds.name)
    assert done and all(x.error is None for x in done), [x.error for x in done]
    d = json.loads(out2.read_text())
    # background exported too: ids shift by one (0 -> 1, k -> k+1)
    assert d["categories"][0] == {"id": 1, "name": "other", "supercategory": ""}
    _, dec = decode_coco(out2)
    for s in ade_ds:
        np.testing.assert_array_equal(dec[os.path.basename(s.filepath)],
                                      s.ground_truth.get_mask().astype(np.int64) + 1)


def test_export_bad_input_touches_nothing(fo, foo, voc_ds, tmp_path):
    from fiftyone.operators.executor import ExecutionError

    from tfovss_fiftyone.export import ExportInputError, export_coco_masks

    existing = tmp_path / "exists.json"
    existing.write_text("keep me")
    with pytest.raises(ExecutionError, match="exists"):
        foo.execute_operator(URI_EXPORT, ctx={"dataset": voc_ds, "params": {
            "label_field": "ground_truth", "labels_path": str(existing)}})
    assert existing.read_text() == "keep me"
    voc_ds.set_values("dets", [fo.Detections(detections=[]) for _ in range(len(voc_ds))])
    with pytest.raises(ExportInputError, match="not Segmentation"):
        export_coco_masks(voc_ds, "dets", str(tmp_path / "x.json"))
    with pytest.raises(ExportInputError, match="does not exist"):
        export_coco_masks(voc_ds, "nope", str(tmp_path / "x.json"))
    voc_ds.set_values("unnamed", [fo.Segmentation(mask=np.zeros((4, 4), np.uint8))
                                  for _ in range(len(voc_ds))])
    with pytest.raises(ExportInputError, match="mask_targets"):
        export_coco_masks(voc_ds, "unnamed", str(tmp_path / "x.json"))
    assert not (tmp_path / "x.json").exists()
    r = foo.execute_operator(URI_EXPORT, ctx={"dataset": voc_ds, "params": {
        "label_field": "ground_truth", "labels_path": str(existing), "overwrite": True}})
    assert json.loads(existing.read_text())["images"]
