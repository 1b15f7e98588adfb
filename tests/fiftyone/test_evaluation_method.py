"""The tfovss evaluation is a FiftyOne evaluation method: ``evaluate_segmentations`` with
``method=OVSSEvaluationConfig`` gives what ``run_evaluation`` gives, resolves the classes
itself, and rejects unknown predicted class names before anything is written."""
from __future__ import annotations

import numpy as np
import pytest


def _shifted_predictions(fo, ds, field="pred"):
    """Ground truth rolled by a few pixels, void -> background: a prediction with errors."""
    preds = {}
    for sid, gt in zip(ds.values("id"), ds.values("ground_truth")):
        m = np.roll(gt.get_mask(), shift=(4, -6), axis=(0, 1)).astype(np.uint8)
        m[m == 255] = 0
        preds[sid] = fo.Segmentation(mask=m)
    ds.set_values(field, preds, key_field="id")


def test_fiftyone_evaluate_segmentations_with_the_tfovss_method(fo, voc_ds):
    from tfovss_fiftyone.evaluation import (OVSSEvaluationConfig, OVSSEvaluationResults,
                                            run_evaluation)

    _shifted_predictions(fo, voc_ds)
    direct = run_evaluation(voc_ds, "pred", "ground_truth", None)
    res = voc_ds.evaluate_segmentations("pred", gt_field="ground_truth", eval_key="fw",
                                        method=OVSSEvaluationConfig)
    assert isinstance(res, OVSSEvaluationResults)
    assert 0.2 < direct.mIoU < 1.0
    assert res.mIoU == direct.mIoU and res.iou == direct.iou and res.aAcc == direct.aAcc
    info = voc_ds.get_evaluation_info("fw")
    assert info.config.method == "tfovss"
    # the classes come from the ground truth's mask_targets and are kept with the run
    assert info.config.classes[:2] == [[0, "background"], [1, "aeroplane"]]
    assert len(info.config.classes) == 21
    assert voc_ds.load_evaluation_results("fw", cache=False).mIoU == direct.mIoU
    assert voc_ds.values("fw_miou") == pytest.approx(
        [run_evaluation(voc_ds.select(sid), "pred", "ground_truth", None).mIoU
         for sid in voc_ds.values("id")], abs=1e-12)


def test_unknown_predicted_class_fails_before_registration(fo, voc_ds):
    from tfovss_fiftyone.evaluation import EvaluationInputError, OVSSEvaluationConfig

    _shifted_predictions(fo, voc_ds)
    targets = dict(voc_ds.mask_targets)
    targets["pred"] = {0: "background", 1: "unicorn"}
    voc_ds.mask_targets = targets
    voc_ds.save()
    with pytest.raises(EvaluationInputError, match="unicorn"):
        voc_ds.evaluate_segmentations("pred", gt_field="ground_truth", eval_key="bad",
                                      method=OVSSEvaluationConfig)
    assert "bad" not in voc_ds.list_evaluations()
    assert "bad_miou" not in voc_ds.get_field_schema()
