"""ProxyCLIP beside other methods: its second backbone (the VFM) is loaded once and run once per
batch of windows, and every method's result is bit for bit its result alone.

Tiny random CLIP and a seeded random DINO ViT-S/8 (the sharing does not depend on the weights;
the goldens check the numbers of the real recipe).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tfovss_core as tc
from tfovss_core.clip.synthetic import tiny_clip
from tfovss_core.engine.multi import MultiSegmenter
from tfovss_core.engine.windows import sliding_windows

CLASSES = ["cat", ["dog", "puppy"], "car"]
# 56-pixel windows: ProxyCLIP pads to multiples of 56, so every method sees the same crops
COMMON = dict(short_side=84, crop=56, stride=28, pamr_steps=0, batch_size=2, templates=["a photo of a {}."])
VFM = dict(vfm="dino_vits8", vfm_weights="random:5")
METHODS = [("proxy", "proxyclip", VFM),
           ("proxy-b1", "proxyclip", {**VFM, "beta": 1.0, "gamma": 2.0}),
           ("sclip", "sclip", {})]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_clip(seed=2, layers=3, text_cache_dir=tmp_path_factory.mktemp("text"))


@pytest.fixture(scope="module")
def image():
    return (np.random.default_rng(7).random((90, 120, 3)) * 255).astype(np.uint8)


def _batches(seg, image) -> int:
    x = seg.prepare(image)[1]
    n = len(sliding_windows(*x.shape[-2:], seg.settings.crop, seg.settings.stride))
    return -(-n // seg.settings.batch_size)


def test_two_proxyclips_share_one_vfm_forward_per_window_batch(tiny, image):
    multi = MultiSegmenter(tiny, METHODS, classes=CLASSES, **COMMON)
    a, b = multi.segmenters["proxy"].method, multi.segmenters["proxy-b1"].method
    assert a.vfm is b.vfm, "the VFM must be loaded once per process"
    vfm = a.vfm
    batches = _batches(multi.segmenters["proxy"], image)
    assert batches >= 3
    forwards, hits = vfm.forwards, vfm.hits
    together = multi.predict(image)
    assert ["proxy", "proxy-b1"] in [g[:2] for g in multi.last_groups]
    # one VFM forward per batch of windows, the second method served from it
    assert vfm.forwards - forwards == batches
    assert vfm.hits - hits == batches

    for label, method, extra in METHODS:
        seg = tc.Segmenter(tiny, method=method, classes=CLASSES, **{**COMMON, **extra})
        before = vfm.forwards
        alone = seg.predict(image)
        if method == "proxyclip":
            assert seg.method.vfm is vfm
            # alone, nothing is memoised: every batch runs the VFM
            assert vfm.forwards - before == batches
        assert np.array_equal(alone.probs, together[label].probs), label
        assert np.array_equal(alone.mask, together[label].mask), label
    # the shared batch is released after the group: the same windows run the model again
    seg = multi.segmenters["proxy"]
    crops = seg.prepare(image)[1][:, :, :56, :56]
    before = vfm.forwards
    first = vfm.patch_features(crops)[0]
    second = vfm.patch_features(crops)[0]
    assert vfm.forwards - before == 2 and torch.equal(first, second)


def test_different_vfm_features_are_not_shared(tiny, image):
    """Methods that take other tokens of the VFM (``vfm_features``) each run their own forward,
    and still give their results alone."""
    methods = [("tokens", "proxyclip", VFM), ("keys", "proxyclip", {**VFM, "vfm_features": "k"})]
    multi = MultiSegmenter(tiny, methods, classes=CLASSES, **COMMON)
    vfm = multi.segmenters["tokens"].method.vfm
    batches = _batches(multi.segmenters["tokens"], image)
    forwards, hits = vfm.forwards, vfm.hits
    together = multi.predict(image)
    assert multi.last_groups == [["tokens", "keys"]]
    assert (vfm.forwards - forwards, vfm.hits - hits) == (2 * batches, 0)
    alone = tc.Segmenter(tiny, method="proxyclip", classes=CLASSES,
                         **{**COMMON, **VFM, "vfm_features": "k"}).predict(image)
    assert np.array_equal(alone.probs, together["keys"].probs)


def test_memo_holds_for_equal_windows_only(tiny):
    """Inside ``share_batches`` a different batch (or another autocast state) runs the model."""
    from tfovss_core.clip.vfm import load_vfm

    vfm = load_vfm("dino_vits8", "random:5", "cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 56, 56, generator=g)
    y = x.clone()
    y[1, 0, 0, 0] += 1e-3
    with vfm.share_batches():
        f0 = vfm.forwards
        fx = vfm.patch_features(x)[0]
        assert vfm.patch_features(x.clone())[0] is fx          # equal windows: served
        fy = vfm.patch_features(y)[0]                          # one value differs: computed
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fb = vfm.patch_features(y)[0]                      # other precision: computed
        assert vfm.forwards - f0 == 3
        assert not torch.equal(fx, fy) and not torch.equal(fb, fy)
