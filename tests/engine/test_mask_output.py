"""The pre-label output through the job runner and the shared trunk: ``ModelPass(output="mask")``
and ``MultiSegmenter.predict(output="mask")`` give, per method, the mask of the protocol path
(``output="probs"``) exactly and its confidence within 1e-6, on the shared VOC and COCO samples
with the tiny random CLIP."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tfovss_core.clip.synthetic import tiny_clip
from tfovss_core.engine.multi import MultiSegmenter
from tfovss_core.engine.runner import Item, JobRunner, ModelPass, RunRef
from tfovss_core.engine.segmenter import MaskResult, SegmentationResult, Segmenter
from tfovss_core.errors import ConfigError
from support.paths import DATA

SAMPLES = [
    DATA / "voc2012/VOCdevkit/VOC2012/JPEGImages/2007_000033.jpg",
    DATA / "coco2017/train2017/000000000009.jpg",
]
# the output path does not depend on the templates; one keeps the text encoding cheap. A small
# short side keeps the test quick; the thresholds make both the area and the probability rule act
COMMON = dict(templates=["a photo of a {}."], short_side=112, crop=64, stride=32, batch_size=4)


class CollectingSink:
    """Keeps every result by item id and label."""

    def __init__(self):
        self.results: dict[str, dict] = {}
        self.closed = 0

    def done(self, run):
        return set()

    def write(self, outcome):
        self.results[outcome.item.id] = dict(outcome.results)

    def failure(self, item, error, labels):
        raise AssertionError(f"{item.id} failed: {error}")

    def close(self):
        self.closed += 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_clip(seed=2, layers=3, text_cache_dir=tmp_path_factory.mktemp("text"))


def _run(predictors, output):
    sink = CollectingSink()
    runs = [RunRef(label, f"key-{label}") for label in predictors]
    items = [Item(p.stem, str(p)) for p in SAMPLES]
    stats = JobRunner(ModelPass(predictors, output=output), runs, sink).run(items)
    assert stats.computed == {label: len(SAMPLES) for label in predictors}
    assert sink.closed == 1
    return sink.results


def _assert_same(mask_results, prob_results):
    assert set(mask_results) == {p.stem for p in SAMPLES}
    for item_id, by_label in prob_results.items():
        for label, probs in by_label.items():
            got = mask_results[item_id][label]
            assert isinstance(probs, SegmentationResult) and isinstance(got, MaskResult)
            np.testing.assert_array_equal(got.mask, probs.mask, err_msg=f"{item_id} {label}")
            assert got.mask.dtype == probs.mask.dtype == np.uint8
            np.testing.assert_allclose(got.confidence, probs.confidence, rtol=0, atol=1e-6)
            assert got.class_names == probs.class_names


def test_runner_mask_output_equals_probs_output_for_one_method(tiny):
    seg = Segmenter(tiny, "sclip", "voc21", prob_thd=0.05, area_thd=0.02, **COMMON)
    probs = _run({"sclip": seg}, "probs")
    masks = _run({"sclip": seg}, "mask")
    _assert_same(masks, probs)
    # the thresholds acted on these images (otherwise the check above would be weaker than it reads)
    assert any((r["sclip"].mask == 0).any() for r in probs.values())
    assert any(len(np.unique(r["sclip"].mask)) > 1 for r in probs.values())


def test_runner_mask_output_equals_probs_output_on_a_shared_trunk(tiny):
    segs = {name: Segmenter(tiny, name, "voc21", prob_thd=0.05, area_thd=0.02, **COMMON)
            for name in ("sclip", "clearclip", "naclip")}
    model = ModelPass(segs, output="mask")
    multi = model.multi(list(segs))
    multi.predict(SAMPLES[0], output="mask")
    assert multi.last_groups == [list(segs)]             # one frozen trunk for the three methods
    probs = _run(segs, "probs")
    masks = _run(segs, "mask")
    _assert_same(masks, probs)
    # methods really differ on these images, so sharing could not hide a mix-up between them
    first = masks[SAMPLES[0].stem]
    assert not np.array_equal(first["sclip"].confidence, first["naclip"].confidence)


def test_multisegmenter_mask_output_is_each_methods_predict_mask_alone(tiny):
    segs = [(name, Segmenter(tiny, name, "voc21", prob_thd=0.05, **COMMON)) for name in ("sclip", "clearclip")]
    multi = MultiSegmenter(tiny, segs)
    shared = multi.predict(SAMPLES[1], output="mask")
    assert multi.last_groups == [["sclip", "clearclip"]]
    for label, seg in segs:
        alone = seg.predict_mask(SAMPLES[1])
        np.testing.assert_array_equal(shared[label].mask, alone.mask)
        np.testing.assert_array_equal(shared[label].confidence, alone.confidence)   # bit-exact


def test_both_results_expose_what_a_sink_stores(tiny):
    seg = Segmenter(tiny, "sclip", ["cat", "dog"], **COMMON)
    for result in (seg.predict(SAMPLES[0]), seg.predict(SAMPLES[0], output="mask")):
        assert result.mask.shape == result.confidence.shape == (366, 500)   # the VOC sample is 500x366
        assert result.class_names == ["cat", "dog"]


def test_unknown_output_is_refused(tiny):
    seg = Segmenter(tiny, "sclip", ["cat", "dog"], **COMMON)
    with pytest.raises(ConfigError, match="output='maps'"):
        ModelPass({"sclip": seg}, output="maps")
    with pytest.raises(ConfigError, match="output='maps'"):
        MultiSegmenter(tiny, [seg]).predict(SAMPLES[0], output="maps")


def test_whole_vocabulary_and_chunked_pre_label_paths_give_the_same_mask(tiny):
    """Small maps take one upsampling of every query (kept for the second pass); large ones go
    class chunk by class chunk. Both are the protocol's mask, and the same confidence."""
    seg = Segmenter(tiny, "sclip", "voc21", prob_thd=0.05, area_thd=0.02, **COMMON)
    protocol = seg.predict(SAMPLES[1])
    whole = seg.predict_mask(SAMPLES[1])
    seg.whole_vocabulary_bytes = 0      # always class chunks
    chunked = seg.predict_mask(SAMPLES[1])
    assert whole.stats["passes"] == 2 and chunked.stats["passes"] == 2    # the area rule dropped classes
    assert whole.stats["blocks"] > 0 and "blocks" not in chunked.stats   # each took its own path
    np.testing.assert_array_equal(whole.mask, protocol.mask)
    np.testing.assert_array_equal(chunked.mask, protocol.mask)
    np.testing.assert_allclose(whole.confidence, protocol.confidence, rtol=0, atol=1e-6)
    np.testing.assert_allclose(chunked.confidence, protocol.confidence, rtol=0, atol=1e-6)
    # over the byte limit, but 16 classes' chunk maps (background alone has dozens of queries) would
    # take more than one map of all 56 queries: the whole vocabulary at once, the smaller peak
    seg.whole_vocabulary_bytes = 1
    again = seg.predict_mask(SAMPLES[1])
    assert "blocks" in again.stats and np.array_equal(again.mask, protocol.mask)


def test_masks_of_more_than_256_classes_are_uint16_and_the_protocols(tiny):
    """The mask is narrowed where it was computed: uint8 up to 256 classes, else uint16 (values
    above 255 kept), the protocol's own values either way."""
    classes = [f"thing {i}" for i in range(300)]
    seg = Segmenter(tiny, "sclip", classes, **{**COMMON, "short_side": 48, "crop": 48, "stride": 48})
    lean, protocol = seg.predict_mask(SAMPLES[0]), seg.predict(SAMPLES[0])
    assert lean.mask.dtype == np.uint16 and protocol.mask.dtype == np.int32
    np.testing.assert_array_equal(lean.mask, protocol.mask)
    assert lean.mask.max() > 255


def test_large_images_take_smaller_class_chunks_with_the_same_mask(tiny):
    """The chunked path keeps a chunk's maps under ``chunk_bytes`` by taking fewer classes per
    chunk (down to one), and still gives the protocol's mask."""
    seg = Segmenter(tiny, "sclip", "voc21", prob_thd=0.05, area_thd=0.02, **COMMON)
    protocol = seg.predict(SAMPLES[1])
    seg.whole_vocabulary_bytes = 0
    default = seg.predict_mask(SAMPLES[1])
    h, w = protocol.mask.shape
    # room for 8 queries' maps: less than background's own queries, so the chunks shrink to one class
    seg.chunk_bytes = 8 * h * w * 16
    small = seg.predict_mask(SAMPLES[1])
    assert default.stats["chunks"] == 2 and small.stats["chunks"] == 21
    np.testing.assert_array_equal(default.mask, protocol.mask)
    np.testing.assert_array_equal(small.mask, protocol.mask)
    np.testing.assert_allclose(small.confidence, protocol.confidence, rtol=0, atol=1e-6)
