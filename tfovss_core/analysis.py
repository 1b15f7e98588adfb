"""The analyses the recent papers rely on, and the calibration that turns them into profiles.

* Visual discriminability (LHT-CLIP, after PACL): for L2-normalised patch features, the ROC-AUC of
  the cosine similarity of every patch pair as a classifier of "same ground-truth class?", per
  layer (:func:`layer_discriminability`) and per attention head (:func:`head_discriminability`,
  on each head's contribution ``A_h V_h W_o[h]`` with ATR applied).
* Feature coherence M (Liu et al.): the same AUC on each layer's L2-normalised keys
  (:func:`feature_coherence`).
* Abnormal tokens (:func:`abnormal_token_stats`): Hoyer sparsity, L2 norm, SC-CLIP's LOF scores and
  outliers, LHT-CLIP's ATR flags, per layer.
* Global tokens (GCLIP, :func:`global_token_stats`): per block the share of the attention that its
  most attended patch tokens receive.
* FFN channel norms (GCLIP, :func:`ffn_channel_stats`): row norms of each ``mlp.c_proj``.

:func:`calibrate` picks LHT-CLIP's top-k SHE heads and Liu et al.'s k_M layer from a labelled
sample and :func:`save_profile` stores them as JSON; methods load a profile by name with their
``profile`` option. **No profile ships with tfovss**: none has been measured on real pretrained
weights here, so without one LHT-CLIP's heads and Liu et al.'s ViT-B/16 k_M layer are our fallbacks,
not the papers' choices (the LHT-CLIP text selects the top-k heads by discriminability and does not
publish them; Liu et al. give k_M for ViT-L only). See each method's provenance table.

AUCs are computed per image over the pairs of patches whose label is known (a patch takes the
majority label of its pixels when at least ``min_fraction`` of them carry it, ignore pixels
excluded) and averaged over the images that have two or more classes. Images are resized to a
square ``size`` x ``size`` (bilinear; masks nearest), so the backbone sees its native grid.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tfovss_core.clip.backbone import TrunkRequest, VisionBackbone
from tfovss_core.errors import ConfigError
from tfovss_core.io.images import CLIP_MEAN, CLIP_STD, load_image
from tfovss_core.methods.gclip import abnormal_ffn_channels, channel_norm_outliers, top_token_mass
from tfovss_core.methods.lht import abnormal_tokens, head_contributions, hoyer_sparsity, neighbour_fill
from tfovss_core.ops.outliers import lof_outliers
from tfovss_core.clip.calibration import PROFILE_FORMAT, list_profiles, load_profile, profile_dir, save_profile  # noqa: F401  (public here too)
from tfovss_core.clip.text import default_cache_dir



# ------------------------------------------------------------------------------------- metrics
def roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` labels (ties count half;
    the Mann-Whitney statistic). NaN when one of the two classes is empty."""
    scores = scores.reshape(-1).double()
    positive = positive.reshape(-1).bool()
    n_pos = int(positive.sum())
    n_neg = positive.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(scores, stable=True)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    average = ends - (counts.double() - 1) / 2           # 1-based average rank of each tie group
    ranks[order] = average[inverse]
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def pairwise_auc(features: torch.Tensor, labels: torch.Tensor) -> float:
    """ROC-AUC of the cosine similarity of every patch pair (i < j) for "same label?".

    ``features`` ``(N, C)``, ``labels`` ``(N,)``; patches with a negative label are left out.
    """
    keep = labels >= 0
    f = F.normalize(features[keep].float(), dim=-1)
    lab = labels[keep]
    n = lab.numel()
    if n < 2:
        return float("nan")
    i, j = torch.triu_indices(n, n, offset=1, device=f.device)
    sim = (f[i] * f[j]).sum(-1)
    return roc_auc(sim, lab[i] == lab[j])


def patch_labels(mask: np.ndarray | torch.Tensor, grid: tuple[int, int], ignore_index: int = 255,
                 min_fraction: float = 0.5) -> torch.Tensor:
    """Majority label per patch of a ``(H, W)`` label map divisible into ``grid`` cells; -1 where
    fewer than ``min_fraction`` of the cell's pixels carry it (ignore pixels never count)."""
    mask = torch.as_tensor(np.asarray(mask)).long()
    gh, gw = grid
    h, w = mask.shape
    ph, pw = h // gh, w // gw
    cells = mask[:gh * ph, :gw * pw].reshape(gh, ph, gw, pw).permute(0, 2, 1, 3).reshape(gh * gw, ph * pw)
    valid = cells != ignore_index
    safe = torch.where(valid, cells, torch.zeros_like(cells))
    num = int(safe.max()) + 1 if safe.numel() else 1
    counts = torch.zeros(gh * gw, num, dtype=torch.long)
    counts.scatter_add_(1, safe, valid.long())
    best, label = counts.max(dim=1)
    return torch.where(best >= min_fraction * ph * pw, label, torch.full_like(label, -1))


# ------------------------------------------------------------------------------------- samples
@dataclass
class Sample:
    """One labelled image prepared for the analyses."""

    x: torch.Tensor          # (1, 3, size, size) normalised input
    labels: torch.Tensor     # (N,) patch labels, -1 unknown


def _backbone(model) -> VisionBackbone:
    if isinstance(model, VisionBackbone):
        return model
    visual = getattr(model, "visual", None)
    if isinstance(visual, VisionBackbone):
        return visual
    raise TypeError("expected a tfovss ClipModel or VisionBackbone")


def prepare_sample(backbone, image, mask=None, size: int = 224, ignore_index: int = 255,
                   min_fraction: float = 0.5) -> Sample:
    """Square-resizes an image (and its label map) and normalises it with CLIP's mean / std."""
    bb = _backbone(backbone)
    rgb = load_image(image)
    device = next(bb.visual.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()[None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    grid = bb.grid_for(size, size)
    if mask is None:
        labels = torch.full((grid[0] * grid[1],), -1, dtype=torch.long)
    else:
        m = torch.as_tensor(np.asarray(mask)).float()[None, None]
        m = F.interpolate(m, size=(size, size), mode="nearest")[0, 0].long()
        labels = patch_labels(m, grid, ignore_index, min_fraction)
    return Sample(x=x.to(device), labels=labels.to(device))


def _samples(backbone, samples, size: int, ignore_index: int) -> list[Sample]:
    out = []
    for s in samples:
        out.append(s if isinstance(s, Sample) else prepare_sample(backbone, s[0], s[1], size, ignore_index))
    if not out:
        raise ConfigError("no samples given")
    return out


def _full_trunk(bb: VisionBackbone, x: torch.Tensor):
    return bb.run_trunk(x, TrunkRequest(depth=bb.depth, keep=frozenset(range(bb.depth))))


def _mean_auc(values: list[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else float("nan")


# ------------------------------------------------------------------------------------- layers
def layer_features(backbone, x: torch.Tensor, kind: str = "output") -> list[torch.Tensor]:
    """Patch features ``(B, N, C)`` of every block: its ``output`` (residual stream) or the
    ``query`` / ``key`` / ``value`` it computes from its input (heads concatenated)."""
    bb = _backbone(backbone)
    with torch.inference_mode():
        trunk = _full_trunk(bb, x)
        feats = []
        for i in range(bb.depth):
            if kind == "output":
                feats.append(trunk.outputs[i][:, 1:])
                continue
            block = bb.block(i)
            q, k, v = bb.qkv(block, block.ln_1(trunk.stream(i)))
            t = {"query": q, "key": k, "value": v}[kind]
            feats.append(t.transpose(1, 2).flatten(2)[:, 1:])
    return feats


def layer_discriminability(backbone, samples: Iterable, kind: str = "output", size: int = 224,
                           ignore_index: int = 255) -> list[float]:
    """Mean per-image pair AUC of each block's features (index i = output of ``blocks[i]``)."""
    bb = _backbone(backbone)
    per_layer: list[list[float]] = [[] for _ in range(bb.depth)]
    for s in _samples(bb, samples, size, ignore_index):
        for i, f in enumerate(layer_features(bb, s.x, kind)):
            per_layer[i].append(pairwise_auc(f[0], s.labels))
    return [_mean_auc(v) for v in per_layer]


def feature_coherence(backbone, samples: Iterable, size: int = 224, ignore_index: int = 255) -> list[float]:
    """Liu et al.'s intra-image feature coherence M of each block's keys."""
    return layer_discriminability(backbone, samples, "key", size, ignore_index)


def head_discriminability(backbone, samples: Iterable, size: int = 224, ignore_index: int = 255,
                          atr_tau: float | None = 0.5, atr_sigma: float | None = 1.0,
                          candidates: str = "before_last") -> np.ndarray:
    """``(blocks, heads)`` mean pair AUC of each head's contribution (LHT-CLIP's head analysis), ATR
    applied with the penultimate output's flags. ``candidates="before_last"``: the blocks before the
    final one (132 heads on B/16, our default pool); ``"all"``: every block (the text's 144; the
    final block's heads with its stock attention on the penultimate stream)."""
    bb = _backbone(backbone)
    if candidates not in ("before_last", "all"):
        raise ConfigError(f"head candidates must be 'before_last' or 'all', got {candidates!r}")
    pool = bb.depth if candidates == "all" else bb.depth - 1
    values = [[[] for _ in range(bb.heads)] for _ in range(pool)]
    for s in _samples(bb, samples, size, ignore_index):
        with torch.inference_mode():
            trunk = bb.run_trunk(s.x, TrunkRequest(depth=bb.depth - 1, keep=frozenset(range(bb.depth - 1))))
            grid = trunk.grid
            flags = abnormal_tokens(trunk.x[:, 1:], atr_tau) if atr_tau is not None else None
            for layer in range(pool):
                contrib = head_contributions(bb, layer, trunk.stream(layer), range(bb.heads))[0, :, 1:]
                if flags is not None:
                    contrib = neighbour_fill(contrib, flags.expand(bb.heads, -1), grid, atr_sigma)
                for h in range(bb.heads):
                    values[layer][h].append(pairwise_auc(contrib[h], s.labels))
    return np.array([[_mean_auc(v) for v in row] for row in values])


# ------------------------------------------------------------------------------------- tokens
def abnormal_token_stats(backbone, x: torch.Tensor, layers: Sequence[int] | None = None,
                         atr_tau: float = 0.5, lof_neighbors: int = 30, contamination: float = 0.05) -> list[dict]:
    """Per block (default: all) for the first image of ``x``: Hoyer sparsity, L2 norm, LOF score
    of every patch token of its output, and the LOF outliers / ATR flags (patch indices)."""
    bb = _backbone(backbone)
    with torch.inference_mode():
        trunk = _full_trunk(bb, x[:1])
        out = []
        for i in (range(bb.depth) if layers is None else layers):
            p = trunk.outputs[i][:, 1:]
            lof_mask, lof_score = lof_outliers(p, lof_neighbors, contamination)
            flags = abnormal_tokens(p, atr_tau)
            out.append({"layer": i, "hoyer": hoyer_sparsity(p)[0].tolist(), "norm": p.norm(dim=-1)[0].tolist(),
                        "lof": lof_score[0].tolist(),
                        "lof_outliers": lof_mask[0].nonzero().flatten().tolist(),
                        "atr_flags": flags[0].nonzero().flatten().tolist()})
    return out


def global_token_stats(backbone, x: torch.Tensor, top: int = 5) -> list[dict]:
    """Per block for the first image of ``x``: the share of attention its ``top`` most attended
    patch tokens receive (GCLIP's global tokens) and which tokens they are (patch indices)."""
    bb = _backbone(backbone)
    with torch.inference_mode():
        trunk = _full_trunk(bb, x[:1])
        out = []
        for i in range(bb.depth):
            probs = bb.attention_probs(i, trunk.stream(i))
            received = probs.mean(dim=(1, 2))[0, 1:]
            tokens = received.topk(min(top, received.numel())).indices
            out.append({"block": i, "top_mass": float(top_token_mass(probs, top)[0]), "top_tokens": tokens.tolist()})
    return out


def ffn_channel_stats(backbone, ratio_thd: float = 3.0) -> list[dict]:
    """Per block: the ``mlp.c_proj`` output channel with the largest weight norm, its ratio to the
    median row norm, and whether it is flagged (GCLIP's abnormal channel)."""
    bb = _backbone(backbone)
    out = []
    for i in range(bb.depth):
        w = bb.block(i).mlp.c_proj.weight
        norms = w.detach().float().norm(dim=1)
        channel, ratio = channel_norm_outliers(w, 0.0)
        out.append({"block": i, "channel": channel, "max_norm": float(norms.max()),
                    "median_norm": float(norms.median()), "ratio": ratio, "flagged": ratio >= ratio_thd})
    return out


def abnormal_channels(backbone, ratio_thd: float = 3.0) -> dict[int, int]:
    """``{block: channel}`` flagged by :func:`ffn_channel_stats` (what GCLIP suppresses)."""
    return abnormal_ffn_channels(_backbone(backbone), ratio_thd)


# ------------------------------------------------------------------------------------- calibration
def calibrate(model, samples: Iterable, top_k: int = 10, size: int = 224, ignore_index: int = 255,
              name: str | None = None, directory: str | os.PathLike | None = None,
              candidates: str = "before_last") -> dict:
    """Picks LHT-CLIP's top-k SHE heads (the text's selection; from the ``candidates`` pool, see
    :func:`head_discriminability`) and Liu et al.'s k_M layer from labelled ``(image, mask)``
    pairs; saves the profile as ``<name>.json`` when ``name`` is given (see :func:`save_profile`).
    LHT-CLIP uses it with ``profile=<name>`` (``she_top_k`` cuts the stored ranking)."""
    bb = _backbone(model)
    prepared = _samples(bb, samples, size, ignore_index)
    heads = head_discriminability(bb, prepared, size, ignore_index, candidates=candidates)
    coherence = feature_coherence(bb, prepared, size, ignore_index)
    layers = layer_discriminability(bb, prepared, "output", size, ignore_index)
    flat = np.nan_to_num(heads, nan=-np.inf).reshape(-1)
    order = np.argsort(-flat, kind="stable")[:top_k]
    she_heads = [[int(k // bb.heads), int(k % bb.heads)] for k in order if np.isfinite(flat[k])]
    finite = np.nan_to_num(np.asarray(coherence), nan=-np.inf)
    profile = {
        "format": PROFILE_FORMAT,
        "backbone": {"profile": bb.profile.name, "depth": bb.depth, "width": bb.width, "heads": bb.heads,
                     "patch": bb.patch},
        "model": model.describe() if hasattr(model, "describe") and not isinstance(model, VisionBackbone) else None,
        "samples": len(prepared), "size": size,
        "lht": {"she_heads": she_heads, "top_k": top_k, "candidates": candidates,
                "head_auc": np.round(heads, 6).tolist()},
        "unveil": {"coherence_layer_idx": int(np.argmax(finite)) if np.isfinite(finite).any() else None,
                   "coherence": [round(v, 6) for v in coherence]},
        "layer_auc": [round(v, 6) for v in layers],
        "note": "calibrated with tfovss_core.analysis.calibrate; indices are 0-based blocks / heads",
    }
    if name:
        save_profile(profile, name, directory)
    return profile
