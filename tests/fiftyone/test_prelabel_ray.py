"""Pre-labelling on Ray (:mod:`tfovss_core.engine.ray_executor` under
:func:`tfovss_fiftyone.prelabel.prelabel`), against a real local Ray on loopback (2 CPUs, a temp
dir, stopped at teardown) and a real FiftyOne database, with the tiny synthetic CLIP on the shared
COCO images: the same mask files, byte for byte, as a local run; an actor killed by PID mid-run;
the driver killed and rerun (resume by settings hash); bad images listed; the operator's
"Ray cluster" choice."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from support.fo import REPO_ROOT, URI_PRELABEL, needs_core, unique_name
from support.images import write_bad_images

ray = pytest.importorskip("ray", reason='ray is not installed (pip install "tfovss[ray]")')

pytestmark = needs_core

FAST = {"short_side": 64, "crop": 64, "stride": 64, "templates": "single"}
VOCAB = "background\ncat, kitten\nperson, man, woman\ncar"
TINY = dict(arch="ViT-B-16", pretrained="tiny:seed0", device="cpu", classes=VOCAB)


def coco_paths(data_dir, n: int) -> list[str]:
    folder = Path(data_dir) / "coco2017" / "train2017"
    paths = sorted(str(p) for p in folder.glob("*.jpg"))[:n]
    if len(paths) < n:
        pytest.skip(f"needs {n} COCO images under {folder}")
    return paths


def image_dataset(fo, paths, prefix="ray"):
    ds = fo.Dataset(unique_name(prefix))
    ds.add_samples([fo.Sample(filepath=p) for p in paths])
    return ds


def executor(**kw):
    from tfovss_core.engine.ray_executor import RayExecutor

    return RayExecutor(**{"num_actors": 2, "batch_size": 2, **kw})


def stored(ds, field):
    """{sample id: (mask bytes, mean_confidence)} of a field (every label's file read)."""
    out = {}
    for sid, label in zip(ds.values("id"), ds.values(field)):
        if label is not None:
            out[sid] = (Path(label.mask_path).read_bytes(), label.mean_confidence)
    return out


@pytest.fixture(scope="module")
def coco12(fo, data_dir):
    return coco_paths(data_dir, 12)


@pytest.fixture(scope="module")
def local_reference(fo, coco12, tmp_path_factory):
    """A local run (no Ray) of the 12 COCO images: {filepath: (mask bytes, confidence bytes,
    mean_confidence)}."""
    from tfovss_fiftyone.prelabel import prelabel

    ds = image_dataset(fo, coco12, "ray-ref")
    out = tmp_path_factory.mktemp("local")
    rep = prelabel(ds, "ovss", settings=FAST, batch_size=2, output_dir=str(out),
                   confidence_field="ovss_conf", **TINY)
    assert rep.num_labelled == 12 and not rep.failures
    ref = {}
    for s in ds:
        ref[s.filepath] = (Path(s.ovss.mask_path).read_bytes(),
                           Path(s.ovss_conf.map_path).read_bytes(), s.ovss.mean_confidence)
    return rep.settings_hash, ref


def assert_equals_reference(ds, reference, conf=True):
    h, ref = reference
    for s in ds:
        assert s.ovss is not None, s.filepath
        assert s.ovss.tfovss_hash == h
        assert Path(s.ovss.mask_path).read_bytes() == ref[s.filepath][0], s.filepath
        assert s.ovss.mean_confidence == ref[s.filepath][2]
        if conf:
            assert Path(s.ovss_conf.map_path).read_bytes() == ref[s.filepath][1]


def test_ray_run_equals_local_run_byte_for_byte(fo, ray_cluster, coco12, local_reference,
                                                 tmp_path):
    from tfovss_fiftyone.prelabel import prelabel

    ds = image_dataset(fo, coco12)
    ex = executor()
    rep = prelabel(ds, "ovss", settings=FAST, batch_size=2, output_dir=str(tmp_path),
                   confidence_field="ovss_conf", executor=ex, **TINY)
    assert (rep.num_labelled, rep.num_failed, rep.num_skipped) == (12, 0, 0)
    assert rep.settings_hash == local_reference[0]
    assert len(ex.actor_pids) == 2 and os.getpid() not in ex.actor_pids
    assert ex.batches_done == 6
    assert_equals_reference(ds, local_reference)
    # the actors wrote the files atomically: no temporary file is left
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]


def test_actor_killed_mid_run_every_sample_labelled_once(fo, ray_cluster, coco12,
                                                          local_reference, tmp_path):
    from tfovss_fiftyone.prelabel import prelabel

    ds = image_dataset(fo, coco12)
    ex = executor(in_flight_per_actor=2)
    killed = []

    def kill_first_actor(done, total, label):
        if not killed:  # the first batch is back: actor 0 still has a batch in flight
            os.kill(ex.actor_pids[0], signal.SIGKILL)
            killed.append(ex.actor_pids[0])

    rep = prelabel(ds, "ovss", settings=FAST, batch_size=2, output_dir=str(tmp_path),
                   confidence_field="ovss_conf", executor=ex, progress=kill_first_actor, **TINY)
    assert killed
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    assert (rep.num_labelled, rep.num_failed) == (12, 0)
    assert ex.batches_done == 6                       # each batch's outcomes delivered once
    assert ex.batch_pids and set(ex.batch_pids) - set(ex.actor_pids)  # a restarted actor ran
    assert len(ds.exists("ovss")) == 12
    assert len(set(ds.values("ovss.mask_path"))) == 12
    assert_equals_reference(ds, local_reference)       # no label points to a partial file


def test_bad_images_are_listed_and_the_rest_labelled(fo, ray_cluster, data_dir, tmp_path):
    from tfovss_fiftyone.prelabel import prelabel

    good = coco_paths(data_dir, 3)
    corrupt, truncated, deep = write_bad_images(tmp_path, good[0])
    paths = good + [str(corrupt), str(truncated), str(deep)]

    results = {}
    for name, ex in (("local", None), ("ray", executor())):
        ds = image_dataset(fo, paths)
        rep = prelabel(ds, "ovss", settings=FAST, batch_size=2, executor=ex,
                       output_dir=str(tmp_path / name), **TINY)
        results[name] = (rep, ds)
    rep, ds = results["ray"]
    assert rep.num_labelled == 3 and rep.num_failed == 3
    assert sorted(f["filepath"] for f in rep.failures) == sorted(paths[3:])
    assert len(ds.exists("ovss")) == 3 and sorted(ds.exists("ovss").values("filepath")) == good
    deep_error = next(f["error"] for f in rep.failures if f["filepath"] == str(deep))
    assert "16-bit" in deep_error
    local_rep = results["local"][0]
    # the same failures, with the same messages, as the local run
    assert sorted((f["filepath"], f["error"]) for f in rep.failures) == \
        sorted((f["filepath"], f["error"]) for f in local_rep.failures)


SLOW = {"short_side": 320, "crop": 64, "stride": 32, "templates": "single"}


def test_driver_killed_and_rerun_recomputes_nothing_stored(fo, ray_cluster, coco12, tmp_path):
    """A driver process (``python -m tfovss_fiftyone.cli prelabel --ray``) killed by PID once some
    batches are stored; the rerun computes exactly the samples not stored."""
    from tfovss_fiftyone.prelabel import prelabel, settings_hash  # noqa: F401

    ds = image_dataset(fo, coco12)
    out = tmp_path / "masks"
    cmd = [sys.executable, "-m", "tfovss_fiftyone.cli", "prelabel", "--dataset", ds.name,
           "--field", "ovss", "--method", "sclip", "--classes", VOCAB.replace("\n", ";"),
           "--pretrained", "tiny:seed0", "--device", "cpu", "--batch-size", "2",
           "--output-dir", str(out), "--ray", "--ray-actors", "1", "--ray-batch-size", "2"]
    cmd += [f"--set={k}={v}" for k, v in SLOW.items()]
    # the driver's temporary files (its local Ray's directory) in a folder of this test's own, so
    # that what the killed driver leaves behind is removed without touching anyone else's; a short
    # name: Ray's socket paths below it must stay within AF_UNIX's 107 bytes
    driver_tmp = tempfile.mkdtemp(prefix="d")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")]),
           "TMPDIR": driver_tmp}
    proc = subprocess.Popen(cmd, env=env, cwd=str(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    stored_at_kill = 0
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            ds.reload()
            if "ovss" in ds.get_field_schema():
                stored_at_kill = len(ds.exists("ovss"))
                if stored_at_kill >= 2:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)             # the driver only
        proc.wait(timeout=30)
    finally:
        try:  # whatever the driver started (its local Ray) goes with it
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        # the killed driver could not remove its local Ray's temporary directory
        shutil.rmtree(driver_tmp, ignore_errors=True)
    ds.reload()
    stored_at_kill = len(ds.exists("ovss"))
    assert 2 <= stored_at_kill < 12
    rep = prelabel(ds, "ovss", settings=SLOW, batch_size=2, output_dir=str(out),
                   executor=executor(), **TINY)
    assert rep.num_skipped == stored_at_kill
    assert rep.num_labelled == 12 - stored_at_kill and rep.num_failed == 0
    assert len(ds.exists("ovss")) == 12
    assert len(set(ds.values("ovss.tfovss_hash"))) == 1
    for s in ds:  # every label points to a complete mask of its image
        w, h = Image.open(s.filepath).size
        assert s.ovss.get_mask().shape == (h, w)


def test_operator_ray_choice_lands_its_field(fo, foo, ray_cluster, coco12, local_reference,
                                             tmp_path):
    from support.fo import triggered  # noqa: F401

    ds = image_dataset(fo, coco12[:4])
    params = {"method": "sclip", "arch": "ViT-B-16", "pretrained": "tiny:seed0",
              "vocab_source": "text", "vocabulary": VOCAB, "label_field": "ovss",
              "output_dir": str(tmp_path), "batch_size": 2, "device": "cpu",
              "confidence": True, "confidence_field": "ovss_conf",
              "execution": "ray", "ray_address": "", **FAST}
    r = foo.execute_operator(URI_PRELABEL, ctx={"dataset": ds, "params": params})
    assert r.error is None, r.error
    assert r.result["num_labelled"] == 4 and r.result["num_failed"] == 0
    ds.reload()
    h, ref = local_reference
    assert r.result["settings_hash"] == h
    assert_equals_reference(ds, (h, {p: ref[p] for p in coco12[:4]}))
    assert ray.is_initialized()  # the operator used the running Ray and left it running
