"""The Ray executor of the job runner (:mod:`tfovss_core.engine.ray_executor`) against a real local
Ray on loopback (2 CPUs, a temp dir, stopped at teardown): the same outcomes, bit for bit, as the
serial executor (masks and probabilities, a shared trunk included); per-item failures as
outcomes; ``tfovss segment --ray`` writes the same files as without; a clear message naming the
``[ray]`` extra without Ray; ``--ray`` options and plugin commands in the CLI."""
from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tfovss_core as tc
from tfovss_core.clip.synthetic import tiny_clip
from tfovss_core.engine.runner import Item, JobRunner, ModelPass, ModelSpec, RunRef, SerialExecutor, Work
from tfovss_core.errors import ConfigError

from support.paths import DATA

try:
    import ray
except ImportError:
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason='ray is not installed (pip install "tfovss[ray]")')

CLASSES = ["cat", ["dog", "puppy"], "car"]
COMMON = dict(short_side=64, crop=32, stride=16, pamr_steps=0, batch_size=2)


@pytest.fixture(scope="module")
def coco():
    folder = DATA / "coco2017" / "train2017"
    paths = sorted(folder.glob("*.jpg"))[:6]
    if len(paths) < 6:
        pytest.skip(f"needs 6 COCO images under {folder}")
    return paths


@pytest.fixture(scope="module")
def segs():
    torch.set_num_threads(1)
    model = tiny_clip(seed=1, layers=4)
    return {m: tc.Segmenter(model, method=m, classes=CLASSES, **COMMON)
            for m in ("sclip", "clearclip")}


class MemorySink:
    def __init__(self):
        self.results, self.failures = {}, []

    def done(self, run):
        return set()

    def write(self, outcome):
        assert outcome.item.id not in self.results, "an item delivered twice"
        self.results[outcome.item.id] = {k: (v.mask, v.probs) for k, v in outcome.results.items()}

    def failure(self, item, error, labels):
        self.failures.append((item.id, f"{type(error).__name__}: {error}", tuple(labels)))

    def close(self):
        pass


def _run(segs, items, executor):
    sink = MemorySink()
    runs = [RunRef(m, m) for m in segs]
    stats = JobRunner(ModelPass(ModelSpec(dict(segs))), runs, sink, executor=executor).run(items)
    return sink, stats


@needs_ray
def test_ray_outcomes_equal_the_serial_executors_bit_for_bit(ray_cluster, segs, coco, tmp_path):
    from tfovss_core.engine.ray_executor import RayExecutor

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    items = [Item(p.stem, str(p)) for p in coco] + [Item("broken", str(broken))]
    local, local_stats = _run(segs, items, SerialExecutor())
    ex = RayExecutor(num_actors=2, batch_size=2)
    remote, stats = _run(segs, items, ex)
    assert sorted(remote.results) == sorted(local.results) == sorted(p.stem for p in coco)
    for sid, by_method in local.results.items():
        for m, (mask, probs) in by_method.items():
            assert np.array_equal(remote.results[sid][m][0], mask)
            assert np.array_equal(remote.results[sid][m][1], probs)   # bit for bit
    assert remote.failures == local.failures and [f[0] for f in remote.failures] == ["broken"]
    assert stats.computed == local_stats.computed == {"sclip": 6, "clearclip": 6}
    assert stats.failed == {"sclip": 1, "clearclip": 1}
    assert ex.batches_done == 4 and len(set(ex.actor_pids)) == 2
    assert ray.is_initialized()  # a Ray it did not start is left running


@needs_ray
def test_ray_actors_batch_images_with_the_same_masks(ray_cluster, coco, tmp_path):
    # --images-per-batch reaches the actors' model pass; at the protocol's window size (224) the
    # masks are a one-image-at-a-time local run's, byte for byte
    from tfovss_core.cli import main

    args = ["segment"] + [str(p) for p in coco[:4]] + ["--classes", "cat; dog, puppy; car", "--method", "sclip",
                                          "--pretrained", "tiny:0", "--device", "cpu", "--quiet",
                                          "--set", "short_side=224"]
    assert main(args + ["--out", str(tmp_path / "local")]) == 0
    assert main(args + ["--out", str(tmp_path / "ray"), "--ray", "--ray-actors", "1", "--ray-batch-size", "4",
                        "--images-per-batch", "2"]) == 0
    local = sorted(p.name for p in (tmp_path / "local").glob("*_mask.png"))
    assert len(local) == 4
    for name in local:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


@needs_ray
def test_segment_cli_with_ray_writes_the_same_files(ray_cluster, coco, tmp_path):
    from tfovss_core.cli import main

    args = ["segment"] + [str(p) for p in coco[:4]] + ["--classes", "cat; dog, puppy; car", "--method", "sclip",
                                          "--pretrained", "tiny:0", "--device", "cpu", "--quiet",
                                          "--set", "short_side=64", "--set", "crop=32",
                                          "--set", "stride=16"]
    assert main(args + ["--out", str(tmp_path / "local")]) == 0
    assert main(args + ["--out", str(tmp_path / "ray"), "--ray", "--ray-actors", "2",
                        "--ray-batch-size", "1"]) == 0
    local = sorted(p.name for p in (tmp_path / "local").glob("*.png"))
    assert len(local) == 4
    for name in local:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    for name in (p.name for p in (tmp_path / "local").glob("*_overlay.jpg")):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


def test_without_ray_a_clear_message_names_the_extra(monkeypatch):
    from tfovss_core.cli.ray_options import executor_from_args
    from tfovss_core.engine.ray_executor import RayExecutor, require_ray

    monkeypatch.setitem(sys.modules, "ray", None)   # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r'pip install "tfovss\[ray\]"'):
        require_ray()
    with pytest.raises(ConfigError, match=r"\[ray\] extra"):
        list(RayExecutor().map(ModelSpec({"x": object()}), [Work(Item("a", "a.jpg"), ("x",))]))
    # no --ray: no executor, Ray never imported
    import argparse
    assert executor_from_args(argparse.Namespace(ray=None)) is None


def test_ray_options_parse_and_bad_sizes_are_refused():
    from tfovss_core.cli import build_parser
    from tfovss_core.engine.ray_executor import RayExecutor, executor_from_options

    args = build_parser().parse_args(["segment", "a.jpg", "--classes", "voc21", "--out", "o",
                                      "--ray", "--ray-actors", "3", "--ray-batch-size", "5"])
    assert (args.ray, args.ray_actors, args.ray_batch_size) == ("local", 3, 5)
    args = build_parser().parse_args(["segment", "a.jpg", "--classes", "voc21", "--out", "o",
                                      "--ray", "ray://head:10001"])
    assert args.ray == "ray://head:10001"
    ex = executor_from_options("local", num_actors=3, batch_size=5)
    assert (ex.address, ex.num_actors, ex.batch_size) == (None, 3, 5)
    assert executor_from_options("auto").address == "auto"
    with pytest.raises(ConfigError, match="num_actors"):
        RayExecutor(num_actors=0)


def test_plugin_commands_come_from_the_entry_point_group(monkeypatch):
    from tfovss_core import cli

    ep = importlib.metadata.EntryPoint(name="prelabel", value="tfovss_fiftyone.cli:add_parser",
                                       group="tfovss.cli_commands")
    broken = importlib.metadata.EntryPoint(name="broken", value="no_such_module_xyz:add_parser",
                                           group="tfovss.cli_commands")
    real = importlib.metadata.entry_points

    def fake(**kw):
        return [ep, broken] if kw.get("group") == "tfovss.cli_commands" else real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    args = cli.build_parser().parse_args(["prelabel", "--dataset", "d", "--field", "f",
                                          "--method", "sclip", "--classes", "cat; dog",
                                          "--ray", "auto", "--ray-actors", "4"])
    assert (args.dataset, args.method, args.ray, args.ray_actors) == ("d", ["sclip"], "auto", 4)
    assert args.func.__module__ == "tfovss_fiftyone.cli"
    # a broken registration is a command that says so, not a crash of the whole CLI
    assert cli.main(["broken"]) == 2
    declared = Path(__file__).resolve().parents[2].joinpath("pyproject.toml").read_text()
    assert 'prelabel = "tfovss_fiftyone.cli:add_parser"' in declared


@needs_ray
def test_benchmark_cli_with_ray_stores_the_same_records_and_masks(ray_cluster, tmp_path):
    import json

    from tfovss_core.cli import benchmark as bench_cli
    from tfovss_core.eval import benchmark as bm

    if not (DATA / "voc2012").is_dir():
        pytest.skip("shared VOC sample not found")
    base = ["--methods", "sclip", "--datasets", "voc21", "--root", str(DATA), "--pretrained",
            "tiny:seed0", "--limit", "2", "--save-masks", "--no-progress",
            "--set", "templates=single", "--set", "short_side=64", "--set", "crop=32",
            "--set", "stride=16"]
    assert bench_cli.main(base + ["--out", str(tmp_path / "local")]) == 0
    assert bench_cli.main(base + ["--out", str(tmp_path / "ray"), "--ray",
                                  "--ray-batch-size", "1"]) == 0
    js = {k: json.loads((tmp_path / k / "results.json").read_text())["details"]["sclip"]["voc21"]
          for k in ("local", "ray")}
    assert js["ray"]["computed"] == js["local"]["computed"] >= 1
    assert (js["ray"]["mIoU"], js["ray"]["IoU"]) == (js["local"]["mIoU"], js["local"]["IoU"])
    run = Path(js["local"]["run_dir"]).name
    for what in ("local", "ray"):
        assert (tmp_path / what / "runs" / run / "masks").is_dir()
    records = {k: {i: {f: v for f, v in r.items() if f != "sec"}
                   for i, r in bm.read_records(tmp_path / k / "runs" / run / "images.jsonl").items()}
               for k in ("local", "ray")}
    assert records["ray"] == records["local"] and len(records["local"]) == js["local"]["computed"]
    for p in sorted((tmp_path / "local" / "runs" / run / "masks").glob("*.png")):
        assert (tmp_path / "ray" / "runs" / run / "masks" / p.name).read_bytes() == p.read_bytes()
