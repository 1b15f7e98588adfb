"""ResCLIP, LHT-CLIP, GCLIP and Liu et al.'s method: hand-computed pieces, the detectors on the
planted anomalies of the synthetic golden weights, composition rules, and the registry-wide run
(every method x every backbone family, batched == single window, deterministic) on CPU."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tfovss_core as tc
from support.images import random_image
from support.paths import GOLDEN
from support.tokens import grid_tokens, token_flags
from tfovss_core.spec import presets
from tfovss_core.clip.backbone import TrunkRequest
from tfovss_core.errors import ConfigError
from tfovss_core.methods import create_method, describe_method, get_method_class, list_methods
from tfovss_core.methods.base import Method, MethodInfo, WindowContext
from tfovss_core.methods.gclip import (channel_norm_outliers, emerging_blocks, suppress_channel,
                                       top_token_mass)
from tfovss_core.methods.lht import hoyer_sparsity, neighbour_fill, ssr_block
from tfovss_core.methods.resclip import _straight_paths_stay, sfr_affinity, sfr_patch_labels
from tfovss_core.methods.unveil import common_neighbour, density_connected, relation_attention
from tfovss_core.clip.synthetic import tiny_clip

NEW_METHODS = ["resclip", "lht", "sclip+lht", "clearclip+lht", "resclip+lht", "naclip+lht", "gclip", "unveil"]
COMPONENT_NAMES = ["clearclip+atr+ssr", "sclip+she", "naclip+ssr+she", "resclip+atr", "clearclip+ssr+atr+she"]
CLASSES = ["cat", ["dog", "puppy"], "grass"]

from support.paths import golden_model


@pytest.fixture(scope="module")
def families():
    """Tiny CLIPs per backbone family: depth 3 (depth-scaled constants), 12 (ViT-B/16 constants)
    and 24 (ViT-L/14 constants)."""
    return {depth: tiny_clip(seed=0, layers=depth) for depth in (3, 12, 24)}


@pytest.fixture(scope="module")
def image():
    return random_image(1, 70, 90)


# ------------------------------------------------------------------------------- hand-computed
def test_hoyer_sparsity_hand_computed():
    x = torch.tensor([[0.0, 0.0, 5.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    assert hoyer_sparsity(x).tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)
    # (sqrt(2) - |x|_1 / |x|_2) / (sqrt(2) - 1) for (3, -4): (1.41421 - 7/5) / 0.41421
    expected = (math.sqrt(2) - 7 / 5) / (math.sqrt(2) - 1)
    assert float(hoyer_sparsity(torch.tensor([3.0, -4.0]))) == pytest.approx(expected, abs=1e-6)


def test_neighbour_replacement_at_borders_and_with_all_neighbours_abnormal():
    tokens = grid_tokens(range(1, 10), (3, 3))          # [[1,2,3],[4,5,6],[7,8,9]]
    e1, e2 = math.exp(-0.5), math.exp(-1.0)             # sigma 1: edge and corner weights
    # corner (0,0): normal neighbours 2, 4 (edges) and 5 (corner); the grid border does not count
    out = neighbour_fill(tokens, token_flags([0], 9), (3, 3), sigma=None)
    assert out[0, 0, 0].item() == pytest.approx((2 + 4 + 5) / 3)
    out = neighbour_fill(tokens, token_flags([0], 9), (3, 3), sigma=1.0)
    assert out[0, 0, 0].item() == pytest.approx((e1 * 2 + e1 * 4 + e2 * 5) / (2 * e1 + e2))
    assert torch.equal(out[0, 1:], tokens[0, 1:])       # nothing else moves
    # (0,0) and all its neighbours flagged: (0,0) stays; (0,1) uses only 3 and 6
    flags = token_flags([0, 1, 3, 4], 9)
    for sigma, expect01 in ((None, (3 + 6) / 2), (1.0, (e1 * 3 + e2 * 6) / (e1 + e2))):
        out = neighbour_fill(tokens, flags, (3, 3), sigma=sigma)
        assert out[0, 0, 0].item() == 1.0
        assert out[0, 1, 0].item() == pytest.approx(expect01)
    # every token flagged: unchanged
    assert torch.equal(neighbour_fill(tokens, token_flags(range(9), 9), (3, 3)), tokens)
    # non-square grid 2x3, flag (1,2) = index 5: neighbours (0,1)=2, (0,2)=3, (1,1)=5
    tokens = grid_tokens(range(1, 7), (2, 3))
    out = neighbour_fill(tokens, token_flags([5], 6), (2, 3), sigma=None)
    assert out[0, 5, 0].item() == pytest.approx((2 + 3 + 5) / 3)


def test_ssr_alpha_zero_is_the_stock_block_and_alpha_one_keeps_only_the_residual(families):
    bb = families[3].visual
    x = bb.run_trunk(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)),
                     TrunkRequest(depth=1)).x
    with torch.inference_mode():
        torch.testing.assert_close(ssr_block(bb, 1, x, 0.0), bb.block(1)(x), atol=1e-5, rtol=1e-5)
        assert torch.equal(ssr_block(bb, 1, x, 1.0), 4 * x)   # (1+1)((1+1)x + 0) = 4x
        assert not torch.allclose(ssr_block(bb, 1, x, 0.1), bb.block(1)(x))


def test_channel_suppression_hand_computed_and_reverted_without_leaking(families, image):
    w = torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(suppress_channel(w, 0).numpy(), [[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]], atol=1e-7)
    assert channel_norm_outliers(w, 3.0) == (0, pytest.approx(5.0))
    assert channel_norm_outliers(w, 6.0)[0] == -1

    model = tiny_clip(seed=2, layers=3)
    c_proj = model.visual.block(1).mlp.c_proj.weight
    with torch.no_grad():
        c_proj[7] *= 20                                   # plant an abnormal output channel
    original = {n: p.detach().clone() for n, p in model.model.named_parameters()}
    before = tc.Segmenter(model, "clearclip", CLASSES).predict(image).probs
    seg = tc.Segmenter(model, "gclip", CLASSES)
    assert seg.method.cs_channels == {1: 7}
    (weight, edit), = seg.method.weight_edits()
    with model.visual.weight_edit(seg.method.weight_edits()):
        norms = weight.norm(dim=1)
        assert norms[7].item() == pytest.approx(torch.cat([norms[:7], norms[8:]]).mean().item(), rel=1e-5)
    seg.predict(image)
    for n, p in model.model.named_parameters():
        assert torch.equal(p, original[n]), n
    after = tc.Segmenter(model, "clearclip", CLASSES).predict(image).probs
    np.testing.assert_array_equal(before, after)


def _toy_points():
    angles = torch.tensor([0.0, 30, 60, 90, 135, 180, 200, 220]) * math.pi / 180
    return torch.stack([angles.cos(), angles.sin()], dim=1)[None]


def test_soft_dbscan_relation_on_a_toy_point_set():
    pts = _toy_points()   # eps 0.2 in cosine distance = neighbours within 36.9 degrees
    a, b = {0, 1, 2, 3}, {5, 6, 7}
    # min_samples 3: cores 30 and 60 (one chain) and 200; 0, 90, 180, 220 are border points; 135 is noise
    related = density_connected(pts, eps=0.2, min_samples=3)[0]
    for i in range(8):
        for j in range(8):
            assert bool(related[i, j]) == ((i in a and j in a) or (i in b and j in b)), (i, j)
    # min_samples 1: every point is a core point, the noise point is its own cluster
    related = density_connected(pts, eps=0.2, min_samples=1)[0]
    assert related[4, 4] and related[4].sum() == 1
    assert related[0, 3] and not related[3, 4] and related[5, 7]
    # the "common neighbour" reading reaches only two hops: 0 ~ 60 (via 30) but not 0 ~ 90
    near = common_neighbour(pts, eps=0.2)[0]
    assert near[0, 2] and not near[0, 3] and near[4, 4]
    g = relation_attention(pts, 0.2, "dbscan", 3)[0]
    assert g[0, 3].item() == pytest.approx(0.2) and g[4, 4].item() == 0.0


def test_sfr_patch_labels_mode_ties_and_threshold():
    probs = torch.full((1, 3, 4, 4), 0.1)
    # patch (0,0): labels 2,2,1,0 -> 2 ; patch (0,1): 1,1,2,2 -> tie -> 1 ; patch (1,*): low -> 0
    label = torch.tensor([[2, 2, 1, 1], [1, 0, 2, 2], [0, 0, 0, 0], [0, 0, 0, 0]])
    probs.scatter_(1, label[None, None], 0.8)
    probs[:, :, 2:] = 0.2
    probs[0, 1, 2:, 2:] = 0.3                            # below temp_thd -> query 0
    out = sfr_patch_labels(probs, (2, 2), 2, temp_thd=0.5)
    assert out.tolist() == [[[2, 1], [0, 0]]]


def test_sfr_affinity_hand_computed():
    # 1x3 grid, labels [0, 0, 1], std 0.5: kernel of size 3, weights (e^-2, 1, e^-2) / s
    s = sfr_affinity(torch.tensor([[0, 0, 1]]), gaussian_std=0.5, delete_same_entity=False)
    e = math.exp(-2)
    row0 = [1 + e, 1 + e, e]
    row0 = [v / (2 + 3 * e) for v in row0]
    row2 = [0.0, e / (1 + e), 1 / (1 + e)]
    top = max(max(row0), max(row2))
    expected = np.zeros((4, 4))
    expected[1, 1:] = row0
    expected[2, 1:] = row0
    expected[3, 1:] = row2
    np.testing.assert_allclose(s.numpy(), expected / top, atol=1e-6)


def test_sfr_path_check_and_its_sampling_quirk():
    labels = torch.tensor([[0, 1, 0]])
    assert not _straight_paths_stay(labels, torch.tensor([[0, 0]]), torch.tensor([[0, 2]]), 2)[0]
    # the official check samples with the global max distance: a pair at distance 4 in a grid
    # whose max distance is 8 checks only the first half of its path and misses patch (0,3)
    labels = torch.tensor([[0, 0, 0, 1, 0, 0, 0, 0, 0]])
    assert _straight_paths_stay(labels, torch.tensor([[0, 0]]), torch.tensor([[0, 4]]), 8)[0]
    assert not _straight_paths_stay(labels, torch.tensor([[0, 0]]), torch.tensor([[0, 4]]), 4)[0]
    # decayed in the map: same label, path leaves it -> exp(-2 / 2) before blurring
    m = sfr_affinity(torch.tensor([[0, 1, 0]]), gaussian_std=0.01, delete_same_entity=True)
    raw = m[1:, 1:] * (1 / m[1:, 1:].sum(1, keepdim=True))   # std 0.01: no blur
    assert raw[0, 2].item() / raw[0, 0].item() == pytest.approx(math.exp(-1.0), rel=1e-5)


def test_global_token_detector_on_toy_attention():
    probs = torch.zeros(1, 2, 5, 5)
    probs[..., 3] = 1.0                                  # every query attends patch token 3
    assert top_token_mass(probs, top=1).item() == pytest.approx(1.0)
    uniform = torch.full((1, 2, 5, 5), 0.2)
    assert top_token_mass(uniform, top=2).item() == pytest.approx(0.4)
    mass = torch.tensor([0.1, 0.2, 0.6, 0.7, 0.8])
    assert emerging_blocks(mass, 0.5, 2, last=4) == [2, 3]
    assert emerging_blocks(mass, 0.75, 2, last=4) == [4]
    assert emerging_blocks(mass, 0.9, 2, last=4) is None


# ------------------------------------------------------------------------------- golden weights
@pytest.fixture(scope="module")
def golden_crop(shared_dir):
    data = dict(np.load(GOLDEN / "scclip" / "voc20_chelsea.npz"))
    model = golden_model("ViT-B/16")
    seg = tc.Segmenter(model, "scclip", ["a", "b"])
    _, x = seg.prepare(data["image"])
    return model, x[:, :, :224, :224], data


@pytest.mark.slow
def test_atr_flags_exactly_the_planted_tokens_and_agrees_with_scclip(golden_crop):
    model, crop, data = golden_crop
    planted = [52, 129, 165]
    method = create_method("clearclip+lht", model.visual)
    with torch.inference_mode():
        trunk = model.visual.run_trunk(crop, method.trunk_request())
        flags = method.detect_abnormal(trunk)
    assert flags[0].nonzero().flatten().tolist() == planted
    from tfovss_core import analysis
    stats, = analysis.abnormal_token_stats(model, crop, layers=[model.visual.depth - 2])
    assert stats["atr_flags"] == planted
    assert stats["lof_outliers"] == sorted(data["lof_crop0_outliers"].tolist())   # SC-CLIP's detector
    assert set(stats["atr_flags"]) <= set(stats["lof_outliers"])
    top_lof = np.argsort(stats["lof"])[-3:]
    assert sorted(top_lof.tolist()) == planted                                     # they agree
    hoyer = np.array(stats["hoyer"])
    assert hoyer[planted].min() > 0.75 and np.delete(hoyer, planted).max() < 0.25


@pytest.mark.slow
def test_gclip_detects_the_planted_ffn_channel(golden_crop):
    model, _, _ = golden_crop
    method = create_method("gclip", model.visual)
    assert method.cs_channels == {b: 401 for b in range(6, 12)}
    from tfovss_core import analysis
    assert analysis.abnormal_channels(model) == {b: 401 for b in range(6, 12)}
    stats = analysis.ffn_channel_stats(model)
    assert [s["flagged"] for s in stats] == [False] * 6 + [True] * 6


# ------------------------------------------------------------------------------- composition
def test_lht_names_components_and_defaults(families):
    bb = families[12].visual
    m = create_method("clearclip+atr+ssr", bb)
    assert (m.options.use_atr, m.options.use_ssr, m.options.use_she) == (True, True, False)
    assert m.options.ssr_layers == (9, 10) and m.options.ssr_alpha == 0.1
    assert m.options.she_heads == tuple((7, h) for h in range(bb.heads))
    assert create_method("lht", bb).options.residual_ffn is False         # SCLIP host, no residual / FFN
    assert create_method("resclip+lht", bb).options.use_sfr is False      # paper: ResCLIP w/o SFR
    assert get_method_class("clearclip+lht") is get_method_class("clearclip+lht")
    d = describe_method("naclip+lht")
    assert d["paper_based"] and {"gaussian_std", "ssr_alpha", "atr_tau", "she_beta"} <= {o["name"] for o in d["options"]}
    assert create_method("sclip+lht", families[24].visual).options.ssr_layers == (19, 20, 21, 22)
    with pytest.raises(ConfigError):
        get_method_class("clearclip+foo")
    with pytest.raises(ConfigError):
        get_method_class("clip+lht")
    with pytest.raises(ConfigError):
        create_method("clearclip+lht", bb, she_heads=((11, 0),))          # the final block has no SHE


def _features(bb, method, x):
    with torch.inference_mode():
        return method.features(bb.run_trunk(x, method.trunk_request()))


def test_components_off_reduce_to_the_host(families):
    bb = families[12].visual
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    off = dict(use_ssr=False, use_atr=False, use_she=False)
    torch.testing.assert_close(_features(bb, create_method("sclip+lht", bb, **off), x),
                               _features(bb, create_method("sclip", bb, residual_ffn=False), x), atol=0, rtol=0)
    torch.testing.assert_close(_features(bb, create_method("naclip", bb), x),
                               _features(bb, create_method("resclip", bb, use_rcs=False, use_sfr=False), x),
                               atol=1e-6, rtol=0)
    ssr_only = create_method("clearclip+ssr", bb, ssr_alpha=0.0)             # alpha 0: stock blocks
    torch.testing.assert_close(_features(bb, ssr_only, x), _features(bb, create_method("clearclip", bb), x),
                               atol=1e-5, rtol=1e-4)
    for variant in (dict(she_position="after"), dict(she_norm="column"), dict(atr_input="ln")):
        feats = _features(bb, create_method("clearclip+lht", bb, **variant), x)
        assert feats.shape == (2, 16, bb.visual.proj.shape[1]) and torch.isfinite(feats).all()


def test_unveil_reduces_to_its_equation_without_relation_and_dsi(families):
    bb = families[12].visual
    m = create_method("unveil", bb, relation="none", dsi_start=-1)
    assert m.options.coherence_layer_idx == 6 and create_method("unveil", bb).dsi_blocks() == [9, 10]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        trunk = bb.run_trunk(x, TrunkRequest(depth=bb.depth - 1, keep=frozenset(range(bb.depth - 1))))
        got = m.features(trunk)
        block = bb.block(6)
        k = bb.qkv(block, block.ln_1(trunk.stream(6)))[1].transpose(1, 2).flatten(2)
        k = torch.nn.functional.normalize(k, dim=-1)
        attn = torch.softmax(6.0 * k @ k.transpose(1, 2), dim=-1)
        last = bb.block(bb.depth - 1)
        v = bb.value(last, last.ln_1(trunk.x)).transpose(1, 2).flatten(2)
        expected = bb.head(last.attn.out_proj(attn @ v)[:, 1:])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_context_hook_gives_methods_the_windows_text_and_scale(families, image):
    seen = []

    class Probe(Method):
        name = "probe"
        info = MethodInfo(title="probe", paper="-", official_code=None, summary="test")
        needs_context = True

        def features(self, trunk, context):
            seen.append(context)
            return self.backbone.head(trunk.x[:, 1:])

    model = families[3]
    seg = tc.Segmenter(model, Probe(model.visual), CLASSES, short_side=64, crop=48, stride=32, logit_scale=33)
    _, x = seg.prepare(image)
    seg.predict(image)
    assert all(isinstance(c, WindowContext) and c.logit_scale == 33 for c in seen)
    assert torch.equal(seen[0].text, seg.text_features)
    assert torch.equal(seen[0].images[0], x[0, :, :48, :48])


# ------------------------------------------------------------------------------- registry-wide
ALL_NAMES = sorted(set(list_methods(include_composed=True)) | set(COMPONENT_NAMES))


@pytest.mark.parametrize("depth", [3, 12, 24])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_method_on_every_backbone_family(families, image, name, depth):
    if depth == 3 and name in list_methods(include_composed=True):
        pytest.skip("depth 3 is covered by tests/engine/test_segmenter.py::"
                    "test_every_method_batched_equals_single_and_is_deterministic")
    model = families[depth]
    kw = dict(short_side=64, crop=48, stride=32, templates=["a photo of a {}."])
    if name == "proxyclip":  # its VFM's weights are never downloaded: random ones here
        kw["vfm_weights"] = "random"
    one = tc.Segmenter(model, name, CLASSES, batch_size=1, **kw).predict(image)
    many = tc.Segmenter(model, name, CLASSES, batch_size=8, **kw).predict(image)
    again = tc.Segmenter(model, name, CLASSES, batch_size=8, **kw).predict(image)
    assert one.probs.shape == (3, 70, 90) and np.isfinite(one.probs).all()
    # batched == one window at a time within float rounding: BLAS picks kernels by the GEMM's row
    # count, and 12-24 random blocks amplify last-bit differences to a few 1e-6 in the probs
    np.testing.assert_allclose(many.probs, one.probs, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(many.probs, again.probs)
    np.testing.assert_array_equal(many.mask, again.mask)


@pytest.mark.parametrize("method", NEW_METHODS)
def test_every_preset_works(families, method):
    model = families[3]
    small = np.random.default_rng(2).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    for dataset in presets.list_presets():
        seg = tc.Segmenter(model, method, dataset, short_side=32, templates=["a photo of a {}."])
        res = seg.predict(small)
        assert res.probs.shape == (seg.num_classes, 30, 40) and np.isfinite(res.probs).all(), dataset
        expected = presets.method_settings(method, dataset)
        for key in ("temp_thd", "rcs_weights", "sfr_weights"):
            if key in expected:
                assert getattr(seg.method.options, key) == pytest.approx(tuple(expected[key]) if isinstance(
                    expected[key], list) else expected[key])
        if "+" in method or method == "lht":
            assert seg.settings.pamr_steps == 0
