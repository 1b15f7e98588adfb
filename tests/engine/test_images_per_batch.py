"""Windows batched across images (``images_per_batch``) give each image's own results, bit for bit.

At the protocol's window size (224, 196 patches), where the CPU kernels compute each window
independently of its batch neighbours; far smaller windows can take other matmul kernels and
round differently (as the ``batch_size`` setting can), which ``windows_of_images`` documents.

* ``Segmenter.windows_of_images``: every method's window logits equal its per-image ``windows``;
* ``MultiSegmenter.predict_many``: probabilities and masks equal ``predict`` of each image, for
  images of several shapes (each shape batched on its own) and for methods of two protocols;
* fewer forward passes than one image at a time;
* the job runner with ``images_per_batch``: the same outcomes as one at a time, a corrupt image
  failing alone, a resumed job's items needing different runs.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tfovss_core as tc
from tfovss_core.clip.synthetic import tiny_clip
from tfovss_core.engine.multi import MultiSegmenter
from tfovss_core.engine.runner import Item, JobRunner, ModelPass, RunRef, SerialExecutor
from tfovss_core.errors import ConfigError
from tfovss_core.methods import list_methods

CLASSES = ["cat", ["dog", "puppy"], "car"]
COMMON = dict(short_side=224, crop=224, stride=112)   # two 224 windows per photo
PROXY = dict(vfm="dino_vits8", vfm_weights="random:5")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_clip(seed=1, text_cache_dir=tmp_path_factory.mktemp("text"))


def photo(seed: int, h: int = 240, w: int = 320) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def method_settings(name: str) -> dict:
    return {**COMMON, **(PROXY if name == "proxyclip" else {})}


@pytest.mark.parametrize("name", list_methods())
def test_windows_of_images_equal_each_images_windows(tiny, name):
    seg = tc.Segmenter(tiny, name, CLASSES, batch_size=4, **method_settings(name))
    xs = [seg.prepare(photo(s))[1] for s in (1, 2, 3)]
    together: list[list] = [[] for _ in xs]
    batches = list(seg.windows_of_images(xs))
    for per_image in batches:
        for i, out in per_image:
            together[i].append(out)
    n_windows = sum(len(o.boxes) for o in together[0])
    assert len(batches) == -(-3 * n_windows // 4), "the windows of all images, 4 per forward pass"
    for x, outs in zip(xs, together):
        alone = list(seg.windows(x))
        assert [b for o in outs for b in o.boxes] == [b for o in alone for b in o.boxes]
        assert torch.equal(torch.cat([o.logits for o in outs]), torch.cat([o.logits for o in alone])), name
        assert torch.equal(seg.input_logits(x, outs), seg.input_logits(x)), name


def test_windows_of_images_refuse_inputs_of_different_shapes(tiny):
    seg = tc.Segmenter(tiny, "sclip", CLASSES, **COMMON)
    xs = [seg.prepare(photo(1))[1], seg.prepare(photo(2, 320, 240))[1]]
    with pytest.raises(ConfigError, match="one shape"):
        next(seg.windows_of_images(xs))


@pytest.mark.parametrize("output", ["probs", "mask"])
def test_predict_many_equals_predict_per_image(tiny, output):
    # two protocols (two trunk groups), methods sharing a trunk, images of two shapes
    multi = MultiSegmenter(tiny, ["sclip", "naclip", ("wide", "clearclip", {"crop": 160, "stride": 80})],
                           classes=CLASSES, batch_size=5, **COMMON)
    images = [photo(1), photo(2, 320, 240), photo(3), photo(4, 320, 240), photo(5)]
    many = multi.predict_many(images, output=output)
    groups = multi.image_groups
    assert len(groups) == len(images)
    for image, results, image_groups in zip(images, many, groups):
        alone = multi.predict(image, output=output)
        assert image_groups == multi.last_groups == [["sclip", "naclip"], ["wide"]]
        assert list(results) == list(alone) == ["sclip", "naclip", "wide"]
        for label in alone:
            assert np.array_equal(results[label].mask, alone[label].mask), label
            if output == "probs":
                assert np.array_equal(results[label].probs, alone[label].probs), label
            else:
                assert np.array_equal(results[label].confidence, alone[label].confidence), label


def test_predict_many_runs_fewer_forward_passes(tiny):
    multi = MultiSegmenter(tiny, ["sclip"], classes=CLASSES, batch_size=16, **COMMON)
    images = [photo(s) for s in range(4)]
    x = multi.segmenters["sclip"].prepare(images[0])[1]
    per_image = len(list(multi.segmenters["sclip"].windows(x)))
    windows = sum(len(o.boxes) for o in multi.segmenters["sclip"].windows(x))
    before = multi.trunk_runs
    multi.predict_many(images)
    assert multi.trunk_runs - before == -(-4 * windows // 16) < 4 * per_image


def _runner_outcomes(tiny, tmp_path, images_per_batch: int, done: dict | None = None):
    seg = tc.Segmenter(tiny, "sclip", CLASSES, **COMMON)
    other = tc.Segmenter(tiny, "naclip", CLASSES, **COMMON)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    items = [Item(f"i{n}", photo(n, 240, 320 if n % 2 else 300)) for n in range(5)]
    items.insert(2, Item("bad", str(bad)))
    done = done or {}

    class Keep:
        def __init__(self):
            self.results, self.failures = {}, {}

        def done(self, run):
            return done.get(run.label, set())

        def write(self, outcome):
            for label, res in outcome.results.items():
                self.results[(outcome.item.id, label)] = res.mask

        def failure(self, item, error, labels):
            self.failures[item.id] = (type(error).__name__, sorted(labels))

        def close(self):
            pass

    sink = Keep()
    runner = JobRunner(ModelPass({"sclip": seg, "naclip": other}, output="mask", images_per_batch=images_per_batch),
                       [RunRef("sclip", "a"), RunRef("naclip", "b")], sink,
                       executor=SerialExecutor(decode_workers=1))
    stats = runner.run(items)
    return sink, stats


def test_runner_batches_images_with_the_same_outcomes(tiny, tmp_path):
    one, stats_one = _runner_outcomes(tiny, tmp_path, 1)
    three, stats_three = _runner_outcomes(tiny, tmp_path, 3)
    assert one.failures == three.failures == {"bad": ("InputError", ["naclip", "sclip"])}
    assert sorted(one.results) == sorted(three.results) and len(one.results) == 10
    for key, mask in one.results.items():
        assert np.array_equal(mask, three.results[key]), key
    assert stats_one.computed == stats_three.computed == {"sclip": 5, "naclip": 5}


def test_runner_batches_a_resumed_job(tiny, tmp_path):
    # items needing other runs share a pass only with items needing the same: each gets exactly its runs
    done = {"sclip": {"i0", "i3"}}
    sink, stats = _runner_outcomes(tiny, tmp_path, 4, done)
    ref, _ = _runner_outcomes(tiny, tmp_path, 1)
    assert stats.computed == {"sclip": 3, "naclip": 5} and stats.skipped == {"sclip": 2, "naclip": 0}
    assert ("i0", "sclip") not in sink.results and ("i0", "naclip") in sink.results
    for key, mask in sink.results.items():
        assert np.array_equal(mask, ref.results[key]), key


def test_images_per_batch_must_be_positive(tiny):
    with pytest.raises(ConfigError, match="images_per_batch"):
        ModelPass({"sclip": tc.Segmenter(tiny, "sclip", CLASSES, **COMMON)}, images_per_batch=0)
