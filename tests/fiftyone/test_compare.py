"""Several methods in one pass on the shared frozen trunk (``prelabel_many``) and the "Compare
OVSS methods" operator, on a real FiftyOne dataset of three small synthetic images with the tiny
synthetic CLIP (``tiny:seed0``: the masks mean nothing, only the plumbing is checked)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.fo import URI_COMPARE, make_dataset, needs_core, run_delegated, triggered
from support.trunk import record_trunk_batches

pytestmark = needs_core

METHODS = ["sclip", "clearclip", "naclip"]
FAST = {"short_side": 64, "crop": 64, "stride": 64, "templates": ["a photo of a {}."]}
VOCAB = "background\ncat, kitten\nperson, man, woman"
NAMES = {0: "background", 1: "cat", 2: "person"}


@pytest.fixture()
def small_ds(fo, tmp_path):
    """Three small images with blocks of colour, and ground-truth masks of those blocks."""
    rng = np.random.default_rng(7)
    items = []
    for i, (h, w) in enumerate([(80, 100), (72, 96), (90, 70)]):
        img = (rng.random((h, w, 3)) * 60).astype(np.uint8)
        gt = np.zeros((h, w), np.uint8)
        img[10:40, 15:50] = (200, 120, 40)
        gt[10:40, 15:50] = 1
        img[45:h - 5, 30:w - 5] = (40, 90, 210)
        gt[45:h - 5, 30:w - 5] = 2
        gt[0:3, :] = 255  # void
        path = tmp_path / "images" / f"img{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(img).save(path)
        items.append((path, gt))
    ds = make_dataset(fo, items, NAMES, "compare")
    yield ds
    ds.delete()


def run_kwargs(out_dir, **kw):
    return {"classes": VOCAB, "pretrained": "tiny:seed0", "settings": dict(FAST),
            "device": "cpu", "batch_size": 2, "output_dir": str(out_dir), **kw}


def masks(ds, field):
    return [s[field].get_mask() for s in ds.select_fields(field)]


def tiny_model():
    from tfovss_fiftyone.model import get_clip

    return get_clip("ViT-B-16", "tiny:seed0", "cpu")


@pytest.fixture()
def trunk_calls(monkeypatch):
    """Counts the frozen-trunk computations of the tiny model the plugin uses."""
    return record_trunk_batches(tiny_model().visual, monkeypatch)


def snapshot(ds, out_dir):
    files = sorted(str(p) for p in Path(out_dir).rglob("*")) if Path(out_dir).exists() else []
    ds.reload()
    return (sorted(ds.get_field_schema()), dict(ds.mask_targets), sorted(ds.list_runs()), files,
            ds.values("ovss_sclip.mask_path") if "ovss_sclip" in ds.get_field_schema() else None)


# --- prelabel_many ------------------------------------------------------------------------------

def test_shared_pass_writes_exactly_what_each_method_alone_writes(fo, small_ds, tmp_path):
    from tfovss_fiftyone.prelabel import prelabel, prelabel_many, prelabel_run_info

    many = prelabel_many(small_ds, {m: f"many_{m}" for m in METHODS},
                         **run_kwargs(tmp_path / "many"))
    assert list(many.reports) == [f"many_{m}" for m in METHODS]
    alone = {m: prelabel(small_ds, f"alone_{m}", method=m, **run_kwargs(tmp_path / "alone"))
             for m in METHODS}
    small_ds.reload()
    n = len(small_ds)
    for m in METHODS:
        r = many.reports[f"many_{m}"]
        assert r.num_labelled == n and r.num_failed == 0 and r.synthetic is True
        assert r.settings_hash == alone[m].settings_hash  # the two paths resume each other
        for a, b in zip(masks(small_ds, f"many_{m}"), masks(small_ds, f"alone_{m}")):
            assert a.dtype == b.dtype and np.array_equal(a, b), m
        assert small_ds.values(f"many_{m}.mean_confidence") == \
            small_ds.values(f"alone_{m}.mean_confidence")
        assert small_ds.mask_targets[f"many_{m}"] == small_ds.mask_targets[f"alone_{m}"] == NAMES
        info, single = (prelabel_run_info(small_ds, f"{k}_{m}") for k in ("many", "alone"))
        assert info["method"] == single["method"] == m
        assert info["settings"] == single["settings"]
        assert info["shared_trunk"] is True and info["run_with"] == list(many.reports)
        assert info["report"]["num_labelled"] == n
    # the fields are not swapped: the methods' confidences differ
    conf = [small_ds.values(f"many_{m}.mean_confidence") for m in METHODS]
    assert len({tuple(c) for c in conf}) == len(METHODS)


def test_the_frozen_trunk_runs_once_per_batch_of_windows(fo, small_ds, tmp_path, trunk_calls):
    from tfovss_fiftyone.prelabel import prelabel, prelabel_many

    kw = run_kwargs(tmp_path, batch_size=1)  # one window per forward pass: several per image
    prelabel(small_ds, "one", method="sclip", **kw)
    alone = len(trunk_calls)
    assert alone > len(small_ds)  # several batches of windows per image
    del trunk_calls[:]
    many = prelabel_many(small_ds, {m: f"cmp_{m}" for m in METHODS}, **kw)
    assert len(trunk_calls) == alone, "the methods did not share the frozen trunk"
    assert many.trunk_runs == alone
    for m in METHODS:
        assert many.reports[f"cmp_{m}"].num_labelled == len(small_ds)


def test_existing_field_is_not_overwritten_unless_asked(fo, small_ds, tmp_path, trunk_calls):
    from tfovss_fiftyone.prelabel import PrelabelInputError, prelabel, prelabel_many

    out = tmp_path / "masks"
    first = prelabel(small_ds, "ovss_sclip", method="sclip",
                     **run_kwargs(out, settings={**FAST, "prob_thd": 0.3}))
    old_files = sorted(out.rglob("*.png"))
    before = snapshot(small_ds, out)
    fields = {"sclip": "ovss_sclip", "clearclip": "ovss_clearclip"}
    del trunk_calls[:]
    with pytest.raises(PrelabelInputError, match="'ovss_sclip' already holds labels made with "
                                                  "other settings"):
        prelabel_many(small_ds, fields, **run_kwargs(out))
    assert snapshot(small_ds, out) == before and trunk_calls == []
    # a field of another kind is refused too, before anything is written
    small_ds.set_values("ovss_naclip", [fo.Classification(label="x")] * len(small_ds))
    before = snapshot(small_ds, out)
    with pytest.raises(PrelabelInputError, match="ovss_naclip"):
        prelabel_many(small_ds, {**fields, "naclip": "ovss_naclip"}, **run_kwargs(out))
    assert snapshot(small_ds, out) == before

    # allowed: relabelled with the new settings; the old mask files stay
    many = prelabel_many(small_ds, fields, **run_kwargs(out, overwrite=True))
    small_ds.reload()
    h = many.reports["ovss_sclip"].settings_hash
    assert h != first.settings_hash
    assert set(small_ds.values("ovss_sclip.tfovss_hash")) == {h}
    assert all(p.exists() for p in old_files)

    # resume: same settings again -> nothing computed, nothing rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    del trunk_calls[:]
    again = prelabel_many(small_ds, fields, **run_kwargs(out))
    assert trunk_calls == [] and again.trunk_runs == 0
    assert all(r.num_skipped == len(small_ds) and r.num_labelled == 0
               for r in again.reports.values())
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == mtimes

    # partial resume: only the method still missing is computed, identical to it alone
    more = prelabel_many(small_ds, {**fields, "resclip": "ovss_resclip"}, **run_kwargs(out))
    assert more.reports["ovss_sclip"].num_skipped == len(small_ds)
    assert more.reports["ovss_resclip"].num_labelled == len(small_ds)
    prelabel(small_ds, "resclip_alone", method="resclip", **run_kwargs(out))
    small_ds.reload()
    for a, b in zip(masks(small_ds, "ovss_resclip"), masks(small_ds, "resclip_alone")):
        assert np.array_equal(a, b)


def test_a_failed_sample_is_listed_for_every_method_and_the_rest_goes_on(fo, small_ds,
                                                                         tmp_path):
    from tfovss_fiftyone.prelabel import prelabel_many

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    small_ds.add_sample(fo.Sample(filepath=str(bad)))
    many = prelabel_many(small_ds, {"sclip": "a", "clearclip": "b"},
                         **run_kwargs(tmp_path / "m", confidence_suffix="_conf"))
    for f in ("a", "b"):
        r = many.reports[f]
        assert r.num_failed == 1 and r.num_labelled == len(small_ds) - 1
        assert r.failures[0]["filepath"] == str(bad)
    assert [x["fields"] for x in many.failures] == [["a", "b"]]
    small_ds.reload()
    assert small_ds[str(bad)].a is None
    assert len(small_ds.exists("b_conf")) == len(small_ds) - 1
    assert os.path.isfile(small_ds.exists("b_conf").first().b_conf.map_path)


def test_bad_method_list_touches_nothing(fo, small_ds, tmp_path):
    import tfovss_core as tc

    from tfovss_fiftyone.prelabel import PrelabelInputError, prelabel_many

    before = snapshot(small_ds, tmp_path)
    with pytest.raises(PrelabelInputError, match="no methods"):
        prelabel_many(small_ds, {}, **run_kwargs(tmp_path))
    with pytest.raises(PrelabelInputError, match="used twice"):
        prelabel_many(small_ds, {"sclip": "x", "clearclip": "x"}, **run_kwargs(tmp_path))
    with pytest.raises(tc.ConfigError):
        prelabel_many(small_ds, {"sclip": "x", "nosuchmethod": "y"}, **run_kwargs(tmp_path))
    assert snapshot(small_ds, tmp_path) == before


# --- the operator -------------------------------------------------------------------------------

def op_params(out_dir, **kw):
    p = {"methods": ["sclip", "clearclip"], "arch": "ViT-B-16", "pretrained": "tiny:seed0",
         "vocab_source": "mask_targets", "vocab_field": "ground_truth", "field_prefix": "cmp_",
         "gt_field": "ground_truth", "output_dir": str(out_dir), "batch_size": 2,
         "device": "cpu", **FAST, "templates": "a photo of a {}."}
    p.update(kw)
    return p


def test_compare_operator_prelabels_and_evaluates_each_method(fo, foo, small_ds, tmp_path):
    from fiftyone.operators.executor import ExecutionError

    from tfovss_fiftyone.evaluation import run_evaluation
    from tfovss_fiftyone.panels import _run_rows

    r = foo.execute_operator(URI_COMPARE, ctx={"dataset": small_ds,
                                               "params": op_params(tmp_path)})
    out = r.result
    assert "reload_dataset" in triggered(r)
    assert [row["field"] for row in out["per_method"]] == ["cmp_sclip", "cmp_clearclip"]
    assert out["trunk_runs"] > 0 and out["failures"] == []
    small_ds.reload()
    assert {"eval_cmp_sclip", "eval_cmp_clearclip"} <= set(small_ds.list_evaluations())
    for row in out["per_method"]:
        assert row["num_labelled"] == len(small_ds) and row["error"] is None
        assert row["eval_key"] == f"eval_{row['field']}"
        ref = run_evaluation(small_ds, row["field"], "ground_truth", None)
        assert row["mIoU"] == round(100 * ref.mIoU, 2)
        assert small_ds.load_evaluation_results(row["eval_key"]).mIoU == ref.mIoU
        assert f"mIoU {row['mIoU']} %" in out["summary"][out["per_method"].index(row)]
    # the panel lists both runs with their methods
    by_key = {row["eval_key"]: row for row in _run_rows(small_ds)}
    assert by_key["eval_cmp_sclip"]["method"] == "sclip"
    assert by_key["eval_cmp_clearclip"]["method"] == "clearclip"

    # again: the evaluations exist -> refused before anything is written
    before = snapshot(small_ds, tmp_path)
    with pytest.raises(ExecutionError, match="already exist"):
        foo.execute_operator(URI_COMPARE, ctx={"dataset": small_ds,
                                               "params": op_params(tmp_path)})
    assert snapshot(small_ds, tmp_path) == before
    # allowed: labels resumed (nothing recomputed), evaluations replaced
    again = foo.execute_operator(URI_COMPARE, ctx={"dataset": small_ds, "params": op_params(
        tmp_path, overwrite_evaluations=True)}).result
    assert again["trunk_runs"] == 0
    assert [row["num_skipped"] for row in again["per_method"]] == [len(small_ds)] * 2
    assert [row["mIoU"] for row in again["per_method"]] == \
        [row["mIoU"] for row in out["per_method"]]


def test_compare_operator_without_ground_truth_delegated(fo, foo, small_ds, tmp_path):
    p = op_params(tmp_path, gt_field="(none)", vocab_source="text", vocabulary=VOCAB,
                  field_prefix="d_", methods=["sclip", "naclip"])
    out = run_delegated(foo, URI_COMPARE, small_ds, p, "d_sclip").result
    for f in ("d_sclip", "d_naclip"):
        assert len(small_ds.exists(f)) == len(small_ds)
    assert not small_ds.list_evaluations()
    assert [row["mIoU"] for row in out["per_method"]] == [None, None]


def test_compare_operator_reports_an_evaluation_that_cannot_run(fo, foo, small_ds, tmp_path):
    # a vocabulary class the ground truth does not name: labels written, evaluation reported
    p = op_params(tmp_path, vocab_source="text", vocabulary="background\ndog\nperson",
                  field_prefix="dog_")
    out = foo.execute_operator(URI_COMPARE, ctx={"dataset": small_ds, "params": p}).result
    for row in out["per_method"]:
        assert row["num_labelled"] == len(small_ds)
        assert row["mIoU"] is None and "dog" in row["error"]
    assert all("not evaluated" in s for s in out["summary"])
