"""The segmenter: sliding windows, batched == single window for every method, synonyms and
thresholds, presets, and clear errors for bad arrays, files and settings."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import tfovss_core as tc


def test_sliding_windows_cover_and_stay_inside():
    boxes = tc.sliding_windows(336, 448, 224, 112)
    assert len(boxes) == 2 * 3
    cover = np.zeros((336, 448), int)
    for y1, y2, x1, x2 in boxes:
        assert (y2 - y1, x2 - x1) == (224, 224) and y2 <= 336 and x2 <= 448
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1
    assert boxes[-1] == (112, 336, 224, 448)                   # the last window is flush with the border
    assert tc.sliding_windows(100, 150, 224, 112) == [(0, 100, 0, 150)]  # smaller image: one shrunken window
    assert tc.sliding_windows(500, 700, 0, 0) == [(0, 500, 0, 700)]


@pytest.mark.parametrize("method", tc.list_methods(include_composed=True))
def test_every_method_batched_equals_single_and_is_deterministic(tiny, image, method):
    kw = dict(short_side=64, crop=32, stride=16)
    if method == "proxyclip":  # its VFM's weights are never downloaded: random ones here
        kw["vfm_weights"] = "random"
    one = tc.Segmenter(tiny, method, ["cat", ["dog", "puppy"], "grass"], batch_size=1, **kw).predict(image)
    many = tc.Segmenter(tiny, method, ["cat", ["dog", "puppy"], "grass"], batch_size=64, **kw).predict(image)
    again = tc.Segmenter(tiny, method, ["cat", ["dog", "puppy"], "grass"], batch_size=64, **kw).predict(image)
    assert one.probs.shape == (3, 100, 140) and one.mask.shape == (100, 140)
    np.testing.assert_allclose(many.probs, one.probs, atol=2e-6, rtol=0)
    np.testing.assert_array_equal(many.probs, again.probs)
    assert np.isfinite(one.probs).all() and (one.probs >= 0).all()


def test_synonyms_take_the_max_and_thresholds_apply(tiny, image):
    base = tc.Segmenter(tiny, "sclip", ["cat", "dog", "puppy"], short_side=64, crop=0).predict(image)
    merged = tc.Segmenter(tiny, "sclip", ["cat", ["dog", "puppy"]], short_side=64, crop=0).predict(image)
    np.testing.assert_allclose(merged.probs[1], np.maximum(base.probs[1], base.probs[2]), atol=1e-6)
    strict = tc.Segmenter(tiny, "sclip", ["cat", ["dog", "puppy"]], short_side=64, crop=0, prob_thd=0.99).predict(image)
    assert (strict.mask == 0).all()
    assert strict.mask.dtype == np.uint8


@pytest.mark.parametrize("bad,match", [
    (np.zeros((50, 50), np.uint8), "greyscale"),
    (np.zeros((50, 50, 4), np.uint8), "RGBA"),
    (np.zeros((50, 50, 3), np.uint16), "uint16"),
    (np.zeros((8, 8, 3), np.uint8), "smaller than one"),
])
def test_bad_arrays_give_clear_errors(tiny, bad, match):
    seg = tc.Segmenter(tiny, "clearclip", ["a", "b"], short_side=None, crop=0)
    with pytest.raises(tc.InputError, match=match):
        seg.predict(bad, name="sample-42")
    with pytest.raises(tc.InputError, match="sample-42"):
        seg.predict(bad, name="sample-42")


def test_bad_files_give_clear_errors(tiny, tmp_path):
    seg = tc.Segmenter(tiny, "clearclip", ["a", "b"], short_side=64, crop=0)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(tc.InputError, match="corrupt.jpg.*cannot decode"):
        seg.predict(corrupt)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(deep)
    with pytest.raises(tc.InputError, match="deep.png.*16-bit"):
        seg.predict(deep)
    grey = tmp_path / "grey.png"                     # 8-bit greyscale files are converted, like loaders do
    Image.fromarray(np.full((40, 60), 90, np.uint8)).save(grey)
    assert seg.predict(grey).mask.shape == (40, 60)
    with pytest.raises(tc.InputError, match="no such image"):
        seg.predict(tmp_path / "missing.jpg")


def test_bad_configuration_gives_clear_errors(tiny):
    with pytest.raises(tc.ConfigError, match="empty"):
        tc.Segmenter(tiny, "sclip", [])
    with pytest.raises(tc.ConfigError, match="unknown method 'nope'.*sclip"):
        tc.Segmenter(tiny, "nope", ["a"])
    with pytest.raises(tc.ConfigError, match="unknown setting.*'gaussian_sd'.*gaussian_std"):
        tc.Segmenter(tiny, "naclip", ["a"], gaussian_sd=3)
    with pytest.raises(tc.ConfigError, match="neither a preset"):
        tc.Segmenter(tiny, "sclip", "not-a-preset")
    with pytest.raises(tc.ConfigError, match="prob_thd"):
        tc.Segmenter(tiny, "sclip", ["a"], prob_thd=2)
    with pytest.raises(tc.ConfigError, match="one '\\{\\}'"):
        tc.Segmenter(tiny, "sclip", ["a"], templates=["no placeholder"]).text_features
    with pytest.raises(tc.ConfigError, match="must be one of"):
        tc.Segmenter(tiny, "clearclip", ["a"], attention="xx")


def test_presets_apply_official_settings(tiny):
    seg = tc.Segmenter(tiny, "sclip", "voc21")
    s = seg.settings
    assert (s.short_side, s.crop, s.stride, s.logit_scale, s.prob_thd, s.area_thd) == (336, 224, 112, 65, 0.1, 0.1)
    assert seg.num_classes == 21 and len(seg.vocabulary.queries) == 56
    assert tc.Segmenter(tiny, "sclip", "voc21", logit_scale=30).settings.logit_scale == 30  # explicit wins
    cc = tc.Segmenter(tiny, "clearclip", "voc21").settings
    assert (cc.short_side, cc.crop, cc.stride, cc.logit_scale, cc.prob_thd, cc.pad_to_patch) == (448, 448, 224, 50, 0.5, True)
    desc = json.loads(json.dumps(seg.describe()))
    assert desc["preset"] == "voc21" and desc["settings"]["logit_scale"] == 65
