"""The job runner (:mod:`tfovss_core.engine.runner`): resume by run key, per-item failures, the
sink contract, progress counts, and a shared-trunk pass through the runner equal to each method
alone, bit for bit. Tiny random CLIPs and in-memory sinks; images written to a temp folder so the
background decoding reads real files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import tfovss_core as tc
from tfovss_core.clip.synthetic import tiny_clip
from tfovss_core.engine.runner import (Item, JobRunner, ModelPass, ModelSpec, RunRef, SerialExecutor,
                                       Work, run_batch)
from tfovss_core.spec.records import settings_key
from support.trunk import record_trunk_batches

CLASSES = ["cat", ["dog", "puppy"], "car"]
COMMON = dict(short_side=64, crop=32, stride=16, pamr_steps=0, batch_size=2)


class MemorySink:
    """Records every call; ``held`` maps a run key to the ids stored under it (resume state)."""

    def __init__(self, held=None):
        self.held = {k: set(v) for k, v in (held or {}).items()}
        self.writes, self.failures, self.closed = [], [], 0
        self.done_calls = []

    def done(self, run):
        self.done_calls.append(run)
        return self.held.get(run.key, set())

    def write(self, outcome):
        assert not self.closed, "write after close"
        self.writes.append((outcome.item.id, {k: v.mask.copy() for k, v in outcome.results.items()},
                            {k: v.probs.copy() for k, v in outcome.results.items()}))
        for label in outcome.results:
            self.held.setdefault(KEYS[label], set()).add(outcome.item.id)

    def failure(self, item, error, labels):
        self.failures.append((item.id, str(error), tuple(labels)))

    def close(self):
        self.closed += 1


KEYS = {"sclip": settings_key({"method": "sclip", **COMMON}),
        "clearclip": settings_key({"method": "clearclip", **COMMON})}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    model = tiny_clip(seed=1, layers=4, text_cache_dir=tmp_path_factory.mktemp("text"))
    model.trunk_calls = record_trunk_batches(model.visual)
    return model


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(5)
    paths = []
    for i, (h, w) in enumerate([(70, 90), (64, 64), (80, 50)]):
        p = folder / f"im{i}.png"
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(p)
        paths.append(p)
    return paths


def _segs(model, methods=("sclip", "clearclip")):
    # the same windows for both methods: they share one frozen-trunk pass per batch of windows
    return {m: tc.Segmenter(model, method=m, classes=CLASSES, **COMMON) for m in methods}


def _items(paths):
    return [Item(p.stem, str(p)) for p in paths]


def _runs(labels=("sclip", "clearclip")):
    return [RunRef(lb, KEYS[lb]) for lb in labels]


def test_shared_trunk_through_the_runner_equals_each_method_alone(tiny, images):
    segs = _segs(tiny)
    tiny.trunk_calls.clear()
    alone = {m: [s.predict(str(p)) for p in images] for m, s in segs.items()}
    calls_alone = len(tiny.trunk_calls)
    tiny.trunk_calls.clear()
    sink = MemorySink()
    model = ModelPass(ModelSpec(segs))
    stats = JobRunner(model, _runs(), sink).run(_items(images))
    assert len(tiny.trunk_calls) == calls_alone // 2 == model.trunk_runs  # one pass for both
    assert [w[0] for w in sink.writes] == ["im0", "im1", "im2"]
    for i, (_, masks, probs) in enumerate(sink.writes):
        for m in segs:
            assert np.array_equal(masks[m], alone[m][i].mask), (m, i)
            assert np.array_equal(probs[m], alone[m][i].probs), (m, i)  # bit for bit
    assert stats.computed == {"sclip": 3, "clearclip": 3} and stats.failed == {"sclip": 0, "clearclip": 0}
    assert sink.closed == 1


def test_resume_skips_what_the_sink_holds_and_computes_only_missing_runs(tiny, images):
    segs = _segs(tiny)
    ref = {m: [s.predict(str(p)).mask for p in images] for m, s in segs.items()}
    # sclip already holds im0 and im1, clearclip holds im0: im0 is skipped, im1 needs clearclip
    # only, im2 needs both
    sink = MemorySink({KEYS["sclip"]: {"im0", "im1"}, KEYS["clearclip"]: {"im0"}})
    seen = []
    tiny.trunk_calls.clear()
    stats = JobRunner(ModelSpec(segs), _runs(), sink,
                      progress=lambda done, todo: seen.append((done, todo))).run(_items(images))
    assert [(w[0], sorted(w[1])) for w in sink.writes] == [("im1", ["clearclip"]),
                                                           ("im2", ["clearclip", "sclip"])]
    assert np.array_equal(sink.writes[0][1]["clearclip"], ref["clearclip"][1])
    assert np.array_equal(sink.writes[1][1]["sclip"], ref["sclip"][2])
    assert stats.skipped == {"sclip": 2, "clearclip": 1}
    assert stats.computed == {"sclip": 1, "clearclip": 2}
    assert (stats.total, stats.todo, stats.processed) == (3, 2, 2)
    assert seen == [(1, 2), (2, 2)]
    assert {r.key for r in sink.done_calls} == {KEYS["sclip"], KEYS["clearclip"]}

    # everything held now: a rerun computes nothing (no trunk pass at all)
    tiny.trunk_calls.clear()
    again = MemorySink(sink.held)
    stats = JobRunner(ModelSpec(segs), _runs(), again).run(_items(images))
    assert again.writes == [] and tiny.trunk_calls == [] and stats.processed == 0
    assert stats.skipped == {"sclip": 3, "clearclip": 3} and again.closed == 1
    # another run key (other settings) is another run: computed again
    other = [RunRef("sclip", settings_key({"method": "sclip", **COMMON, "prob_thd": 0.5}))]
    stats = JobRunner(ModelSpec(segs), other, MemorySink(sink.held)).run(_items(images))
    assert stats.computed == {"sclip": 3}


def test_a_bad_item_fails_once_for_its_runs_and_the_job_goes_on(tiny, images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    items = _items(images[:1]) + [Item("broken", str(bad))] + _items(images[1:2])
    sink = MemorySink()
    stats = JobRunner(ModelSpec(_segs(tiny)), _runs(), sink).run(items)
    assert [w[0] for w in sink.writes] == ["im0", "im1"]
    assert len(sink.failures) == 1  # one failure for the item, naming both runs
    sid, message, labels = sink.failures[0]
    assert sid == "broken" and labels == ("sclip", "clearclip")
    assert message.startswith(f"{bad}: cannot decode")
    assert stats.failed == {"sclip": 1, "clearclip": 1} and stats.computed == {"sclip": 2, "clearclip": 2}


def test_an_error_of_one_method_is_charged_to_that_method_only(tiny, images):
    class RefusesIm1(tc.Segmenter):
        def finish(self, logits, x, name=""):
            if "im1" in name:
                raise tc.InputError(f"{name}: refused")
            return super().finish(logits, x, name)

    segs = {"sclip": tc.Segmenter(tiny, method="sclip", classes=CLASSES, **COMMON),
            "clearclip": RefusesIm1(tiny, method="clearclip", classes=CLASSES, **COMMON)}
    ref = tc.Segmenter(tiny, method="sclip", classes=CLASSES, **COMMON).predict(str(images[1])).mask
    sink = MemorySink()
    stats = JobRunner(ModelSpec(segs), _runs(), sink).run(_items(images[:2]))
    assert [(f[0], f[2]) for f in sink.failures] == [("im1", ("clearclip",))]
    assert "refused" in sink.failures[0][1]
    assert np.array_equal(dict((w[0], w[1]) for w in sink.writes)["im1"]["sclip"], ref)
    assert stats.computed == {"sclip": 2, "clearclip": 1}


def test_an_unexpected_error_aborts_the_job_and_still_closes_the_sink(tiny, images):
    class Broken:
        def predict(self, source):
            raise RuntimeError("a bug, not a bad image")

    sink = MemorySink()
    with pytest.raises(RuntimeError, match="a bug"):
        JobRunner({"x": Broken()}, [RunRef("x", "k")], sink).run(_items(images))
    assert sink.closed == 1 and sink.writes == [] and sink.failures == []


def test_run_contract_errors_are_clear():
    with pytest.raises(tc.ConfigError, match="no predictor"):
        JobRunner({"a": object()}, [RunRef("b", "k")], MemorySink())
    with pytest.raises(tc.ConfigError, match="not unique"):
        JobRunner({"a": object()}, [RunRef("a", "k"), RunRef("a", "j")], MemorySink())
    runner = JobRunner({"a": object()}, [RunRef("a", "k")], MemorySink())
    with pytest.raises(tc.ConfigError, match="'x' is given twice"):
        runner.run([Item("x", 1), Item("x", 2)])


def test_run_batch_is_the_serial_executor_without_threads(tiny, images):
    """The per-batch function a distributed executor ships gives the serial executor's results."""
    segs = _segs(tiny)
    works = [Work(it, ("sclip", "clearclip")) for it in _items(images)]
    batch = run_batch(ModelSpec(build=lambda: segs), works)
    threaded = list(SerialExecutor(decode_workers=2).map(ModelPass(ModelSpec(segs)), works))
    assert [o.item.id for o in batch] == [o.item.id for o in threaded] == ["im0", "im1", "im2"]
    for a, b in zip(batch, threaded):
        for m in segs:
            assert np.array_equal(a.results[m].probs, b.results[m].probs)
        assert a.image is not None and np.array_equal(a.image, b.image)
        assert a.groups == b.groups == [["sclip", "clearclip"]]
