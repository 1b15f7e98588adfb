"""Journeys a new user takes, headless: pre-label a benchmark-like dataset with its preset and
evaluate it against the dataset's own ground truth (class names match by name), and evaluate
predictions whose class names differ through a class-name mapping (library and form)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from support.fo import URI_EVALUATE, URI_PRELABEL, VOC_CLASSES, needs_core
from support.images import write_bad_images

FAST = {"short_side": 64, "crop": 64, "stride": 64, "templates": "a photo of a {}."}
VOC_QUERY_WORDS = {4: "ship", 11: "table", 20: "television monitor"}


def numpy_miou(pairs, num_classes=21, ignore_index=255):
    """mIoU over the collection (intersections and unions summed over images, classes never
    seen left out), computed independently of the plugin."""
    inter = np.zeros(num_classes)
    union = np.zeros(num_classes)
    for pred, gt in pairs:
        keep = gt != ignore_index
        p, g = pred[keep].astype(np.int64), gt[keep].astype(np.int64)
        for c in range(num_classes):
            i = np.sum((p == c) & (g == c))
            inter[c] += i
            union[c] += np.sum(p == c) + np.sum(g == c) - i
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return float(np.nanmean(iou)), iou


@needs_core
def test_voc21_preset_prelabel_then_evaluate_against_voc_ground_truth(fo, foo, voc_ds, tmp_path):
    r = foo.execute_operator(URI_PRELABEL, ctx={"dataset": voc_ds, "params": {
        "method": "sclip", "arch": "ViT-B-16", "pretrained": "tiny:seed0",
        "vocab_source": "preset", "preset": "voc21", "label_field": "pred",
        "output_dir": str(tmp_path), "batch_size": 2, "device": "cpu", **FAST}})
    assert r.error is None, r.error
    voc_ds.reload()
    # the preset writes the dataset's own class names, exactly what the ground truth uses
    assert voc_ds.mask_targets["pred"] == dict(enumerate(VOC_CLASSES))

    r = foo.execute_operator(URI_EVALUATE, ctx={"dataset": voc_ds, "params": {
        "pred_field": "pred", "gt_field": "ground_truth", "eval_key": "eval_pred"}})
    assert r.error is None, r.error
    res = voc_ds.load_evaluation_results("eval_pred")
    pairs = [(s.pred.get_mask(), s.ground_truth.get_mask()) for s in voc_ds]
    miou, iou = numpy_miou(pairs)
    assert res.mIoU == pytest.approx(miou, abs=1e-12)
    assert r.result["mIoU"] == pytest.approx(100 * miou, abs=0.01)
    assert res.class_names == VOC_CLASSES
    for c, ref in zip(res.per_class(), iou):
        assert (np.isnan(c["iou"]) and np.isnan(ref)) or c["iou"] == pytest.approx(ref)


def _query_word_predictions(fo, ds):
    """Predictions = GT with the background/void turned to class 0, labelled with the query
    words (``ship``, ``table``, ``television monitor``) instead of VOC's names."""
    preds = {}
    for s in ds:
        m = s.ground_truth.get_mask().copy()
        m[m == 255] = 0
        m[::7, ::5] = 4  # a grid of "ship" pixels: wrong wherever the GT is not a boat
        preds[s.id] = fo.Segmentation(mask=m.astype(np.uint8))
    ds.set_values("pred_words", preds, key_field="id")
    names = dict(enumerate(VOC_CLASSES))
    names.update(VOC_QUERY_WORDS)
    ds.mask_targets = {**ds.mask_targets, "pred_words": names}
    ds.save()


def test_differing_names_need_a_mapping_then_score_like_the_same_names(fo, voc_ds):
    from tfovss_fiftyone.evaluation import (EvaluationInputError, run_evaluation,
                                            suggest_class_map, unmatched_prediction_classes)

    _query_word_predictions(fo, voc_ds)
    unmatched = unmatched_prediction_classes(voc_ds, "ground_truth", "pred_words")
    assert unmatched == ["ship", "table", "television monitor"]
    assert suggest_class_map(["dining table", "ship"], VOC_CLASSES) == {"dining table": "diningtable"}
    with pytest.raises(EvaluationInputError, match=r"\['ship', 'table', 'television monitor'\].*class_map"):
        run_evaluation(voc_ds, "pred_words", "ground_truth", "e_fail")
    with pytest.raises(EvaluationInputError, match=r"'ship' -> 'yacht'"):
        run_evaluation(voc_ds, "pred_words", "ground_truth", "e_fail",
                       class_map={"ship": "yacht", "table": "diningtable",
                                  "television monitor": "tvmonitor"})
    assert "e_fail" not in voc_ds.list_evaluations()

    mapping = {"ship": "boat", "table": "diningtable", "television monitor": "tvmonitor"}
    res = run_evaluation(voc_ds, "pred_words", "ground_truth", "e_map", class_map=mapping)
    pairs = [(s.pred_words.get_mask(), s.ground_truth.get_mask()) for s in voc_ds]
    miou, _ = numpy_miou(pairs)
    assert res.mIoU == pytest.approx(miou, abs=1e-12) and 0 < miou < 1
    stored = voc_ds.get_evaluation_info("e_map").config
    assert stored.class_map == mapping

    # unmapped ("" / None): those pixels count as wrong, as a value without a name does
    res_wrong = run_evaluation(voc_ds, "pred_words", "ground_truth", "e_wrong",
                               class_map={"ship": None, "table": "diningtable",
                                          "television monitor": "tvmonitor"})
    pairs_wrong = [(np.where(p == 4, 250, p), g) for p, g in pairs]
    assert res_wrong.mIoU == pytest.approx(numpy_miou(pairs_wrong)[0], abs=1e-12)


def test_evaluate_form_offers_the_mapping_instead_of_failing(fo, foo, voc_ds):
    from tfovss_fiftyone.operators import EvaluateSegmentations

    _query_word_predictions(fo, voc_ds)
    params = {"pred_field": "pred_words", "gt_field": "ground_truth", "eval_key": "e_form"}
    ctx = SimpleNamespace(dataset=voc_ds, params=params, target_view=lambda: voc_ds,
                          view=voc_ds, selected=[])
    form = EvaluateSegmentations().resolve_input(ctx)
    props = form.type.properties
    assert "class_map" in props
    default = props["class_map"].default
    assert default.splitlines() == ["ship = ", "table = ", "television monitor = "]
    note = props["class_map_note"].view.label
    assert "ship, table, television monitor" in note

    r = foo.execute_operator(URI_EVALUATE, ctx={"dataset": voc_ds, "params": {
        **params, "class_map": "ship = boat\ntable = diningtable\ntelevision monitor = tvmonitor"}})
    assert r.error is None, r.error
    ref = voc_ds.load_evaluation_results("e_form")
    from tfovss_fiftyone.evaluation import run_evaluation

    direct = run_evaluation(
        voc_ds, "pred_words", "ground_truth", None,
        class_map={"ship": "boat", "table": "diningtable", "television monitor": "tvmonitor"})
    assert ref.mIoU == direct.mIoU and r.result["mIoU"] == pytest.approx(100 * direct.mIoU, abs=0.01)

    from fiftyone.operators.executor import ExecutionError

    with pytest.raises(ExecutionError, match="mapping line 'ship boat' has no '='"):
        foo.execute_operator(URI_EVALUATE, ctx={"dataset": voc_ds, "params": {
            **params, "eval_key": "e_form2", "class_map": "ship boat"}})


class _PanelState:
    """What the panel's handlers touch of ``ctx.panel``: state and data dicts."""

    def __init__(self, **state):
        self.state, self.data = dict(state), {}

    def get_state(self, k, default=None):
        return self.state.get(k, default)

    def set_state(self, k, v):
        self.state[k] = v

    def set_data(self, k, v):
        self.data[k] = v


def test_panel_shows_confusion_sortable_iou_and_full_settings(fo, voc_ds):
    from tfovss_fiftyone.evaluation import run_evaluation
    from tfovss_fiftyone.panels import (OVSSEvaluationsPanel, confusion_rows, run_settings_markdown,
                                        sort_classes, top_confused_pairs)

    _query_word_predictions(fo, voc_ds)
    mapping = {"ship": "boat", "table": "diningtable", "television monitor": "tvmonitor"}
    res = run_evaluation(voc_ds, "pred_words", "ground_truth", "e_panel", class_map=mapping)

    # independent confusion: rows GT, columns prediction, over the 21 VOC values
    cm = np.zeros((21, 21))
    for s in voc_ds:
        g, p = s.ground_truth.get_mask().astype(int), s.pred_words.get_mask().astype(int)
        keep = g != 255
        np.add.at(cm, (g[keep], p[keep]), 1)
    names, norm = confusion_rows(voc_ds, "e_panel")
    assert names == VOC_CLASSES
    for i in range(21):
        if cm[i].sum() == 0:
            assert norm[i] == [None] * 21
        else:
            assert norm[i] == pytest.approx(list(np.round(100 * cm[i] / cm[i].sum(), 2)))
    pairs = top_confused_pairs(voc_ds, "e_panel", k=3)
    off = [(100 * cm[i, j] / cm[i].sum(), i, j) for i in range(21) for j in range(21)
           if i != j and cm[i, j] > 0]
    off.sort(key=lambda c: (-c[0], c[1], c[2]))
    assert [(p["gt"], p["pred"], p["pixels"]) for p in pairs] == \
        [(VOC_CLASSES[i], VOC_CLASSES[j], int(cm[i, j])) for _, i, j in off[:3]]
    assert all(p["pred"] == "boat" for p in pairs)  # the grid of "ship" pixels

    rows = [{"name": c["name"], "iou": c["iou"]} for c in res.per_class()]
    asc = sort_classes(rows, "IoU ascending")
    defined = [r["iou"] for r in asc if not np.isnan(r["iou"])]
    assert defined == sorted(defined) and len(asc) == len(rows)
    assert all(np.isnan(r["iou"]) for r in asc[len(defined):])  # undefined IoU last
    desc = sort_classes(rows, "IoU descending")
    assert [r["iou"] for r in desc[:len(defined)]] == sorted(defined, reverse=True)
    with pytest.raises(ValueError, match="sort order"):
        sort_classes(rows, "by colour")

    md = run_settings_markdown(voc_ds, "e_panel")
    assert '"class_map"' in md and '"ship": "boat"' in md and '"gt_field": "ground_truth"' in md

    # the panel's own handler fills the plots and the table from the same numbers
    panel = OVSSEvaluationsPanel()
    ctx = SimpleNamespace(dataset=voc_ds, panel=_PanelState(run_a="e_panel",
                                                            sort_by="IoU descending"))
    panel._refresh(ctx)
    data = ctx.panel.data
    table = [r["iou_a"] for r in data["classes"]]
    assert table == sorted(table, reverse=True)
    assert data["iou_plot"][0]["y"] == table
    bars = data["confused_plot"][0]
    assert bars["x"][::-1][:3] == [p["percent"] for p in pairs]
    heat = data["confusion_plot"][0]
    i, j = heat["y"].index(pairs[0]["gt"]), heat["x"].index(pairs[0]["pred"])
    assert heat["z"][i][j] == pairs[0]["percent"]
    assert ctx.panel.state["settings_md"] == md


@needs_core
def test_prelabel_form_keeps_masks_in_the_database(fo, foo, voc_ds, tmp_path):
    common = {"method": "sclip", "arch": "ViT-B-16", "pretrained": "tiny:seed0",
              "vocab_source": "preset", "preset": "voc21", "batch_size": 2, "device": "cpu",
              "confidence": True, **FAST}
    foo.execute_operator(URI_PRELABEL, ctx={"dataset": voc_ds, "params": {
        **common, "label_field": "as_files", "confidence_field": "as_files_confidence",
        "output_dir": str(tmp_path / "files")}})
    r = foo.execute_operator(URI_PRELABEL, ctx={"dataset": voc_ds, "params": {
        **common, "label_field": "in_db", "confidence_field": "in_db_confidence",
        "mask_storage": "database",
        "output_dir": str(tmp_path / "unused")}})
    assert r.result["num_labelled"] == len(voc_ds) and r.result["mask_dir"] == ""
    assert not (tmp_path / "unused").exists()
    voc_ds.reload()
    for s in voc_ds:
        assert s.in_db.mask_path is None and s.in_db.mask is not None
        assert np.array_equal(s.in_db.mask, s.as_files.get_mask())  # same masks, other storage
        assert s.in_db_confidence.map_path is None
        assert np.array_equal(s.in_db_confidence.map, s.as_files_confidence.get_map())
    assert voc_ds.mask_targets["in_db"] == dict(enumerate(VOC_CLASSES))


@needs_core
def test_failures_are_listed_in_full(fo, foo, tmp_path):
    from PIL import Image

    from tfovss_fiftyone.operators import failures_markdown

    good = tmp_path / "good_photo.jpg"
    Image.fromarray(np.full((40, 60, 3), 120, np.uint8)).save(good)
    corrupt, truncated, deep = write_bad_images(tmp_path, good)
    ds = fo.Dataset(f"bad-{tmp_path.name}")
    ds.add_samples([fo.Sample(filepath=str(p)) for p in (good, corrupt, truncated, deep)])
    r = foo.execute_operator(URI_PRELABEL, ctx={"dataset": ds, "params": {
        "method": "sclip", "arch": "ViT-B-16", "pretrained": "tiny:seed0",
        "vocab_source": "text", "vocabulary": "background\ncat", "label_field": "ovss",
        "output_dir": str(tmp_path / "masks"), "batch_size": 2, "device": "cpu", **FAST}})
    out = r.result
    failed = {f.split(": ", 1)[0] for f in out["failures"]}
    # 16-bit images are refused by the core with a message saying so (not silently rescaled)
    assert failed == {str(corrupt), str(truncated), str(deep)}
    assert out["num_failed"] == 3 and out["num_labelled"] == 1
    assert any("16-bit" in f and "convert to 8-bit RGB" in f for f in out["failures"])
    text = out["failures_text"]
    assert text == failures_markdown([{"filepath": f.split(": ", 1)[0], "error": f.split(": ", 1)[1]}
                                      for f in out["failures"]])
    unescaped = text.replace("\\", "")
    for f in out["failures"]:
        path, error = f.split(": ", 1)
        assert path in unescaped and error in unescaped and len(error) > 20  # nothing cut
    assert len(text.splitlines()) == 3
    ds.delete()


def test_rgb_mask_targets_are_refused_naming_the_field(fo, voc_ds, tmp_path):
    from tfovss_fiftyone.evaluation import EvaluationInputError, run_evaluation
    from tfovss_fiftyone.export import ExportInputError, export_coco_masks

    _query_word_predictions(fo, voc_ds)
    voc_ds.mask_targets = {**voc_ds.mask_targets, "pred_words": {"#ff0000": "boat", "#000000": "background"}}
    voc_ds.save()
    with pytest.raises(EvaluationInputError,
                       match=r"mask_targets of 'pred_words': mask target '#ff0000' .*RGB mask targets are not supported"):
        run_evaluation(voc_ds, "pred_words", "ground_truth", "e_rgb")
    with pytest.raises(ExportInputError, match=r"mask_targets of 'pred_words'.*COCO export needs integer"):
        export_coco_masks(voc_ds, "pred_words", str(tmp_path / "out.json"))
    assert not (tmp_path / "out.json").exists() and "e_rgb" not in voc_ds.list_evaluations()
