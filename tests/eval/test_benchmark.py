"""``tfovss benchmark``: resumable runs, the papers' table layout, the CLI end to end on the shared
samples with the golden synthetic ViT-B/16 weights, and the FiftyOne side (``--fiftyone``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from tfovss_core.cli import benchmark as bench_cli
from tfovss_core.eval import benchmark as bm
from tfovss_core.eval import report
from tfovss_core.eval.datasets import get_importer
from tfovss_core.eval.metrics import SegmentationMetric

from support.paths import DATA, GOLDEN, REPO_ROOT
from support.trunk import record_trunk_batches

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared sample data not found")


class FakeSegmenter:
    """Deterministic 'predictions' from the image bytes (no model): counts its calls."""

    calls = 0

    def __init__(self, num_classes: int, seed: int = 0):
        self.num_classes = num_classes
        self.seed = seed

    def predict(self, path):
        FakeSegmenter.calls += 1
        with Image.open(path) as im:
            w, h = im.size
        rng = np.random.default_rng(zlib.crc32(f"{path}:{self.seed}".encode()))
        coarse = rng.integers(0, self.num_classes, (4, 4))
        mask = np.kron(coarse, np.ones((h // 4 + 1, w // 4 + 1), int))[:h, :w].astype(np.uint8)
        return type("R", (), {"mask": mask})()

    def describe(self):
        return {"settings": {"short_side": 336, "crop": 224, "stride": 112, "logit_scale": 40,
                             "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0,
                             "templates": "fake"}}


def _fake_weights():
    return bm.Weights("fake", "ViT-B-16", "fake-weights", "fake", synthetic=True,
                      loader=lambda device: pytest.fail("the model must not be loaded"))


def _runner(out, importers, limit=None, **kw):
    return bm.BenchmarkRunner(["sclip", "naclip"], importers, _fake_weights(), out, limit=limit,
                              progress=False, log=lambda s: None,
                              segmenter_factory=lambda spec: FakeSegmenter(
                                  spec.importer.num_classes, seed=len(spec.method)), **kw)


@needs_data
def test_runner_resumes_without_recomputing(tmp_path):
    imps = {"voc21": get_importer("voc21", DATA), "ade20k": get_importer("ade20k", DATA)}
    FakeSegmenter.calls = 0
    first = _runner(tmp_path, imps, limit=2).run()
    assert FakeSegmenter.calls == 2 * (1 + 2)
    assert [r.computed for r in first] == [1, 2, 1, 2] and all(r.resumed == 0 for r in first)

    # the metric equals a direct accumulation of the same predictions
    seg = FakeSegmenter(150, seed=len("sclip"))
    direct = SegmentationMetric(150)
    for s in imps["ade20k"].samples(limit=2):
        direct.update(seg.predict(s.image_path).mask, s.load_gt())
    r = next(r for r in first if (r.spec.method, r.spec.dataset) == ("sclip", "ade20k"))
    assert r.metrics["mIoU"] == pytest.approx(direct.compute()["mIoU"])

    FakeSegmenter.calls = 0
    second = _runner(tmp_path, imps, limit=2).run()
    assert FakeSegmenter.calls == 0  # nothing recomputed
    assert all(r.computed == 0 and r.resumed == r.num_images for r in second)
    for a, b in zip(first, second):
        assert a.spec.key == b.spec.key and a.metrics["mIoU"] == b.metrics["mIoU"]

    # a larger --limit computes only the new image
    third = _runner(tmp_path, imps, limit=3).run()
    assert FakeSegmenter.calls == 2 and [r.computed for r in third] == [0, 1, 0, 1]

    # a line cut short by an interruption is dropped and that image recomputed
    rec = third[1].spec.records_path
    data = rec.read_bytes()
    rec.write_bytes(data[: data.rstrip(b"\n").rfind(b"\n") + 1] + b'{"id":"ADE_val_0000')
    FakeSegmenter.calls = 0
    fourth = _runner(tmp_path, imps, limit=3).run()
    assert FakeSegmenter.calls == 1 and fourth[1].computed == 1
    assert fourth[1].metrics["mIoU"] == pytest.approx(third[1].metrics["mIoU"])
    assert len(bm.read_records(rec)) == 3

    # other settings -> another run key and folder
    other = _runner(tmp_path, imps, limit=1, overrides={"logit_scale": 10}).plan()
    assert {s.key for s in other}.isdisjoint({r.spec.key for r in first})


@needs_data
def test_tables_in_the_papers_layout(tmp_path):
    imps = {"ade20k": get_importer("ade20k", DATA), "voc20": get_importer("voc20", DATA),
            "voc21": get_importer("voc21", DATA)}
    results = _runner(tmp_path, imps, limit=1).run()
    t = report.build_tables(results, _fake_weights(), limit=1)
    assert t["columns"] == ["VOC21", "VOC20", "ADE"]  # papers' order, whatever the CLI order
    assert [r["method"] for r in t["rows"]] == ["sclip", "naclip"]
    for row in t["rows"]:
        vals = [row["mIoU"][d] for d in t["datasets"]]
        assert row["avg"] == pytest.approx(round(np.mean(vals), 2), abs=0.006)
    paths = report.write_outputs(t, tmp_path / "out")
    md = paths["md"].read_text()
    assert "SYNTHETIC WEIGHTS" in md
    assert "| Method | VOC21 | VOC20 | ADE | Avg |" in md
    assert "| SCLIP (SYNTHETIC WEIGHTS) |" in md and "## Settings used" in md
    assert "ADE: 1 image (first 1 of 3: --limit)" in md
    csv_lines = paths["csv"].read_text().splitlines()
    assert csv_lines[0] == "method,VOC21,VOC20,ADE,Avg,arch,weights"
    assert csv_lines[1].startswith("SCLIP,") and "SYNTHETIC WEIGHTS" in csv_lines[1]
    js = json.loads(paths["json"].read_text())
    assert js["synthetic_weights"] is True
    ade = js["details"]["sclip"]["ade20k"]
    assert len(ade["IoU"]) == 150 and ade["num_images"] == 1 and ade["total_images"] == 3
    st = json.loads(paths["settings"].read_text())
    assert st["runs"]["sclip"]["voc21"]["inputs"]["preset_settings"]["logit_scale"] == 65


def test_weights_specs(tmp_path):
    w = bm.resolve_weights("ViT-B/16", "openai")
    assert (w.label, w.synthetic, w.identity) == ("openai", False, "tag:openai")
    f = tmp_path / "w.pt"
    f.write_bytes(b"x")
    w = bm.resolve_weights("ViT-B/16", str(f))
    assert w.label == "file:w.pt" and w.identity.startswith("file:")
    w = bm.resolve_weights("ViT-B/16", "tiny:seed3")
    assert w.synthetic and w.arch == "tiny" and w.label == "tiny:seed3"
    env = os.environ.pop(bench_cli.ENV_SYNTHETIC_SCRIPT, None)
    try:
        with pytest.raises(bm.BenchmarkError, match="--synthetic-weights-script"):
            bm.resolve_weights("ViT-B/16", "synthetic:seed0")
    finally:
        if env is not None:
            os.environ[bench_cli.ENV_SYNTHETIC_SCRIPT] = env
    with pytest.raises(bm.BenchmarkError, match="does not exist"):
        bm.resolve_weights("ViT-B/16", str(tmp_path / "missing.pt"))


def _cli(args, env_extra=None, timeout=600):
    env = dict(os.environ)
    env.update(env_extra or {})
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "tfovss_core.cli", "benchmark", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def test_cli_reports_missing_data(tmp_path, capsys):
    rc = bench_cli.main(["--methods", "sclip", "--datasets", "context60", "cityscapes", "--root",
                  str(tmp_path), "--pretrained", "tiny"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "context60: no Pascal Context (VOC2010) folder" in err
    assert "cityscapes: no Cityscapes folder" in err
    rc = bench_cli.main(["--methods", "nosuchmethod", "--datasets", "voc21", "--root", str(tmp_path)])
    assert rc == 2 and "unknown method" in capsys.readouterr().err


@needs_data
def test_cli_tiny_clip_on_every_shared_sample(tmp_path, capsys):
    """The real segmenter (tiny random CLIP) on VOC, ADE20K and COCO-Object from the instances
    json, through the CLI entry point; a second call resumes everything."""
    args = ["--methods", "sclip", "--datasets", "ade20k,coco_object", "voc21", "--root",
            str(DATA), "--pretrained", "tiny:seed0", "--limit", "1", "--out", str(tmp_path),
            "--no-progress"]
    assert bench_cli.main(args) == 0
    out = capsys.readouterr().out
    assert "Computed 3 images, resumed 0." in out
    md = (tmp_path / "results.md").read_text()
    assert "| Method | VOC21 | Object | ADE | Avg |" in md and "SYNTHETIC WEIGHTS" in md
    js = json.loads((tmp_path / "results.json").read_text())
    obj = js["details"]["sclip"]["coco_object"]
    assert len(obj["IoU"]) == 81 and obj["evaluated"] == 1
    assert bench_cli.main(args) == 0
    out = capsys.readouterr().out
    assert "Nothing recomputed: all 3 image results were resumed" in out
    assert "the model was not loaded" in out


@needs_data
@pytest.mark.skipif(not (GOLDEN / "make_weights.py").is_file(), reason="golden weights script")
def test_cli_end_to_end_with_synthetic_weights(tmp_path):
    """The acceptance run: shared samples, synthetic ViT-B/16 weights, a table; then a second run
    that resumes everything without loading the model."""
    out = tmp_path / "bench"
    args = ["--methods", "sclip", "--datasets", "voc21", "ade20k", "--root", str(DATA),
            "--arch", "ViT-B/16", "--pretrained", "synthetic:seed0", "--limit", "1",
            "--out", str(out), "--set", "templates=single", "--no-progress"]
    env = {bench_cli.ENV_SYNTHETIC_SCRIPT: str(GOLDEN / "make_weights.py")}
    p = _cli(args, env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Computed 2 images, resumed 0." in p.stdout
    md = (out / "results.md").read_text()
    assert "SYNTHETIC WEIGHTS" in md and "| Method | VOC21 | ADE | Avg |" in md
    row = next(line for line in md.splitlines() if line.startswith("| SCLIP"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 4 and all(c.replace(".", "").isdigit() for c in cells[1:])
    runs = sorted((out / "runs").glob("sclip__*"))
    assert len(runs) == 2
    before = {r: (r / "images.jsonl").read_bytes() for r in runs}
    assert all(len(v.splitlines()) == 1 for v in before.values())

    p2 = _cli(args, env)
    assert p2.returncode == 0, p2.stdout + p2.stderr
    assert "Nothing recomputed: all 2 image results were resumed" in p2.stdout
    assert "the model was not loaded" in p2.stdout and "loading" not in p2.stdout
    assert {r: (r / "images.jsonl").read_bytes() for r in runs} == before
    assert row in (out / "results.md").read_text()


# ------------------------------------------------------------------------- shared frozen trunk

# official presets on VOC: sclip+unveil share (336, 224/112), clip+maskclip share (448, 448/224);
# gclip has ClearCLIP's windows but edits weights: a trunk of its own
SHARE = ["sclip", "unveil", "clip", "maskclip", "gclip"]


@pytest.fixture
def one_thread():
    """torch on one thread: several threads on a busy 2-core machine run these tiny models ~10x
    slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_voc(tmp_path_factory):
    """A VOC-layout dataset of three 160x120 tiles of the shared VOC image (cheap to segment)."""
    if not DATA.is_dir():
        pytest.skip("shared sample data not found")
    sample = next(get_importer("voc21", DATA).samples())
    root = tmp_path_factory.mktemp("small_voc")
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    ids = []
    with Image.open(sample.image_path) as im, Image.open(sample.gt_path) as lab:
        for k in range(3):
            box = (160 * k, 120 * k, 160 * k + 160, 120 * k + 120)
            ids.append(f"tile_{k}")
            im.crop(box).save(base / "JPEGImages" / f"tile_{k}.jpg", quality=95)
            lab.crop(box).save(base / "SegmentationClass" / f"tile_{k}.png")
    (base / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids) + "\n")
    return root


def _stored(run_dir):
    """A run's per-image records without their timing, and its saved masks."""
    records = {i: {k: v for k, v in r.items() if k != "sec"}
               for i, r in bm.read_records(run_dir / "images.jsonl").items()}
    masks = {p.stem: np.asarray(Image.open(p)) for p in sorted((run_dir / "masks").glob("*.png"))}
    return records, masks


def test_shared_trunk_gives_the_same_records_masks_and_miou(tmp_path, capsys, small_voc,
                                                            one_thread):
    """The CLI with and without --no-shared-trunk: identical per-image records, masks and mIoU."""
    base = ["--methods", ",".join(SHARE), "--datasets", "voc21", "--root", str(small_voc),
            "--pretrained", "tiny:seed0", "--save-masks", "--no-progress",
            "--set", "templates=single", "--set", "prob_thd=0", "--set", "area_thd=null"]
    # (no background threshold: the tiny CLIP's masks then vary, so equal masks mean something)
    assert bench_cli.main(base + ["--out", str(tmp_path / "shared")]) == 0
    log = capsys.readouterr().out
    assert "voc21: frozen trunk shared by sclip+unveil, clip+maskclip (" in log
    assert bench_cli.main(base + ["--out", str(tmp_path / "alone"), "--no-shared-trunk"]) == 0
    assert "frozen trunk shared" not in capsys.readouterr().out

    js = {k: json.loads((tmp_path / k / "results.json").read_text()) for k in ("shared", "alone")}
    assert js["shared"]["shared_trunk"] is True and js["alone"]["shared_trunk"] is False
    assert "Frozen trunk: shared" in (tmp_path / "shared" / "results.md").read_text()
    assert "not shared (`--no-shared-trunk`)" in (tmp_path / "alone" / "results.md").read_text()
    assert json.loads((tmp_path / "shared" / "settings.json").read_text())["shared_trunk"] is True
    for m in SHARE:
        a, b = js["shared"]["details"][m]["voc21"], js["alone"]["details"][m]["voc21"]
        assert a["computed"] == b["computed"] == a["evaluated"] == 3
        assert a["settings_key"] == b["settings_key"]  # sharing is not a setting: same run
        assert (a["mIoU"], a["mAcc"], a["aAcc"], a["IoU"]) == \
            (b["mIoU"], b["mAcc"], b["aAcc"], b["IoU"]), m
        shared_with = {"sclip": ["unveil"], "unveil": ["sclip"], "clip": ["maskclip"],
                       "maskclip": ["clip"]}.get(m, [])
        assert a["shared_trunk_with"] == shared_with and b["shared_trunk_with"] == []
        run = os.path.basename(a["run_dir"])
        records, masks = _stored(tmp_path / "shared" / "runs" / run)
        ref_records, ref_masks = _stored(tmp_path / "alone" / "runs" / run)
        assert records == ref_records and len(records) == a["evaluated"]
        assert masks.keys() == ref_masks.keys() == records.keys()
        for i in masks:
            assert np.array_equal(masks[i], ref_masks[i]), (m, i)
        if m != "gclip":  # (the tiny CLIP's GCLIP masks are flat)
            assert max(len(np.unique(v)) for v in masks.values()) > 5, m
    assert [r["mIoU"] for r in js["shared"]["rows"]] == [r["mIoU"] for r in js["alone"]["rows"]]
    assert "--no-shared-trunk" in bench_cli.build_parser().format_help()


@pytest.fixture
def counted_tiny(one_thread):
    """Tiny CLIP weights and a model whose frozen-trunk passes are counted."""
    weights = bm.resolve_weights("ViT-B/16", "tiny:seed0")
    model = weights.load("cpu")
    return weights, model, record_trunk_batches(model.visual)


def _tiny_runner(out, methods, weights, model, root, limit, **kw):
    """sclip / unveil with their official VOC windows (6 per tile), 2 windows per batch."""
    return bm.BenchmarkRunner(methods, {"voc21": get_importer("voc21", root)}, weights, out,
                              limit=limit, overrides={"templates": "single", "batch_size": 2,
                                                        "prob_thd": 0, "area_thd": None},
                              progress=False, log=lambda s: None, model=model, **kw)


def test_shared_trunk_runs_the_frozen_blocks_once_per_window_batch(tmp_path, counted_tiny,
                                                                   small_voc):
    weights, model, calls = counted_tiny
    alone = {}
    for m in ("sclip", "unveil"):
        calls.clear()
        _tiny_runner(tmp_path / m, [m], weights, model, small_voc, 2).run()
        alone[m] = len(calls)
    assert alone["sclip"] == alone["unveil"] == 2 * 3  # 2 tiles, 6 windows each, 2 per batch

    calls.clear()
    runner = _tiny_runner(tmp_path / "shared", ["sclip", "unveil"], weights, model, small_voc, 2)
    runner.run()
    assert len(calls) == alone["sclip"] == runner.trunk_batches  # once for both methods

    calls.clear()
    _tiny_runner(tmp_path / "separate", ["sclip", "unveil"], weights, model, small_voc, 2,
                 shared_trunk=False).run()
    assert len(calls) == alone["sclip"] + alone["unveil"]


def test_images_per_batch_gives_the_same_records_with_fewer_forward_passes(tmp_path, counted_tiny, small_voc):
    """Three same-sized tiles, 6 windows each, 4 windows per forward pass: one image at a time
    takes 2 passes each (4 + 2 windows), the three together 5 (18 windows); same records, masks
    and metrics."""
    weights, model, calls = counted_tiny
    stored = {}
    for k in (1, 3):
        calls.clear()
        runner = bm.BenchmarkRunner(["sclip"], {"voc21": get_importer("voc21", small_voc)}, weights,
                                    tmp_path / f"k{k}", overrides={"templates": "single", "batch_size": 4,
                                                                   "prob_thd": 0, "area_thd": None},
                                    save_masks=True, progress=False, log=lambda s: None, model=model,
                                    images_per_batch=k)
        runner.run()
        run_dir = next((tmp_path / f"k{k}" / "runs").iterdir())
        stored[k] = (len(calls), runner.results[0].metrics, _stored(run_dir))
    assert stored[1][0] == 3 * 2 and stored[3][0] == 5
    for name, value in stored[1][1].items():                                 # mIoU, IoU, accuracies
        assert np.array_equal(np.asarray(value), np.asarray(stored[3][1][name]), equal_nan=True), name
    records, masks = stored[3][2]
    assert records == stored[1][2][0] and len(masks) == 3
    for i, mask in masks.items():
        assert np.array_equal(mask, stored[1][2][1][i]), i


def test_shared_trunk_resumes_a_method_finished_before_another(tmp_path, counted_tiny, small_voc):
    """sclip has image 1, unveil nothing: image 1 is computed for unveil only, image 2 for both
    in one shared pass; the records equal separate runs'."""
    weights, model, calls = counted_tiny
    _tiny_runner(tmp_path / "ref", ["sclip", "unveil"], weights, model, small_voc, 2,
                 shared_trunk=False).run()
    calls.clear()
    _tiny_runner(tmp_path / "unveil-only", ["unveil"], weights, model, small_voc, 2).run()
    unveil_batches = len(calls)

    first = _tiny_runner(tmp_path / "out", ["sclip"], weights, model, small_voc, 1).run()
    assert [r.computed for r in first] == [1]
    calls.clear()
    runner = _tiny_runner(tmp_path / "out", ["sclip", "unveil"], weights, model, small_voc, 2)
    sclip, unveil = runner.run()
    assert (sclip.computed, sclip.resumed, unveil.computed, unveil.resumed) == (1, 1, 2, 0)
    assert sclip.shared_with == ["unveil"] and unveil.shared_with == ["sclip"]
    assert len(calls) == unveil_batches  # image 1 for unveil alone, image 2 shared
    for r in (sclip, unveil):
        assert _stored(r.spec.dir)[0] == _stored(tmp_path / "ref" / "runs" / r.spec.dir.name)[0]
        assert r.evaluated == 2 and r.metrics is not None

    calls.clear()
    again = _tiny_runner(tmp_path / "out", ["sclip", "unveil"], weights, model, small_voc, 2).run()
    assert not calls and all(r.computed == 0 and r.resumed == 2 for r in again)


def test_shared_trunk_failures_go_to_each_run(tmp_path, counted_tiny, small_voc):
    """A corrupt image fails for every method; an error of one method on one image (here unveil
    on tile_2) fails only that method: the others keep their shared-pass results."""
    import shutil

    import tfovss_core as tc

    weights, model, calls = counted_tiny
    root = tmp_path / "data"
    shutil.copytree(small_voc, root)
    (root / "VOCdevkit/VOC2012/JPEGImages/tile_1.jpg").write_bytes(b"not a jpeg")

    class FailsOnTile2(tc.Segmenter):
        def finish(self, logits, x, name=""):
            if "tile_2" in name:
                raise tc.InputError(f"{name}: refused")
            return super().finish(logits, x, name)

    def factory(spec):
        cls = FailsOnTile2 if spec.method == "unveil" else tc.Segmenter
        return cls(model, method=spec.method, classes="voc21", templates="single", batch_size=2,
                   prob_thd=0, area_thd=None)

    sclip, unveil = _tiny_runner(tmp_path / "out", ["sclip", "unveil"], weights, model, root, 3,
                                 segmenter_factory=factory).run()
    assert sorted(sclip.failed) == ["tile_1"] and sorted(unveil.failed) == ["tile_1", "tile_2"]
    assert "refused" in unveil.failed["tile_2"]
    assert (sclip.computed, unveil.computed) == (2, 1)
    ref = _tiny_runner(tmp_path / "ref", ["sclip"], weights, model, small_voc, 3,
                       shared_trunk=False).run()[0]
    ref_records = _stored(ref.spec.dir)[0]
    assert _stored(sclip.spec.dir)[0] == {i: ref_records[i] for i in ("tile_0", "tile_2")}


# ----------------------------------------------------------------------------------- FiftyOne

@pytest.fixture(scope="module")
def fo():
    # FiftyOne's own configuration (or the plugin tests' isolated one when they run first); the
    # datasets made here are non-persistent and deleted at the end
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")
    fo = pytest.importorskip("fiftyone")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    pytest.importorskip("tfovss_fiftyone.evaluation")
    return fo


@needs_data
def test_fiftyone_benchmark_datasets_and_stored_runs(tmp_path, fo):
    import tfovss_fiftyone.benchmarks as pb

    prefix = f"tfovss-test-{os.getpid()}"
    imps = {"voc21": get_importer("voc21", DATA), "ade20k": get_importer("ade20k", DATA)}
    runner = _runner(tmp_path, imps, limit=2, save_masks=True)
    results = runner.run()
    tables = report.build_tables(results, _fake_weights(), limit=2)
    lines = list(pb.store_runs(results, tables, prefix=prefix, persistent=False))
    assert len(lines) == 4 and all("SYNTHETIC WEIGHTS" in line for line in lines)
    try:
        ade = fo.load_dataset(f"{prefix}-ade20k-val")
        assert len(ade) == 2
        assert ade.mask_targets["ground_truth"][0] == "wall"
        s = ade.match(fo.ViewField("tfovss_id") == "ADE_val_00000001").first()
        gt = s["ground_truth"].get_mask()
        assert (gt == next(iter(imps["ade20k"])).load_gt()).all()
        keys = ade.list_evaluations()
        assert {"eval_sclip_vit_b_16_synthetic", "eval_naclip_vit_b_16_synthetic"} <= set(keys)
        for r in results:
            if r.spec.dataset != "ade20k":
                continue
            key = f"eval_{r.spec.method}_vit_b_16_synthetic"
            res = ade.load_evaluation_results(key)
            assert res.mIoU == pytest.approx(r.metrics["mIoU"])  # same number as the table
            assert ade.info["tfovss_runs"][key]["label"] == "SYNTHETIC WEIGHTS"
        # a second store (e.g. a resumed run) completes and overwrites, never duplicates
        list(pb.store_runs(results, tables, prefix=prefix, persistent=False))
        assert len(fo.load_dataset(f"{prefix}-ade20k-val")) == 2

        # a user's own FiftyOne dataset as a benchmark
        own = pb.FiftyOneImporter(ade, gt_field="ground_truth")
        assert own.num_classes == 150 and own.preset_name is None
        own.check()
        s0 = next(iter(own))
        assert (s0.load_gt() == ade.select(s0.id).first()["ground_truth"].get_mask()).all()
        res2 = _runner(tmp_path / "own", {own.name: own}, save_masks=True).run()
        assert all(r.evaluated == 2 for r in res2)
        t2 = report.build_tables(res2, _fake_weights())
        list(pb.store_runs(res2, t2, prefix=prefix, persistent=False))
        assert ade.load_evaluation_results("eval_sclip_vit_b_16_synthetic").mIoU == \
            pytest.approx(next(r for r in res2 if r.spec.method == "sclip").metrics["mIoU"])
    finally:
        for name in fo.list_datasets():
            if name.startswith(prefix):
                fo.delete_dataset(name)
