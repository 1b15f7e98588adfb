"""Token affinities shared by the self-correlation methods (SC-CLIP, LHT-CLIP)."""
from __future__ import annotations

import torch


def row_normalised(weights: torch.Tensor) -> torch.Tensor:
    """Rows scaled to sum to one (the SCLIP family's ``+ 1e-6`` guard against empty rows)."""
    return weights / (weights.sum(dim=-1, keepdim=True) + 1e-6)


def cosine_similarity(t: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarity of the rows of ``t`` ``(..., N, C)`` -> ``(..., N, N)``."""
    t = t / t.norm(dim=-1, keepdim=True)
    return t @ t.transpose(-1, -2)
