"""Paper-based methods (LHT-CLIP, GCLIP, Liu et al.'s `unveil`): every option carries a provenance,
every default called the authors' quotes a passage that is in the paper texts, and each reading
made a choice changes what it should and nothing else (defaults stay bit for bit)."""
from __future__ import annotations

import contextlib
import io
import json
import math
import re
from pathlib import Path

import pytest
import torch

from support.paths import SHARED
from support.tokens import grid_tokens, token_flags
from tfovss_core.cli import main as cli_main
from tfovss_core.clip.synthetic import tiny_clip
from tfovss_core.errors import ConfigError
from tfovss_core.methods import create_method, describe_method, get_method_class
from tfovss_core.methods.base import PROVENANCE, option
from tfovss_core.methods.gclip import (abnormal_ffn_channels, entropy_abnormal_channels, norm_entropy_deficit,
                                       suppress_channel)
from tfovss_core.methods.lht import hoyer_sparsity, nearest_normal_fill, neighbour_fill

PAPER_METHODS = ("lht", "clearclip+lht", "gclip", "unveil")
PAPERS = Path(SHARED) / "papers"
DOCS = Path(__file__).resolve().parents[2] / "docs"


def _plain(text: str) -> str:
    """Lower-case ASCII letters and digits only: the paper texts carry mis-decoded Greek letters."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


@pytest.fixture(scope="module")
def paper_text() -> str:
    return "".join(_plain(p.read_text(encoding="utf-8", errors="replace")) for p in sorted(PAPERS.glob("*.txt")))


@pytest.fixture(scope="module")
def model():
    return tiny_clip(seed=0, layers=12)     # the ViT-B/16 constants apply at depth 12


@pytest.fixture(scope="module")
def windows():
    return torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))


def _features(method, x):
    with torch.inference_mode():
        return method.features(method.backbone.run_trunk(x, method.trunk_request()))


# ------------------------------------------------------------------------------- provenance
def test_option_rejects_an_unknown_source():
    with pytest.raises(ValueError, match="paper"):
        option(1, "x", source="paper")
    assert PROVENANCE == ("authors", "draft", "ours", "backbone")


@pytest.mark.parametrize("name", PAPER_METHODS)
def test_every_authors_default_quotes_a_passage_of_the_papers(name, paper_text):
    options = describe_method(name)["options"]
    assert options
    cls = get_method_class(name)
    host_cls = getattr(cls, "host_cls", None)
    # a host's own options cite its official code; the defaults LHT-CLIP changes are checked below
    host = {o["name"] for o in describe_method(host_cls.name)["options"]} if host_cls else set()
    for opt in options:
        assert opt["source"] in PROVENANCE, opt["name"]
        if opt["source"] == "authors" and opt["name"] not in host:
            assert opt.get("passage"), f"{name}.{opt['name']} is attributed to the authors without a passage"
            assert _plain(opt["passage"]) in paper_text, f"{name}.{opt['name']}: passage not in the papers"


def test_draft_defaults_are_tagged_as_draft_and_fallbacks_as_ours():
    opts = {o["name"]: o for o in describe_method("lht")["options"]}
    assert opts["atr_tau"]["source"] == "draft"
    assert opts["residual_ffn"]["source"] == "draft" and opts["residual_ffn"]["default"] is False
    assert {o["name"]: o for o in describe_method("resclip+lht")["options"]}["use_sfr"]["source"] == "draft"
    assert {o["name"]: o for o in describe_method("sclip")["options"]}["residual_ffn"]["source"] == "authors"
    assert "fallback" in opts["she_heads"]["doc"].lower() and opts["she_heads"]["source"] == "ours"
    for name in ("atr_neighbours", "she_atr", "she_candidates", "she_heads"):
        assert opts[name].get("reading"), name
    g = {o["name"]: o for o in describe_method("gclip")["options"]}
    for name in ("last_residual", "last_ffn", "amf_weight", "cs_detector", "cs_target", "block_numbering", "use_cs"):
        assert g[name].get("reading"), name
    u = {o["name"]: o for o in describe_method("unveil")["options"]}
    for name in ("normalise_keys", "dsi_ffn_ln", "relation", "coherence_layer_idx"):
        assert u[name].get("reading"), name


@pytest.mark.parametrize("name", ["lht", "gclip", "unveil"])
def test_cli_json_shows_a_provenance_for_every_option(name):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["methods", name, "--json"]) == 0
    (info,) = json.loads(out.getvalue())
    assert info["name"] == name
    assert all(o["source"] in PROVENANCE for o in info["options"])
    assert {o["name"] for o in info["options"]} == {o["name"] for o in describe_method(name)["options"]}


def test_form_help_shows_source_and_reading():
    forms = pytest.importorskip("tfovss_fiftyone.forms")
    opt = next(o for o in describe_method("gclip")["options"] if o["name"] == "cs_detector")
    text = forms.option_help(opt)
    assert "[default: ours]" in text and "entropy of weight norms" in text


@pytest.mark.parametrize("doc", ["lht.md", "gclip.md", "unveil.md"])
def test_each_doc_has_a_provenance_row_for_every_option(doc):
    text = (DOCS / "methods" / doc).read_text()
    name = {"lht.md": "lht", "gclip.md": "gclip", "unveil.md": "unveil"}[doc]
    assert "| Option | Default | Source | Paper passage" in text
    host = {o["name"] for o in describe_method("sclip")["options"]} if name == "lht" else set()
    for opt in describe_method(name)["options"]:
        if opt["name"] not in host:
            assert f"`{opt['name']}`" in text, f"{doc} lacks a row for {opt['name']}"


def test_no_doc_calls_the_defaults_the_papers_stated_choice():
    texts = [(DOCS / "methods" / "README.md").read_text(), (DOCS / "results.md").read_text(),
             (DOCS / "methods" / "gclip.md").read_text()]
    import tfovss_core.analysis as analysis
    texts.append(analysis.__doc__)
    for text in texts:
        assert "paper's stated choice" not in text
        assert "five datasets without background" not in text and "five benchmarks without background" not in text


# ------------------------------------------------------------------------------- LHT: ATR neighbours
def test_nearest_reading_equals_the_window_inside_and_differs_at_borders():
    tokens = grid_tokens(range(25), (5, 5))
    centre = token_flags([12], 25)
    for sigma in (None, 1.0):
        assert torch.equal(nearest_normal_fill(tokens, centre, (5, 5), sigma),
                           neighbour_fill(tokens, centre, (5, 5), sigma)) or torch.allclose(
            nearest_normal_fill(tokens, centre, (5, 5), sigma), neighbour_fill(tokens, centre, (5, 5), sigma),
            atol=1e-12, rtol=0)
    corner = token_flags([0], 25)
    window = neighbour_fill(tokens, corner, (5, 5), None)
    nearest = neighbour_fill(tokens, corner, (5, 5), None, "nearest")
    assert window[0, 0, 0].item() == pytest.approx((1 + 5 + 6) / 3)
    # the 8 nearest of (0,0): distance 1: 1, 5; sqrt 2: 6; 2: 2, 10; sqrt 5: 7, 11 (raster), then 3? no: 2*sqrt2=8
    # distances^2: 1->1, 5->1, 6->2, 2->4, 10->4, 7->5, 11->5, 12->8 (3 and 15 have 9)
    assert nearest[0, 0, 0].item() == pytest.approx((1 + 5 + 6 + 2 + 10 + 7 + 11 + 12) / 8)
    # only the flagged token changes
    assert torch.equal(nearest[0, 1:], tokens[0, 1:])


def test_nearest_reading_replaces_a_token_whose_window_is_all_flagged():
    tokens = grid_tokens(range(25), (5, 5))
    flags = token_flags([6, 7, 8, 11, 12, 13, 16, 17, 18], 25)           # the whole 3x3 around 12
    window = neighbour_fill(tokens, flags, (5, 5), None)
    nearest = neighbour_fill(tokens, flags, (5, 5), None, "nearest")
    assert window[0, 12, 0].item() == 12                              # no normal neighbour: unchanged
    # distance 2 from (2,2): 2, 10, 14, 22 (d^2 = 4), then d^2 = 5: 1, 3, 5, 9
    assert nearest[0, 12, 0].item() == pytest.approx((2 + 10 + 14 + 22 + 1 + 3 + 5 + 9) / 8)
    normal = ~flags[0]
    assert torch.equal(nearest[0, normal], tokens[0, normal])


def test_unknown_neighbour_reading_is_refused():
    with pytest.raises(ValueError, match="neighbour"):
        neighbour_fill(grid_tokens(range(4), (2, 2)), token_flags([0], 4), (2, 2), None, "ring")


# ------------------------------------------------------------------------------- LHT: method options
def _lht(model, **o):
    return create_method("clearclip+lht", model.visual, **o)


def test_lht_defaults_are_the_explicit_previous_behaviour(model, windows):
    base = _features(_lht(model), windows)
    explicit = _features(_lht(model, atr_neighbours="window", she_atr=True, she_candidates="before_last"), windows)
    assert torch.equal(base, explicit)
    assert _lht(model).options.she_heads == tuple((7, h) for h in range(model.visual.heads))


def test_lht_atr_alternatives_change_the_output(model, windows):
    probe = _lht(model)
    with torch.inference_mode():
        stream = probe.lht_trunk(model.visual.run_trunk(windows, probe.trunk_request())).x[:, 1:]
    tau = float(hoyer_sparsity(stream).quantile(0.8))   # flags a fifth of the tiny model's tokens
    m = _lht(model, atr_tau=tau)
    flags = m.detect_abnormal(model.visual.run_trunk(windows, m.trunk_request()))
    assert 0 < int(flags.sum()) < flags.numel()
    base = _features(m, windows)
    assert not torch.equal(base, _features(_lht(model, atr_tau=tau, atr_neighbours="nearest"), windows))
    assert not torch.equal(base, _features(_lht(model, atr_tau=tau, she_atr=False), windows))
    # she_atr only acts through SHE: without SHE it changes nothing
    no_she = _features(create_method("clearclip+atr+ssr", model.visual, atr_tau=tau), windows)
    assert torch.equal(no_she, _features(create_method("clearclip+atr+ssr", model.visual, atr_tau=tau,
                                                       she_atr=False), windows))


def _profile(tmp_path, model, auc):
    bb = model.visual
    path = tmp_path / "heads.json"
    flat = sorted(((v, l, h) for l, row in enumerate(auc) for h, v in enumerate(row)), key=lambda t: -t[0])
    top = [[l, h] for _, l, h in flat[:3]]
    path.write_text(json.dumps({"format": 1, "backbone": {"depth": bb.depth, "width": bb.width},
                                "lht": {"she_heads": top, "top_k": 3, "head_auc": auc}}))
    return str(path)


def test_lht_top_k_selection_from_a_profile(model, windows, tmp_path):
    from tfovss_core.clip.calibration import PROFILE_FORMAT
    bb = model.visual
    auc = [[0.5 + 0.001 * (l * bb.heads + h) for h in range(bb.heads)] for l in range(bb.depth)]
    auc[3][1] = 0.99            # the best head sits before the final block,
    auc[bb.depth - 1][0] = 0.98  # the second best in the final block (only in the 144-head pool)
    path = _profile(tmp_path, model, auc)
    data = json.loads(Path(path).read_text())
    data["format"] = PROFILE_FORMAT
    data["lht"]["she_heads"] = [[3, 1], [bb.depth - 2, bb.heads - 1], [bb.depth - 2, bb.heads - 2]]
    Path(path).write_text(json.dumps(data))
    stored = _lht(model, profile=path)
    assert stored.options.she_heads == ((3, 1), (bb.depth - 2, bb.heads - 1), (bb.depth - 2, bb.heads - 2))
    assert _lht(model, profile=path, she_top_k=2).options.she_heads == ((3, 1), (bb.depth - 2, bb.heads - 1))
    everything = _lht(model, profile=path, she_top_k=2, she_candidates="all")
    assert everything.options.she_heads == ((3, 1), (bb.depth - 1, 0))
    assert not torch.equal(_features(everything, windows),
                           _features(_lht(model, profile=path, she_top_k=2), windows))
    with pytest.raises(ConfigError, match="block < 11"):
        _lht(model, she_heads=((bb.depth - 1, 0),))
    data["lht"]["head_auc"] = auc[:-1]
    Path(path).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="recalibrate"):
        _lht(model, profile=path, she_candidates="all")


# ------------------------------------------------------------------------------- GCLIP
def _planted(seed=0, blocks=(6, 7, 8, 9, 10, 11), channel=5):
    m = tiny_clip(seed=seed, layers=12)
    with torch.no_grad():
        for b in blocks:
            m.visual.block(b).mlp.c_proj.weight[channel] *= 10
    return m


def test_entropy_rule_finds_the_planted_channels():
    m = _planted()
    assert entropy_abnormal_channels(m.visual) == {b: 5 for b in range(6, 12)}
    assert abnormal_ffn_channels(m.visual) == {b: 5 for b in range(6, 12)}
    w = torch.ones(4, 3)
    assert norm_entropy_deficit(w) == pytest.approx(0.0, abs=1e-12)
    w[2] *= 10
    assert norm_entropy_deficit(w) > 0.3


def test_gclip_cs_detector_and_target_change_only_the_edit():
    m = _planted(blocks=(8,))
    g = create_method("gclip", m.visual, cs_detector="entropy")
    assert g.cs_channels == {8: 5}
    w = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    w[2] *= 20
    mean, median = suppress_channel(w, 2, "mean"), suppress_channel(w, 2, "median")
    others = torch.cat([w[:2], w[3:]]).norm(dim=1)
    assert float(mean[2].norm()) == pytest.approx(float(others.mean()), rel=1e-6)
    assert float(median[2].norm()) == pytest.approx(float(others.median()), rel=1e-6)
    assert torch.equal(mean[torch.arange(6) != 2], w[torch.arange(6) != 2])
    assert torch.equal(median[torch.arange(6) != 2], w[torch.arange(6) != 2])


def test_gclip_block_numbering_shifts_only_the_card_fallbacks(model):
    zero = create_method("gclip", model.visual)
    one = create_method("gclip", model.visual, block_numbering="1-based")
    assert zero.options.global_blocks == (6, 7) and one.options.global_blocks == (5, 6)
    assert zero.options.cs_blocks == (7, 8, 9, 10, 11) and one.options.cs_blocks == (6, 7, 8, 9, 10)
    explicit = create_method("gclip", model.visual, block_numbering="1-based", global_blocks=(6, 7))
    assert explicit.options.global_blocks == (6, 7)


def test_gclip_fusion_weight_and_last_block(model, windows):
    base = _features(create_method("gclip", model.visual, detect_global_blocks=False), windows)
    # the equal mean over 1 + 2 maps is amf_weight = 2/3
    equal = _features(create_method("gclip", model.visual, detect_global_blocks=False, amf_weight=2 / 3), windows)
    assert torch.allclose(base, equal, atol=1e-5, rtol=1e-5)
    other = _features(create_method("gclip", model.visual, detect_global_blocks=False, amf_weight=0.2), windows)
    assert not torch.allclose(base, other, atol=1e-4)
    for flag in ("last_residual", "last_ffn"):
        changed = _features(create_method("gclip", model.visual, detect_global_blocks=False, **{flag: True}), windows)
        assert not torch.allclose(base, changed, atol=1e-4), flag
    assert torch.equal(base, _features(create_method("gclip", model.visual, detect_global_blocks=False,
                                                     last_residual=False, last_ffn=False), windows))
    with pytest.raises(ConfigError, match="amf_weight"):
        create_method("gclip", model.visual, amf_weight=1.5)


# ------------------------------------------------------------------------------- unveil
def test_unveil_readings_change_their_factor_only(model, windows):
    bb = model.visual
    base_m = create_method("unveil", bb)
    trunk = bb.run_trunk(windows, base_m.trunk_request())
    with torch.inference_mode():
        raw = create_method("unveil", bb, normalise_keys=False)
        assert torch.equal(base_m.values(trunk), raw.values(trunk))
        assert not torch.allclose(base_m.attention(trunk), raw.attention(trunk), atol=1e-4)
        literal = create_method("unveil", bb, dsi_ffn_ln=False)
        assert torch.equal(base_m.attention(trunk), literal.attention(trunk))
        assert not torch.allclose(base_m.values(trunk), literal.values(trunk), atol=1e-5)
        # dsi_ffn_ln has nothing to act on with the final value only
        one = create_method("unveil", bb, dsi_start=-1)
        assert torch.equal(one.values(trunk), create_method("unveil", bb, dsi_start=-1, dsi_ffn_ln=False).values(trunk))
        explicit = create_method("unveil", bb, normalise_keys=True, dsi_ffn_ln=True)
        assert torch.equal(_features(base_m, windows), _features(explicit, windows))
    assert not math.isnan(float(_features(raw, windows).sum()))
