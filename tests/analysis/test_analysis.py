"""tfovss_core.analysis: the AUC metric by hand, known-answer head / layer rankings, the token and
channel statistics, and calibration profiles that the methods load by name."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tfovss_core import analysis
from tfovss_core.errors import ConfigError
from tfovss_core.methods import create_method
from tfovss_core.clip.synthetic import tiny_clip


@pytest.fixture(scope="module")
def tiny():
    return tiny_clip(seed=0, layers=4)


@pytest.fixture(scope="module")
def samples():
    """Two 64x64 images whose masks split them into halves / quadrants (16 patches each)."""
    rng = np.random.default_rng(0)
    out = []
    for k in range(2):
        img = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
        mask = np.zeros((64, 64), dtype=np.int64)
        mask[:, 32:] = 1
        if k:
            mask[32:, :] += 2
        mask[:8, :8] = 255                                   # one ignored patch
        out.append((img, mask))
    return out


def test_roc_auc_hand_computed():
    auc = analysis.roc_auc
    assert auc(torch.tensor([0.1, 0.2, 0.8, 0.9]), torch.tensor([0, 0, 1, 1])) == 1.0
    assert auc(torch.tensor([0.9, 0.8, 0.2, 0.1]), torch.tensor([0, 0, 1, 1])) == 0.0
    assert auc(torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0, 1, 1])) == 0.5        # ties count half
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ordered right
    assert auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.75
    # a tie between a positive and a negative: (1 + 0.5 + 1 + 1) / 4
    assert auc(torch.tensor([0.1, 0.4, 0.4, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.875)
    assert np.isnan(auc(torch.tensor([0.1, 0.2]), torch.tensor([1, 1])))


def test_pairwise_auc_and_patch_labels():
    feats = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [5.0, 5.0]])
    labels = torch.tensor([0, 0, 1, 1, -1])                  # the last patch is unknown: left out
    assert analysis.pairwise_auc(feats, labels) == 1.0
    assert analysis.pairwise_auc(feats, torch.tensor([0, 1, 0, 1, -1])) < 0.5
    mask = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [255, 255, 2, 2], [255, 3, 2, 2]])
    # 2x2 cells: {0,0,0,1} -> 0; {1,1,1,1} -> 1; {255,255,255,3} -> 3 has 1/4 < 0.5 -> -1; {2} -> 2
    assert analysis.patch_labels(mask, (2, 2)).tolist() == [0, 1, -1, 2]
    assert analysis.patch_labels(mask, (2, 2), min_fraction=0.25).tolist() == [0, 1, 3, 2]


def test_head_and_layer_rankings_on_known_features(tiny, samples, monkeypatch):
    """A toy labelling where the answer is known: one head's contribution is the label itself."""
    bb = tiny.visual
    prepared = [analysis.prepare_sample(tiny, img, mask, size=64) for img, mask in samples]
    label_maps = [s.labels for s in prepared]
    calls = {"i": 0}

    def fake_contributions(backbone, index, stream, heads):
        labels = label_maps[calls["i"] // (bb.depth - 1)]
        calls["i"] += 1
        n = labels.numel()
        onehot = torch.nn.functional.one_hot(labels.clamp_min(0), 4).float()
        out = torch.ones(1, len(list(heads)), n + 1, 4)            # constant: AUC 0.5 (all ties)
        if index == 2:
            out[0, 1, 1:] = onehot + 0.01                          # block 2 head 1: perfect
        return out

    monkeypatch.setattr(analysis, "head_contributions", fake_contributions)
    auc = analysis.head_discriminability(tiny, prepared, atr_tau=None)
    assert auc.shape == (bb.depth - 1, bb.heads)
    expected = np.full(auc.shape, 0.5)
    expected[2, 1] = 1.0
    np.testing.assert_allclose(auc, expected)


def test_calibration_profile_roundtrip_and_methods_load_it(tiny, samples, tmp_path, monkeypatch):
    monkeypatch.setenv("TFOVSS_PROFILE_DIR", str(tmp_path))
    prof = analysis.calibrate(tiny, samples, top_k=3, size=64, name="tiny-test")
    again = analysis.calibrate(tiny, samples, top_k=3, size=64)
    assert prof == again                                              # deterministic
    assert analysis.list_profiles() == ["tiny-test"]
    assert json.loads((tmp_path / "tiny-test.json").read_text()) == prof
    auc = np.array(prof["lht"]["head_auc"])
    assert auc.shape == (tiny.visual.depth - 1, tiny.visual.heads)
    best = sorted(((auc[l, h], l, h) for l in range(auc.shape[0]) for h in range(auc.shape[1])), reverse=True)
    assert [tuple(p) for p in prof["lht"]["she_heads"]] == [(l, h) for _, l, h in best[:3]]
    assert prof["unveil"]["coherence_layer_idx"] == int(np.nanargmax(prof["unveil"]["coherence"]))
    assert all(0.0 <= v <= 1.0 for v in prof["layer_auc"])

    lht = create_method("clearclip+lht", tiny.visual, profile="tiny-test")
    assert lht.options.she_heads == tuple(tuple(p) for p in prof["lht"]["she_heads"])
    unveil = create_method("unveil", tiny.visual, profile=str(tmp_path / "tiny-test.json"))
    assert unveil.options.coherence_layer_idx == prof["unveil"]["coherence_layer_idx"]
    with pytest.raises(ConfigError, match="no calibration profile"):
        create_method("clearclip+lht", tiny.visual, profile="missing")
    with pytest.raises(ConfigError, match="calibrated on"):
        analysis.load_profile("tiny-test", backbone=tiny_clip(seed=0, layers=3))


def test_token_and_channel_statistics(tiny):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    stats = analysis.abnormal_token_stats(tiny, x)
    assert [s["layer"] for s in stats] == list(range(tiny.visual.depth))
    n = 16
    for s in stats:
        assert len(s["hoyer"]) == len(s["norm"]) == len(s["lof"]) == n
        assert all(0.0 <= v <= 1.0 for v in s["hoyer"])
        assert set(s["atr_flags"]) == {i for i, v in enumerate(s["hoyer"]) if v > 0.5}
    glob = analysis.global_token_stats(tiny, x, top=2)
    assert len(glob) == tiny.visual.depth and all(0 < g["top_mass"] <= 1 and len(g["top_tokens"]) == 2 for g in glob)
    chans = analysis.ffn_channel_stats(tiny)
    assert len(chans) == tiny.visual.depth and not any(c["flagged"] for c in chans)
    assert analysis.abnormal_channels(tiny) == {}
    coherence = analysis.feature_coherence(tiny, [analysis.prepare_sample(tiny, np.zeros((64, 64, 3), np.uint8))])
    assert len(coherence) == tiny.visual.depth and all(np.isnan(coherence))      # no labels: undefined
