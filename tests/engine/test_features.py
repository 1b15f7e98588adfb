"""Dense features: encode once, segment any vocabulary, equal to predict; the feature cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tfovss_core as tc
from tfovss_core.clip.synthetic import tiny_clip
from tfovss_core.engine.features import FeatureCache
from tfovss_core.engine.runner import ModelPass
from tfovss_core.io.images import load_image
from tfovss_core.methods import list_methods, method_card
from support.images import random_image
from support.paths import DATA, GOLDEN, golden_model

VOCAB_A = ["background", ["cat", "kitten"], "dog", "sky"]
VOCAB_B = ["wall", "person, man, woman", ["grass", "lawn", "field"]]
# small windows so that every tiny-model image has several overlapping windows in several batches
TINY = dict(short_side=112, crop=64, stride=32, batch_size=3, pamr_steps=2, prob_thd=0.05, area_thd=0.02)
# options that make a method runnable without downloads
OPTIONS = {"proxyclip": dict(vfm_weights="random:0")}


def _text_independent_methods() -> list[str]:
    return [m for m in list_methods() if method_card(m).text_independent]


@pytest.fixture(scope="module")
def image():
    return random_image(3, 90, 130)


class TrunkCounter:
    """Counts the model's trunk runs (the windows through the frozen blocks)."""

    def __init__(self, monkeypatch, model):
        self.calls = 0
        original = model.visual.run_trunk

        def counted(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(model.visual, "run_trunk", counted)


def assert_same(result, expected):
    assert result.class_names == expected.class_names
    assert result.probs.shape == expected.probs.shape
    np.testing.assert_allclose(result.probs, expected.probs, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(result.mask, expected.mask)


def test_every_method_declares_text_independence_and_the_expected_ones_do():
    independent = set(_text_independent_methods())
    assert {"clip", "maskclip", "sclip", "clearclip", "naclip", "scclip", "proxyclip"} <= independent
    assert "resclip" not in independent


@pytest.mark.parametrize("method", _text_independent_methods())
def test_segment_of_encoded_features_equals_predict_for_two_vocabularies(tiny, image, method):
    seg = tc.Segmenter(tiny, method, VOCAB_A, **TINY, **OPTIONS.get(method, {}))
    features = seg.encode(image)
    assert features.text_independent and len(features.batches) > 1
    assert features.resized_size == (112, 162) and features.image_size == (90, 130)
    for vocab in (VOCAB_A, VOCAB_B):
        result = seg.segment(features, vocab)
        assert result.from_features
        assert_same(result, seg.with_classes(vocab).predict(image))
    # the vocabulary of the Segmenter itself
    assert_same(seg.segment(features), seg.predict(image))


def test_composed_addon_follows_its_host(tiny, image):
    independent = tc.Segmenter(tiny, "resclip+lht", VOCAB_A, **TINY)       # LHT runs ResCLIP without SFR
    assert independent.text_independent
    features = independent.encode(image)
    assert_same(independent.segment(features, VOCAB_B), independent.with_classes(VOCAB_B).predict(image))
    assert not tc.Segmenter(tiny, "resclip+lht", VOCAB_A, use_sfr=True, **TINY).text_independent


def test_a_text_dependent_method_falls_back_to_predict_and_says_so(tiny, image, monkeypatch):
    seg = tc.Segmenter(tiny, "resclip", VOCAB_A, **TINY)
    assert seg.method.options.use_sfr and not seg.text_independent
    counter = TrunkCounter(monkeypatch, tiny)
    features = seg.encode(image)
    assert not features.text_independent and features.batches == []
    assert counter.calls == 0          # nothing to encode: the image side needs the vocabulary
    result = seg.segment(features, VOCAB_B)
    assert result.from_features is False and counter.calls > 0
    assert_same(result, seg.with_classes(VOCAB_B).predict(image))
    # without SFR its features ignore the text
    assert tc.Segmenter(tiny, "resclip", VOCAB_A, use_sfr=False, **TINY).text_independent


@pytest.mark.slow
def test_golden_weights_on_the_golden_image_and_a_shared_sample(shared_dir):
    model = golden_model("ViT-B/16")
    golden = dict(np.load(GOLDEN / "sclip" / "voc21_chelsea.npz"))["image"]
    sample = load_image(DATA / "voc2012" / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2007_000033.jpg")
    seg = tc.Segmenter(model, "sclip", "voc21", short_side=224, pamr_steps=10)
    other = ["background", "cat, kitten", ["sofa", "couch"], "floor", "plane"]
    for picture in (golden, sample):
        features = seg.encode(picture)
        assert_same(seg.segment(features), seg.predict(picture))
        assert_same(seg.segment(features, other), seg.with_classes(other).predict(picture))


def test_features_of_other_settings_are_refused(tiny, image):
    features = tc.Segmenter(tiny, "sclip", VOCAB_A, **TINY).encode(image)
    other = tc.Segmenter(tiny, "sclip", VOCAB_A, **{**TINY, "stride": 48})
    with pytest.raises(tc.ConfigError, match="other weights, method, options or image-side settings"):
        other.segment(features)


def test_cache_serves_a_new_vocabulary_without_the_trunk(tiny, image, monkeypatch):
    cache = FeatureCache(max_bytes=64 << 20)
    seg = tc.Segmenter(tiny, "clearclip", VOCAB_A, feature_cache=cache, **TINY)
    expected = {i: seg.with_classes(v).predict_uncached(image) for i, v in enumerate((VOCAB_A, VOCAB_B))}
    counter = TrunkCounter(monkeypatch, tiny)
    assert_same(seg.predict(image), expected[0])
    first = counter.calls
    assert first > 0 and len(cache) == 1
    assert_same(seg.with_classes(VOCAB_B).predict(image), expected[1])
    assert counter.calls == first and cache.hits == 1
    # so does the job runner's model pass (each predictor through its cache, not the shared trunk)
    model_pass = ModelPass({"a": seg, "b": seg.with_classes(VOCAB_B)})
    assert model_pass.multi(["a", "b"]) is None
    assert_same(model_pass.predictors["b"].predict(image), expected[1])
    assert counter.calls == first


def assert_same_mask(result, expected):
    assert result.class_names == expected.class_names
    np.testing.assert_array_equal(result.mask, expected.mask)
    np.testing.assert_allclose(result.confidence, expected.confidence, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["sclip", "clearclip", "naclip"])
def test_mask_output_of_encoded_features_equals_predict_mask(tiny, image, method):
    seg = tc.Segmenter(tiny, method, VOCAB_A, **TINY)
    features = seg.encode(image)
    for vocab in (VOCAB_A, VOCAB_B):
        result = seg.segment(features, vocab, output="mask")
        assert result.from_features and not hasattr(result, "probs")
        expected = seg.with_classes(vocab).predict_mask(image)
        assert_same_mask(result, expected)
        # and the protocol path's mask: the two outputs decide every pixel alike
        np.testing.assert_array_equal(result.mask, seg.with_classes(vocab).predict(image).mask)
    with pytest.raises(tc.ConfigError, match="output='maps'"):
        seg.segment(features, output="maps")


def test_a_text_dependent_method_falls_back_to_the_mask_path(tiny, image):
    seg = tc.Segmenter(tiny, "resclip", VOCAB_A, **TINY)
    result = seg.segment(seg.encode(image), VOCAB_B, output="mask")
    assert result.from_features is False
    assert_same_mask(result, seg.with_classes(VOCAB_B).predict_mask(image))


def test_the_pre_label_path_with_a_cache_runs_no_trunk_for_a_cached_image(tiny, image, monkeypatch):
    """The pre-label (``output="mask"``) with a feature cache: a second vocabulary on the same image
    is served from the cache, as for the protocol path."""
    seg = tc.Segmenter(tiny, "sclip", VOCAB_A, feature_cache=FeatureCache(max_bytes=64 << 20), **TINY)
    expected = seg.with_classes(VOCAB_B).predict_uncached(image, output="mask")
    counter = TrunkCounter(monkeypatch, tiny)
    seg.predict(image, output="mask")
    first = counter.calls
    assert first > 0
    assert_same_mask(seg.with_classes(VOCAB_B).predict(image, output="mask"), expected)
    assert counter.calls == first


def test_cache_invalidates_on_weights_method_options_and_image_side_settings(tiny, image, monkeypatch):
    cache = FeatureCache(max_bytes=256 << 20)
    counter = TrunkCounter(monkeypatch, tiny)

    def runs(seg) -> int:
        before = counter.calls
        seg.encode(image)
        return counter.calls - before

    base = tc.Segmenter(tiny, "sclip", VOCAB_A, feature_cache=cache, **TINY)
    assert runs(base) > 0 and runs(base) == 0
    # post-processing settings act after the text product: same features
    assert runs(tc.Segmenter(tiny, "sclip", VOCAB_B, feature_cache=cache, **{**TINY, "prob_thd": 0.3,
                                                                               "pamr_steps": 0})) == 0
    assert runs(tc.Segmenter(tiny, "clearclip", VOCAB_A, feature_cache=cache, **TINY)) > 0           # method
    assert runs(tc.Segmenter(tiny, "sclip", VOCAB_A, feature_cache=cache, residual_ffn=False, **TINY)) > 0  # option
    assert runs(tc.Segmenter(tiny, "sclip", VOCAB_A, feature_cache=cache, **{**TINY, "crop": 48})) > 0   # setting
    # other weights: a second model, same architecture, other values
    other = tiny_clip(seed=1)
    other_counter = TrunkCounter(monkeypatch, other)
    tc.Segmenter(other, "sclip", VOCAB_A, feature_cache=cache, **TINY).encode(image)
    assert other.weights_digest != tiny.weights_digest and other_counter.calls > 0
    # a changed image is a different key
    changed = image.copy()
    changed[0, 0, 0] ^= 1
    before = counter.calls
    base.encode(changed)
    assert counter.calls > before


def test_memory_cache_honours_its_byte_cap_least_recently_used_first(tiny):
    seg = tc.Segmenter(tiny, "sclip", VOCAB_A, **TINY)
    rng = np.random.default_rng(0)
    feats = [seg.encode(rng.integers(0, 256, size=(90, 130, 3), dtype=np.uint8)) for _ in range(4)]
    size = feats[0].nbytes
    assert size == sum(b.features.nelement() * 4 for b in feats[0].batches) + 112 * 162 * 3
    cache = FeatureCache(max_bytes=int(2.5 * size))
    cache.put(feats[0])
    cache.put(feats[1])
    assert cache.get(feats[0].key) is feats[0]        # 0 is now the most recently used
    cache.put(feats[2])
    assert len(cache) == 2 and cache.nbytes <= cache.max_bytes
    assert feats[1].key not in cache and feats[0].key in cache and feats[2].key in cache
    small = FeatureCache(max_bytes=size - 1)
    small.put(feats[3])
    assert len(small) == 0 and small.nbytes == 0      # larger than the whole cache: not kept


def test_disk_cache_float16_reused_by_a_new_process_and_capped(tiny, image, tmp_path, monkeypatch):
    seg = tc.Segmenter(tiny, "naclip", VOCAB_A, feature_cache=FeatureCache(directory=tmp_path), **TINY)
    features = seg.encode(image)
    expected = seg.with_classes(VOCAB_B).predict_uncached(image)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    # float16 on disk: half the float32 features, plus the resized image and a little metadata
    feature_bytes = sum(b.nbytes for b in features.batches)
    assert files[0].stat().st_size < feature_bytes // 2 + features.resized.nbytes + 4096
    counter = TrunkCounter(monkeypatch, tiny)
    fresh = tc.Segmenter(tiny, "naclip", VOCAB_B, feature_cache=FeatureCache(directory=tmp_path), **TINY)
    result = fresh.predict(image)
    assert counter.calls == 0 and fresh.feature_cache.disk_hits == 1
    # float16-rounded features: probabilities within float16 precision of the exact ones
    np.testing.assert_allclose(result.probs, expected.probs, atol=2e-2, rtol=0)
    assert (result.mask == expected.mask).mean() > 0.97
    # the cap: a second image's file pushes the oldest out
    capped = FeatureCache(directory=tmp_path, disk_max_bytes=int(1.5 * files[0].stat().st_size))
    tc.Segmenter(tiny, "naclip", VOCAB_A, feature_cache=capped, **TINY).encode(image[::-1].copy())
    assert len(list(tmp_path.glob("*.npz"))) == 1 and capped.disk_bytes <= capped.disk_max_bytes


def test_features_move_between_devices_unchanged(tiny, image):
    seg = tc.Segmenter(tiny, "sclip", VOCAB_A, **TINY)
    features = seg.encode(image)
    moved = features.to("cpu")
    assert all(torch.equal(a.features, b.features) for a, b in zip(features.batches, moved.batches))
    assert_same(seg.segment(moved), seg.segment(features))
