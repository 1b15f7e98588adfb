"""Evaluation: MMSeg-exact mIoU against an independent numpy computation, stored as a real
FiftyOne evaluation, through the operator (immediate and delegated), and bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest

from support.fo import (PLUGIN_NAME, URI_EVALUATE, make_dataset, run_queued, triggered,
                      unique_name)


# --- independent reference (plain numpy, MMSeg's intersect_and_union summed over images) ------

def reference_miou(pairs, num_classes, ignore_index=255, reduce_zero_label=False):
    inter = np.zeros(num_classes)
    union = np.zeros(num_classes)
    area_gt = np.zeros(num_classes)
    per_image = []
    for pred, gt in pairs:
        gt = gt.astype(np.int64)
        pred = pred.astype(np.int64)
        if reduce_zero_label:
            gt = np.where(gt == 0, 255, gt - 1)
            gt[gt == 254] = 255
            pred = pred - 1
        keep = gt != ignore_index
        p, g = pred[keep], gt[keep]
        i_img = np.zeros(num_classes)
        u_img = np.zeros(num_classes)
        for c in range(num_classes):
            pc, gc = p == c, g == c
            i_img[c] = np.sum(pc & gc)
            u_img[c] = np.sum(pc) + np.sum(gc) - i_img[c]
            area_gt[c] += np.sum(gc)
        inter += i_img
        union += u_img
        with np.errstate(invalid="ignore", divide="ignore"):
            iou_img = np.where(u_img > 0, i_img / u_img, np.nan)
        per_image.append(np.nanmean(iou_img) if np.isfinite(iou_img).any() else None)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, np.nan)
    return {"mIoU": np.nanmean(iou), "IoU": iou, "aAcc": inter.sum() / area_gt.sum(),
            "per_image": per_image}


def perturb(mask, seed, values):
    """A fake prediction: GT shifted by a few pixels with random blocks of random classes."""
    rng = np.random.default_rng(seed)
    m = np.roll(mask, shift=(3, -5), axis=(0, 1)).astype(np.int64).copy()
    m[m == 255] = 0
    h, w = m.shape
    for _ in range(6):
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
        m[y:y + rng.integers(5, 60), x:x + rng.integers(5, 60)] = rng.choice(values)
    return m.astype(np.uint8)


def add_predictions(fo, ds, values, field="pred", targets=None, perm=None):
    gts = ds.values("ground_truth")
    ids = ds.values("id")
    preds = {}
    arrays = []
    for k, (sid, g) in enumerate(zip(ids, gts)):
        p = perturb(g.get_mask(), k, values)
        arrays.append(p)
        stored = p if perm is None else perm[p]
        preds[sid] = fo.Segmentation(mask=stored.astype(np.uint8))
    ds.set_values(field, preds, key_field="id")
    if targets is not None:
        mt = dict(ds.mask_targets)
        mt[field] = targets
        ds.mask_targets = mt
        ds.save()
    return arrays, [g.get_mask() for g in gts]


def test_plugin_registers_without_errors(foo):
    import fiftyone.plugins.context as fpc

    ctxs = [c for c in fpc.build_plugin_contexts() if c.name == PLUGIN_NAME]
    assert len(ctxs) == 1 and ctxs[0].errors == []
    uris = {o.uri for o in foo.list_operators(enabled=True)}
    for name in ("prelabel_segmentation", "compare_ovss_methods", "evaluate_segmentations",
                 "export_coco_masks", "ovss_evaluations"):
        assert f"{PLUGIN_NAME}/{name}" in uris


def test_voc_miou_matches_numpy_and_is_stored(fo, voc_ds):
    from tfovss_fiftyone.evaluation import OVSSEvaluationResults, run_evaluation

    preds, gts = add_predictions(fo, voc_ds, [0, 1, 15, 8])
    res = run_evaluation(voc_ds, "pred", "ground_truth", "ev")
    ref = reference_miou(zip(preds, gts), 21)
    assert res.mIoU == pytest.approx(ref["mIoU"], abs=1e-12)
    assert res.aAcc == pytest.approx(ref["aAcc"], abs=1e-12)
    np.testing.assert_allclose([np.nan if v is None else v for v in res.iou], ref["IoU"],
                               atol=1e-12)
    # stored as a real FiftyOne evaluation
    assert "ev" in voc_ds.list_evaluations()
    info = voc_ds.get_evaluation_info("ev")
    assert info.config.type == "segmentation" and info.config.method == "tfovss"
    loaded = voc_ds.load_evaluation_results("ev", cache=False)
    assert isinstance(loaded, OVSSEvaluationResults)
    assert loaded.mIoU == pytest.approx(ref["mIoU"], abs=1e-12)
    assert loaded.class_names[:2] == ["background", "aeroplane"]
    cm = np.asarray(loaded.confusion_matrix())
    assert cm.shape[0] >= 21
    # per-sample mIoU: the worst samples can be sorted
    got = voc_ds.values("ev_miou")
    for g, r in zip(got, ref["per_image"]):
        assert g == pytest.approx(r, abs=1e-12)
    worst = voc_ds.sort_by("ev_miou").first()
    assert worst.ev_miou == min(got)
    voc_ds.delete_evaluation("ev")
    assert "ev_miou" not in voc_ds.get_field_schema()


def test_ade_ignore_background_equals_reduce_zero_label(fo, ade_ds):
    from tfovss_fiftyone.evaluation import run_evaluation

    preds, gts = add_predictions(fo, ade_ds, [1, 2, 3, 4, 5, 13])
    res = run_evaluation(ade_ds, "pred", "ground_truth", "ade_ev", background="ignore")
    ref = reference_miou(zip(preds, gts), 150, reduce_zero_label=True)
    assert res.mIoU == pytest.approx(ref["mIoU"], abs=1e-12)
    assert res.aAcc == pytest.approx(ref["aAcc"], abs=1e-12)
    assert res.in_mean[0] is False and res.class_names[0] == "other"


def test_coco_prediction_mapped_by_name(fo, coco_ds):
    """A prediction field with its own (permuted) value order is scored by class name."""
    from tfovss_fiftyone.evaluation import run_evaluation

    targets = dict(coco_ds.mask_targets["ground_truth"])
    values = sorted(targets)
    rng = np.random.default_rng(0)
    perm = np.arange(256)
    perm[values] = rng.permutation(values)
    pred_targets = {int(perm[v]): targets[v] for v in values}
    preds, gts = add_predictions(fo, coco_ds, [0, 1, 3, 17, 62], targets=pred_targets,
                                 perm=perm)
    res = run_evaluation(coco_ds, "pred", "ground_truth", None)
    ref = reference_miou(zip(preds, gts), 81)
    assert res.mIoU == pytest.approx(ref["mIoU"], abs=1e-12)
    assert "pred_miou" not in coco_ds.get_field_schema()  # eval_key None: nothing stored


def test_classes_subset_and_unknown_class(fo, voc_ds):
    from tfovss_fiftyone.evaluation import EvaluationInputError, run_evaluation

    preds, gts = add_predictions(fo, voc_ds, [0, 1, 15])
    res = run_evaluation(voc_ds, "pred", "ground_truth", None,
                         classes=["background", "aeroplane", "person"])
    assert res.class_names == ["background", "aeroplane", "person"]
    with pytest.raises(EvaluationInputError, match="unicorn"):
        run_evaluation(voc_ds, "pred", "ground_truth", "x", classes=["person", "unicorn"])
    assert "x" not in voc_ds.list_evaluations()


def _snapshot(ds):
    return (sorted(ds.get_field_schema()), sorted(ds.list_evaluations()),
            dict(ds.mask_targets))


def test_bad_input_is_rejected_and_nothing_touched(fo, foo, voc_ds):
    from fiftyone.operators.executor import ExecutionError

    add_predictions(fo, voc_ds, [0, 1, 15])
    voc_ds.set_values("dets", [fo.Detections(detections=[]) for _ in range(len(voc_ds))])
    run = lambda **p: foo.execute_operator(URI_EVALUATE, ctx={"dataset": voc_ds, "params": dict(
        {"pred_field": "pred", "gt_field": "ground_truth", "eval_key": "bad",
         "background": "class", "ignore_index": 255}, **p)})
    before = _snapshot(voc_ds)
    # the form only offers Segmentation fields: anything else fails the operator's validation
    for params in ({"gt_field": "nope"}, {"gt_field": "dets"}):
        with pytest.raises(ExecutionError, match="gt_field"):
            run(**params)
        assert _snapshot(voc_ds) == before
    cases = [({"classes": "person, unicorn"}, "absent"),
             ({"eval_key": "bad key"}, "identifier")]
    for params, msg in cases:
        with pytest.raises(ExecutionError, match=msg):
            run(**params)
        assert _snapshot(voc_ds) == before
    # the same checks with explicit messages from the Python API
    from tfovss_fiftyone.evaluation import EvaluationInputError, run_evaluation
    for gt, msg in (("nope", "'nope' does not exist"), ("dets", "holds Detections, not "
                                                                 "Segmentation")):
        with pytest.raises(EvaluationInputError, match=msg):
            run_evaluation(voc_ds, "pred", gt, "bad")
        assert _snapshot(voc_ds) == before
    # an existing key is not replaced without overwrite
    r = run(eval_key="once")
    assert r.result["mIoU"] is not None
    snap = _snapshot(voc_ds)
    miou = voc_ds.values("once_miou")
    with pytest.raises(ExecutionError, match="already exists"):
        run(eval_key="once")
    assert _snapshot(voc_ds) == snap and voc_ds.values("once_miou") == miou
    r = run(eval_key="once", overwrite=True)
    assert r.result["eval_key"] == "once"


def test_evaluate_operator_immediate_and_delegated(fo, foo, voc_ds):
    from tfovss_fiftyone.evaluation import run_evaluation

    preds, gts = add_predictions(fo, voc_ds, [0, 1, 15, 8])
    ref = reference_miou(zip(preds, gts), 21)
    params = {"pred_field": "pred", "gt_field": "ground_truth", "eval_key": "imm",
              "background": "class", "ignore_index": 255, "compute_sample_miou": True}
    r = foo.execute_operator(URI_EVALUATE, ctx={"dataset": voc_ds, "params": params})
    assert r.result["mIoU"] == pytest.approx(round(100 * ref["mIoU"], 2))
    assert "reload_dataset" in triggered(r)
    assert voc_ds.load_evaluation_results("imm").mIoU == pytest.approx(ref["mIoU"], abs=1e-12)

    r = foo.execute_operator(URI_EVALUATE, ctx={"dataset": voc_ds, "params": dict(
        params, eval_key="dlg"), "request_delegation": True})
    assert r.delegated
    assert "dlg" not in voc_ds.list_evaluations()
    done = run_queued(voc_ds.name)
    assert done and all(d.error is None for d in done), [d.error for d in done]
    voc_ds.reload()
    assert voc_ds.load_evaluation_results("dlg").mIoU == pytest.approx(ref["mIoU"], abs=1e-12)


def test_selected_samples_target(fo, foo, voc_ds):
    preds, gts = add_predictions(fo, voc_ds, [0, 1, 15])
    first = voc_ds.first().id
    r = foo.execute_operator(URI_EVALUATE, ctx={
        "dataset": voc_ds, "selected": [first], "params": {
            "pred_field": "pred", "gt_field": "ground_truth", "eval_key": "sel",
            "view_target": "SELECTED_SAMPLES", "background": "class", "ignore_index": 255}})
    assert r.result["num_evaluated"] == 1
    ref = reference_miou([(preds[0], gts[0])], 21)
    assert voc_ds.load_evaluation_results("sel").mIoU == pytest.approx(ref["mIoU"], abs=1e-12)
    vals = voc_ds.values("sel_miou")
    assert vals[0] is not None and vals[1] is None


def test_panel_lists_runs_and_compares(fo, foo, voc_ds):
    from tfovss_fiftyone.evaluation import run_evaluation

    add_predictions(fo, voc_ds, [0, 1, 15], field="pred")
    add_predictions(fo, voc_ds, [0, 15], field="pred2")
    run_evaluation(voc_ds, "pred", "ground_truth", "run1")
    run_evaluation(voc_ds, "pred2", "ground_truth", "run2")
    r = foo.execute_operator("@tfovss/ovss/ovss_evaluations", ctx={
        "dataset": voc_ds, "params": {"__method__": "on_load", "panel_id": "p1",
                                      "state": {}, "event_args": {}}})
    reqs = r.executor._requests
    data = {}
    for q in reqs:
        if q.operator_uri.endswith("patch_panel_data") or q.operator_uri.endswith(
                "patch_panel_state"):
            data.update(q.params.get("data") or q.params.get("state") or {})
    rows = data.get("runs") or []
    assert {row["eval_key"] for row in rows} == {"run1", "run2"}
    assert all(row["mIoU"] is not None for row in rows)
    # compare two runs: deltas per class
    r = foo.execute_operator("@tfovss/ovss/ovss_evaluations", ctx={
        "dataset": voc_ds, "params": {"__method__": "on_change_b", "panel_id": "p1",
                                      "value": "run1",
                                      "panel_state": {"run_a": "run2", "run_b": "(none)"},
                                      "event_args": {}}})
    classes = None
    for q in r.executor._requests:
        d = q.params.get("data") or {}
        if "classes" in d:
            classes = d["classes"]
    assert classes and "delta" in classes[0]
    # worst samples: sets a view sorted by per-sample mIoU
    r = foo.execute_operator("@tfovss/ovss/ovss_evaluations", ctx={
        "dataset": voc_ds, "params": {"__method__": "on_worst", "panel_id": "p1",
                                      "panel_state": {"run_a": "run1"}, "event_args": {}}})
    assert any(q.operator_uri.endswith("set_view") for q in r.executor._requests), [(q.operator_uri, q.params) for q in r.executor._requests]
