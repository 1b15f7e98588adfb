"""The fast paths give the plain path's numbers.

* shared trunk (``MultiSegmenter`` / ``compare``) == each method's own ``Segmenter``, bit for bit;
* batched windows (``batch_size`` N, or 0 = memory budget) == one window at a time (float rounding);
* the fused block loop == open_clip's block modules;
* streaming with decode threads == plain ``predict``;
* text shared: a query used by several methods is encoded once;
* FLOP count of the trunk == the analytic count of its matmuls;
* fp16/bf16 autocast (the CUDA path, run here on the CPU) stays close to fp32.

Tiny random CLIPs everywhere, plus one case on the golden ViT-B/16 weights.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tfovss_core as tc
from tfovss_core.clip.backbone import TrunkRequest
from tfovss_core.ops.flops import auto_batch_size, count_flops, trunk_flops, window_bytes
from tfovss_core.methods import Method, MethodInfo
from tfovss_core.engine.multi import MultiSegmenter, SharedTrunk, fast_settings
from tfovss_core.clip.synthetic import tiny_clip

SIX = ["clip", "maskclip", "sclip", "clearclip", "naclip", "scclip"]
CLASSES = ["cat", ["dog", "puppy"], "car"]
COMMON = dict(short_side=64, crop=32, stride=16, pamr_steps=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    return tiny_clip(seed=1, layers=4, text_cache_dir=tmp_path_factory.mktemp("text"))


@pytest.fixture(scope="module")
def image():
    return (np.random.default_rng(3).random((70, 90, 3)) * 255).astype(np.uint8)


def test_shared_trunk_equals_each_method_alone(tiny, image):
    multi = MultiSegmenter(tiny, SIX + [("sclip-noffn", "sclip", {"residual_ffn": False}),
                                        ("naclip-pamr", "naclip", {"pamr_steps": 3})],
                           classes=CLASSES, **COMMON)
    together = multi.predict(image)
    assert multi.last_groups == [multi.labels], "all methods should share one trunk here"
    for label, seg in multi.segmenters.items():
        alone = tc.Segmenter(tiny, method=seg.method.name, classes=CLASSES,
                             **{**COMMON, **({"residual_ffn": False} if label == "sclip-noffn" else {}),
                                **({"pamr_steps": 3} if label == "naclip-pamr" else {})}).predict(image)
        assert np.array_equal(alone.probs, together[label].probs), label
        assert np.array_equal(alone.mask, together[label].mask), label


def test_shared_trunk_runs_the_frozen_blocks_once_per_batch(tiny, image):
    calls = []
    original = tiny.visual.run_trunk

    def counting(images, request):
        calls.append((images.shape[0], request.depth))
        return original(images, request)

    tiny.visual.run_trunk = counting
    try:
        multi = MultiSegmenter(tiny, SIX, classes=CLASSES, **COMMON, batch_size=4)
        multi.predict(image)
    finally:
        del tiny.visual.run_trunk
    x = multi.segmenters["sclip"].prepare(image)[1]
    n_windows = len(tc.sliding_windows(*x.shape[-2:], 32, 16))
    assert len(calls) == -(-n_windows // 4) == multi.trunk_runs


def test_compare_and_protocol_groups(tiny, image):
    out = tc.compare(tiny, image, ["sclip", "clearclip"], classes=CLASSES, **COMMON)
    assert list(out) == ["sclip", "clearclip"]
    # without common settings each method keeps its own protocol: two trunk groups, same results
    multi = MultiSegmenter(tiny, ["sclip", "clearclip"], classes=CLASSES, short_side=64)
    res = multi.predict(image)
    assert len(multi.last_groups) == 2
    alone = tc.Segmenter(tiny, method="clearclip", classes=CLASSES, short_side=64).predict(image)
    assert np.array_equal(alone.probs, res["clearclip"].probs)


class _Edited(Method):
    """A test method with a weight edit: it must get a trunk of its own."""

    name = "test-edited"
    info = MethodInfo(title="edited", paper="-", official_code=None, summary="scales block 0's c_fc")

    def weight_edits(self):
        w = self.backbone.blocks[0].mlp.c_fc.weight
        return [(w, lambda t: t * 0.5)]

    def features(self, trunk):
        return self.backbone.head(trunk.x[:, 1:])


def test_weight_edits_get_their_own_trunk(tiny, image):
    edited = tc.Segmenter(tiny, method=_Edited(tiny.visual), classes=CLASSES, **COMMON)
    multi = MultiSegmenter(tiny, ["sclip", edited, "clearclip"], classes=CLASSES, **COMMON)
    res = multi.predict(image)
    assert sorted(map(sorted, multi.last_groups)) == [["clearclip", "sclip"], ["test-edited"]]
    alone = {"sclip": tc.Segmenter(tiny, method="sclip", classes=CLASSES, **COMMON),
             "test-edited": tc.Segmenter(tiny, method=_Edited(tiny.visual), classes=CLASSES, **COMMON)}
    for m, seg in alone.items():
        assert np.array_equal(seg.predict(image).probs, res[m].probs), m


def test_shared_trunk_rejects_uncovered_requests(tiny):
    shared = SharedTrunk(tiny.visual, TrunkRequest(depth=2))
    with pytest.raises(ValueError):
        shared(torch.zeros(1, 3, 32, 32), TrunkRequest(depth=3))


def test_text_encoded_once_across_methods(tmp_path, image):
    model = tiny_clip(seed=2, text_cache_dir=tmp_path)
    encoded = []
    original = model.text._encode_uncached

    def counting(queries, templates):
        encoded.extend(queries)
        return original(queries, templates)

    model.text._encode_uncached = counting
    tc.compare(model, image, SIX, classes=CLASSES, **COMMON)
    assert sorted(encoded) == sorted(["cat", "dog", "puppy", "car"])
    tc.compare(tiny_clip(seed=2, text_cache_dir=tmp_path), image, ["sclip"], classes=CLASSES, **COMMON)
    assert len(encoded) == 4  # a second run (new model object, same weights) reads the disk cache


@pytest.mark.parametrize("method", SIX)
def test_batched_windows_equal_one_at_a_time(tiny, image, method):
    one = tc.Segmenter(tiny, method=method, classes=CLASSES, **COMMON, batch_size=1).predict(image)
    for bs in (3, 16, 0):
        many = tc.Segmenter(tiny, method=method, classes=CLASSES, **COMMON, batch_size=bs).predict(image)
        np.testing.assert_allclose(many.probs, one.probs, atol=2e-6, rtol=0)
        assert (many.mask == one.mask).mean() > 0.999


@pytest.mark.parametrize("quick_gelu", [True, False], ids=["quickgelu", "gelu"])
def test_fused_block_loop_equals_open_clip_blocks(quick_gelu):
    """The fused trunk (QuickGELU folded into the GEMMs' alpha) and the FFN primitive are open_clip's."""
    bb = tiny_clip(seed=1, layers=4, quick_gelu=quick_gelu).visual
    assert (type(bb.blocks[0].mlp.gelu).__name__ == "QuickGELU") == quick_gelu
    x = torch.randn(3, 3, 64, 80)
    with torch.inference_mode():
        emb, _ = bb.embed(x)
        ref = emb
        for block in bb.blocks:
            torch.testing.assert_close(bb.mlp(block, ref), block.ls_2(block.mlp(block.ln_2(ref))),
                                       atol=1e-5, rtol=1e-5)
            ref = block(ref)
        got = bb.run_trunk(x, TrunkRequest(depth=bb.depth)).x
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_lof_distances_match_the_official_difference_norm():
    """SC-CLIP's LOF: float64 Gram distances == the official ``norm(x_i - x_j) ** 2`` (float32)."""
    from tfovss_core.ops.outliers import lof_outliers, squared_distances as _squared_distances
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 196, 768, generator=g)
    x[:, [7, 50, 120]] *= 6.0                                  # planted outliers
    for xs in x:
        official = torch.norm(xs[:, None] - xs[None, :], dim=2, p=2) ** 2
        ours = _squared_distances(xs)
        assert ours.dtype == torch.float32
        assert float(((ours - official).abs() / official.clamp_min(1e-6)).max()) < 2e-6
        assert (ours.diagonal() == 0).all()
    mask, scores = lof_outliers(x)
    assert mask.shape == (2, 196) and int(mask.sum()) == 2 * 10     # 5 % of 196, per window
    assert {7, 50, 120} <= set(torch.nonzero(mask[0]).flatten().tolist())


def test_stream_equals_predict(tiny, image, tmp_path):
    from PIL import Image
    paths = []
    for i in range(3):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(np.roll(image, 7 * i, axis=1)).save(p)
        paths.append(p)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    seg = tc.Segmenter(tiny, method="sclip", classes=CLASSES, **COMMON)
    out = list(tc.stream(seg, [paths[0], bad, paths[1], paths[2]], workers=2))
    assert [o[0] for o in out] == [paths[0], bad, paths[1], paths[2]]
    assert isinstance(out[1][1], tc.InputError)
    for p, res in (out[0], out[2], out[3]):
        assert np.array_equal(res.probs, seg.predict(p).probs)
    multi = MultiSegmenter(tiny, ["sclip", "maskclip"], classes=CLASSES, **COMMON)
    for p, res in multi.iter_predict(paths, workers=2):
        assert np.array_equal(res["maskclip"].probs, multi.predict(p)["maskclip"].probs)


def test_flop_count_is_the_matmul_count(tiny):
    bb = tiny.visual
    n, h, w = 2, 64, 96
    L, C, P = (h // 16) * (w // 16) + 1, bb.width, bb.patch
    count = trunk_flops(bb, torch.randn(n, 3, h, w), TrunkRequest(depth=bb.depth))
    per_block = 2 * n * L * C * 3 * C + 2 * n * L * C * C + 2 * 2 * n * L * C * 4 * C + 2 * 2 * n * L * L * C
    patch = 2 * n * (L - 1) * 3 * P * P * C
    assert count.total == bb.depth * per_block + patch
    assert set(count.by_op) >= {"addmm", "convolution"}
    assert count_flops(lambda: torch.ones(4, 5) @ torch.ones(5, 6)).total == 2 * 4 * 5 * 6


def test_auto_batch_size_respects_the_budget(tiny):
    per = window_bytes(tiny.visual, (32, 32))
    assert auto_batch_size(tiny.visual, (32, 32), 50, "cpu", budget=per * 7) == 7
    assert auto_batch_size(tiny.visual, (32, 32), 5, "cpu", budget=per * 7) == 5
    assert auto_batch_size(tiny.visual, (32, 32), 5, "cpu", budget=1) == 1


@pytest.mark.parametrize("precision,atol", [("bf16", 2e-2), ("fp16", 3e-3)])
def test_half_precision_autocast_stays_close(tiny, image, precision, atol):
    """The CUDA path's autocast, exercised on the CPU: same code, same numerics policy."""
    for method in ("sclip", "scclip", "naclip"):
        ref = tc.Segmenter(tiny, method=method, classes=CLASSES, **COMMON).predict(image)
        half = tc.Segmenter(tiny, method=method, classes=CLASSES, **COMMON, precision=precision).predict(image)
        assert half.probs.dtype == np.float32 and np.isfinite(half.probs).all()
        np.testing.assert_allclose(half.probs, ref.probs, atol=atol, rtol=0)
    with pytest.raises(tc.ConfigError):
        tc.Segmenter(tiny, method="sclip", classes=CLASSES, precision="int8")


def test_fast_modes(tiny, image):
    for mode in ("whole", "coarse"):
        s = fast_settings(mode, crop=32)
        res = tc.Segmenter(tiny, method="sclip", classes=CLASSES, **{**COMMON, **s}).predict(image)
        assert res.probs.shape[1:] == image.shape[:2]
    with pytest.raises(tc.ConfigError):
        fast_settings("turbo")


def test_golden_weights_shared_and_batched(shared_dir):
    """ViT-B/16 golden weights, a real photo: compare() == alone (exact), batch 6 == batch 1."""
    from support.paths import golden_model
    model = golden_model("ViT-B/16")
    img = np.load(shared_dir / "golden" / "sclip" / "voc20_chelsea.npz")["image"]
    settings = dict(short_side=336, crop=224, stride=112, pamr_steps=0)
    methods = ["sclip", "scclip", "maskclip"]
    together = tc.compare(model, img, methods, classes="voc20", **settings)
    for m in methods:
        alone = tc.Segmenter(model, method=m, classes="voc20", **settings).predict(img)
        assert np.array_equal(alone.probs, together[m].probs), m
    one = tc.Segmenter(model, method="sclip", classes="voc20", **settings, batch_size=1).predict(img)
    np.testing.assert_allclose(one.probs, together["sclip"].probs, atol=1e-5, rtol=0)
