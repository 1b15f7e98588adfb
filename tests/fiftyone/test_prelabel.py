"""Pre-label operator (immediate, delegated, selected samples, resume, overwrite, per-sample
failures, bad input) and the FiftyOne Model through apply_model, with the tiny synthetic CLIP
(``pretrained="tiny:seed0"``: random weights, so only the plumbing is checked, not the masks'
meaning)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.fo import URI_PRELABEL, needs_core, run_delegated, triggered

pytestmark = needs_core

FAST = {"short_side": 64, "crop": 64, "stride": 64, "templates": "a photo of a {}."}
VOCAB = "background\ncat, kitten\nperson, man, woman\naeroplane, airplane"


def params(out_dir, **kw):
    p = {"method": "sclip", "arch": "ViT-B-16", "pretrained": "tiny:seed0",
         "vocab_source": "text", "vocabulary": VOCAB, "label_field": "ovss",
         "output_dir": str(out_dir), "batch_size": 2, "device": "cpu", **FAST}
    p.update(kw)
    return p


def snapshot(ds, out_dir=None):
    files = sorted(str(p) for p in Path(out_dir).rglob("*")) if out_dir and \
        Path(out_dir).exists() else []
    return (sorted(ds.get_field_schema()), dict(ds.mask_targets), sorted(ds.list_runs()), files)


def test_prelabel_immediate_writes_masks_heatmaps_and_run(fo, foo, voc_ds, tmp_path):
    r = foo.execute_operator(URI_PRELABEL, ctx={"dataset": voc_ds, "params": params(
        tmp_path, confidence=True, confidence_field="ovss_conf")})
    out = r.result
    assert out["num_labelled"] == len(voc_ds) and out["num_failed"] == 0
    assert out["synthetic"] is True
    assert "reload_dataset" in triggered(r)
    voc_ds.reload()
    assert voc_ds.mask_targets["ovss"] == {0: "background", 1: "cat", 2: "person",
                                           3: "aeroplane"}
    for s in voc_ds:
        seg = s.ovss
        assert seg.mask is None and seg.mask_path.startswith(str(tmp_path))
        assert os.path.isfile(seg.mask_path)
        m = seg.get_mask()
        w, h = Image.open(s.filepath).size
        assert m.shape == (h, w) and m.dtype == np.uint8
        assert set(np.unique(m).tolist()) <= {0, 1, 2, 3}
        assert seg.tfovss_hash == out["settings_hash"]
        assert 0 < seg.mean_confidence <= 1 and seg.synthetic is True
        assert os.path.isfile(s.ovss_conf.map_path)
        assert s.ovss_conf.get_map().shape == (h, w)
    info = voc_ds.get_run_info("tfovss_prelabel_ovss").config
    assert info.ovss_method == "sclip" and info.settings_hash == out["settings_hash"]
    assert info.vocabulary[1] == [1, ["cat", "kitten"]]
    # sort by uncertainty
    assert voc_ds.sort_by("ovss.mean_confidence").first().ovss.mean_confidence == \
        min(voc_ds.values("ovss.mean_confidence"))


def test_resume_overwrite_and_settings_change(fo, foo, voc_ds, tmp_path):
    from fiftyone.operators.executor import ExecutionError

    first = foo.execute_operator(URI_PRELABEL, ctx={"dataset": voc_ds,
                                                    "params": params(tmp_path)}).result
    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.png")}
    again = foo.execute_operator(URI_PRELABEL, ctx={"dataset": voc_ds,
                                                    "params": params(tmp_path)}).result
    assert again["num_skipped"] == len(voc_ds) and again["num_labelled"] == 0
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.png")} == files
    # other settings, no overwrite: refused, nothing touched
    before = snapshot(voc_ds, tmp_path)
    paths = voc_ds.values("ovss.mask_path")
    with pytest.raises(ExecutionError, match="other settings"):
        foo.execute_operator(URI_PRELABEL, ctx={"dataset": voc_ds, "params": params(
            tmp_path, prob_thd=0.3)})
    assert snapshot(voc_ds, tmp_path) == before and voc_ds.values("ovss.mask_path") == paths
    # with overwrite: relabelled, new hash; old files are left alone
    r = foo.execute_operator(URI_PRELABEL, ctx={"dataset": voc_ds, "params": params(
        tmp_path, prob_thd=0.3, overwrite=True)}).result
    assert r["num_labelled"] == len(voc_ds) and r["settings_hash"] != first["settings_hash"]
    voc_ds.reload()
    assert set(voc_ds.values("ovss.tfovss_hash")) == {r["settings_hash"]}
    assert all(p.exists() for p in files)
    # recompute although labelled with the same settings
    r2 = foo.execute_operator(URI_PRELABEL, ctx={"dataset": voc_ds, "params": params(
        tmp_path, prob_thd=0.3, skip_labelled=False)}).result
    assert r2["num_labelled"] == len(voc_ds) and r2["num_skipped"] == 0


def test_prelabel_delegated_from_mask_targets_then_evaluate(fo, foo, coco_ds, tmp_path):
    p = params(tmp_path, vocab_source="mask_targets", vocab_field="ground_truth",
               label_field="pre")
    p.pop("vocabulary")
    run_delegated(foo, URI_PRELABEL, coco_ds, p, "pre")
    assert coco_ds.mask_targets["pre"] == coco_ds.mask_targets["ground_truth"]
    assert len(coco_ds.exists("pre")) == len(coco_ds)
    from tfovss_fiftyone.evaluation import run_evaluation
    res = run_evaluation(coco_ds, "pre", "ground_truth", "ev_pre")
    assert 0 <= res.mIoU <= 1
    cfg = coco_ds.get_evaluation_info("ev_pre").config
    assert cfg.prelabel["method"] == "sclip" and cfg.prelabel["arch"] == "tiny"


def test_selected_samples_and_preset_vocabulary(fo, foo, ade_ds, tmp_path):
    ids = ade_ds.values("id")
    p = params(tmp_path, vocab_source="preset", preset="voc21", label_field="sel",
               view_target="SELECTED_SAMPLES")
    p.pop("vocabulary")
    r = foo.execute_operator(URI_PRELABEL, ctx={"dataset": ade_ds, "selected": ids[:1],
                                                "params": p}).result
    assert r["num_targeted"] == 1 and r["num_labelled"] == 1
    ade_ds.reload()
    assert ade_ds.values("sel.mask_path")[1:] == [None] * (len(ids) - 1)
    names = ade_ds.mask_targets["sel"]
    assert len(names) == 21 and names[0] == "background" and names[1] == "aeroplane"


def test_unreadable_image_is_listed_and_run_goes_on(fo, foo, voc_ds, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    voc_ds.add_sample(fo.Sample(filepath=str(bad)))
    r = foo.execute_operator(URI_PRELABEL, ctx={"dataset": voc_ds, "params": params(
        tmp_path / "masks")}).result
    assert r["num_failed"] == 1 and r["num_labelled"] == len(voc_ds) - 1
    assert "broken.jpg" in r["failures"][0]
    voc_ds.reload()
    assert voc_ds[str(bad)].ovss is None


def test_bad_input_touches_nothing(fo, foo, voc_ds, tmp_path):
    from fiftyone.operators.executor import ExecutionError

    voc_ds.set_values("dets", [fo.Detections(detections=[]) for _ in range(len(voc_ds))])
    before = snapshot(voc_ds, tmp_path)
    cases = [
        (dict(label_field="dets"), "not (a )?Segmentation"),
        (dict(label_field="ground_truth"), "other settings"),
        (dict(vocabulary="\n\n"), "empty"),
        (dict(vocabulary="cat\ncat, kitten"), "several lines"),
        (dict(templates="no placeholder|a {}"), "placeholder"),
        (dict(opt_residual_ffn=None, stride=-5), "stride"),
        (dict(pretrained=str(tmp_path / "missing.pt")), "does not exist"),
        (dict(label_field="bad name"), "letters"),
    ]
    for kw, msg in cases:
        with pytest.raises(ExecutionError, match=msg):
            foo.execute_operator(URI_PRELABEL, ctx={"dataset": voc_ds,
                                                    "params": params(tmp_path, **kw)})
        assert snapshot(voc_ds, tmp_path) == before, kw


def test_model_apply_model(fo, voc_ds, tmp_path):
    from tfovss_fiftyone.model import load_ovss_model

    model = load_ovss_model(method="sclip", pretrained="tiny:seed0",
                            classes={0: "background", 15: "person", 1: "aeroplane"}, **FAST)
    assert model.mask_targets == {0: "background", 1: "aeroplane", 15: "person"}
    voc_ds.apply_model(model, label_field="am")
    for s in voc_ds:
        m = s.am.get_mask()
        assert m.shape == Image.open(s.filepath).size[::-1]
        assert set(np.unique(m).tolist()) <= {0, 1, 15}
    # masks on disk and a confidence heatmap
    model = load_ovss_model(method="clearclip", pretrained="tiny:seed0",
                            classes="background\ncat, kitten", confidence=True, **FAST)
    voc_ds.apply_model(model, label_field="am2", output_dir=str(tmp_path / "am2"))
    s = voc_ds.first()
    assert s.am2_segmentation.mask_path.startswith(str(tmp_path))
    assert s.am2_confidence.map_path.startswith(str(tmp_path))
    # evaluation of apply_model output
    ds_mt = dict(voc_ds.mask_targets)
    ds_mt["am"] = {0: "background", 1: "aeroplane", 15: "person"}
    voc_ds.mask_targets = ds_mt
    voc_ds.save()
    from tfovss_fiftyone.evaluation import run_evaluation
    assert 0 <= run_evaluation(voc_ds, "am", "ground_truth", None).mIoU <= 1


def test_prelabel_runs_the_mask_path_and_stores_the_protocols_mask(fo, voc_ds, monkeypatch):
    """Pre-labelling stores only masks and confidences, so it runs ``ModelPass(output="mask")``
    (no probability maps); what it stores is the protocol path's mask and top probability."""
    from tfovss_core.clip.synthetic import tiny_clip
    from tfovss_core.engine import runner
    from tfovss_core.engine.segmenter import Segmenter
    from tfovss_fiftyone.prelabel import prelabel

    outputs = []
    original = runner.ModelPass.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        outputs.append(self.output)

    monkeypatch.setattr(runner.ModelPass, "__init__", recording)
    model = tiny_clip(seed=0)
    settings = {"short_side": 64, "crop": 64, "stride": 64, "templates": ["a photo of a {}."],
                "prob_thd": 0.4}
    classes = ["background", "cat", "person"]
    prelabel(voc_ds, "lean", classes=classes, model=model, settings=settings, masks_in_db=True,
             confidence_field="lean_conf")
    assert outputs == ["mask"]
    seg = Segmenter(model, "sclip", classes, **settings)
    for s in voc_ds:
        protocol = seg.predict(s.filepath)
        np.testing.assert_array_equal(s.lean.mask, protocol.mask)
        expected8 = np.clip(np.rint(protocol.confidence * 255), 0, 255).astype(np.uint8)
        # 8-bit confidences: equal except where the two top probabilities (within 1e-6) straddle a rounding step
        assert np.mean(s.lean_conf.map == expected8) > 0.999
        assert np.abs(s.lean_conf.map.astype(int) - expected8).max() <= 1
        assert s.lean.mean_confidence == pytest.approx(float(protocol.confidence.mean()), abs=1e-6)
    assert any(len(np.unique(s.lean.mask)) > 1 for s in voc_ds)   # the threshold left more than background


def test_prelabel_writes_off_the_model_thread_in_batches(fo, coco_ds, tmp_path, monkeypatch):
    """The mask PNGs and the database writes run on the runner's writer thread (the model goes on
    meanwhile), and the labels reach the database ``batch_size`` samples at a time."""
    import threading

    from tfovss_fiftyone import prelabel as prelabel_module

    png_threads, batches = [], []
    write_png, set_values = prelabel_module._write_png, type(coco_ds).set_values

    def recording_png(arr, path):
        png_threads.append(threading.current_thread().name)
        write_png(arr, path)

    def recording_set_values(self, field, values, *args, **kwargs):
        if field == "ovss":
            batches.append((threading.current_thread().name, len(values)))
        return set_values(self, field, values, *args, **kwargs)

    monkeypatch.setattr(prelabel_module, "_write_png", recording_png)
    monkeypatch.setattr(type(coco_ds), "set_values", recording_set_values)
    settings = {**FAST, "templates": ["a photo of a {}."]}
    rep = prelabel_module.prelabel(coco_ds, "ovss", classes=VOCAB, pretrained="tiny:seed0", settings=settings,
                                   batch_size=3, output_dir=str(tmp_path), device="cpu")
    assert rep.num_labelled == len(coco_ds) == 4
    assert png_threads == ["tfovss-sink"] * 4
    # a full batch on the writer thread; the rest when the runner closes the sink, the model done
    assert batches == [("tfovss-sink", 3), (threading.current_thread().name, 1)]
    assert len(coco_ds.exists("ovss")) == 4


def test_operator_images_per_batch_lands_the_same_masks(fo, foo, voc_ds, tmp_path):
    """The form's *Images per forward pass* reaches the runner: at the protocol's window size the
    fields of 1 and 2 images per pass hold the same mask bytes."""
    protocol = {"short_side": 224, "crop": 224, "stride": 112}
    one = foo.execute_operator(URI_PRELABEL, ctx={"dataset": voc_ds, "params": params(
        tmp_path / "one", label_field="one", **protocol)}).result
    two = foo.execute_operator(URI_PRELABEL, ctx={"dataset": voc_ds, "params": params(
        tmp_path / "two", label_field="two", images_per_batch=2, **protocol)}).result
    assert one["num_labelled"] == two["num_labelled"] == len(voc_ds) == 2
    assert one["settings_hash"] == two["settings_hash"]    # an execution option, not a setting
    voc_ds.reload()
    for s in voc_ds:
        assert Path(s.two.mask_path).read_bytes() == Path(s.one.mask_path).read_bytes()
        assert s.two.mean_confidence == s.one.mean_confidence


def test_prelabel_and_compare_forms_offer_images_per_batch(fo, voc_ds, tmp_path):
    from types import SimpleNamespace

    from tfovss_fiftyone.operators import CompareMethods, PrelabelSegmentation

    for operator in (PrelabelSegmentation(), CompareMethods()):
        ctx = SimpleNamespace(dataset=voc_ds, params=params(tmp_path), target_view=lambda: voc_ds,
                              view=voc_ds, selected=[])
        prop = operator.resolve_input(ctx).type.properties["images_per_batch"]
        assert prop.default == 1 and prop.view.label == "Images per forward pass", type(operator).__name__
