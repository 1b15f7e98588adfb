"""PAMR: pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as the SCLIP family uses it.

Same computation as the ``pamr.py`` shipped by SCLIP / NACLIP / ResCLIP (from visinf/1-stage-wseg),
written with shifted slices instead of fixed convolution kernels and chunked over mask channels so
large vocabularies on large images stay within memory.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

# The eight neighbours in the reference kernel order (row-major 3x3 without the centre).
_NEIGHBOURS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
_WINDOW = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 0), (0, 1), (1, -1), (1, 0), (1, 1)]


def _shifted(x: torch.Tensor, offsets, dilations: Sequence[int]) -> torch.Tensor:
    """``(B, K, P, H, W)``: ``x`` sampled at every offset x dilation, replicate-padded borders."""
    h, w = x.shape[-2:]
    out = []
    for d in dilations:
        xp = F.pad(x, [d] * 4, mode="replicate")
        for dy, dx in offsets:
            out.append(xp[..., d + dy * d: d + dy * d + h, d + dx * d: d + dx * d + w])
    return torch.stack(out, dim=2)


def pamr_affinity(image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """Softmax-normalised neighbour affinities ``(B, 1, 8*len(dilations), H, W)`` of a guide image."""
    std = _shifted(image, _WINDOW, dilations).std(dim=2, keepdim=True)
    diff = (image.unsqueeze(2) - _shifted(image, _NEIGHBOURS, dilations)).abs()
    aff = -diff / (1e-8 + 0.1 * std)
    return torch.softmax(aff.mean(dim=1, keepdim=True), dim=2)


def pamr(image: torch.Tensor, mask: torch.Tensor, steps: int = 10, dilations: Sequence[int] = (8, 16),
         max_chunk_bytes: int = 1 << 29) -> torch.Tensor:
    """Refines ``mask`` ``(B, C, h, w)`` guided by ``image`` ``(B, 3, H, W)``; returns ``(B, C, H, W)``.

    The mask is first resized to the image with ``align_corners=True`` (as the reference does).
    """
    mask = F.interpolate(mask, size=image.shape[-2:], mode="bilinear", align_corners=True)
    if steps <= 0:
        return mask
    aff = pamr_affinity(image.to(mask.dtype), dilations)
    b, c, h, w = mask.shape
    per_channel = b * 4 * h * w * mask.element_size()   # padded copy, output, product
    chunk = max(1, min(c, max_chunk_bytes // max(1, per_channel)))
    outs = []
    for start in range(0, c, chunk):
        m = mask[:, start:start + chunk]
        for _ in range(steps):
            m = _propagate(m, aff, dilations)
        outs.append(m)
    return torch.cat(outs, dim=1)


def _propagate(m: torch.Tensor, aff: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """One PAMR step: ``sum_n aff_n * m_n`` accumulated neighbour by neighbour.

    Accumulating avoids materialising the ``8 * len(dilations)`` shifted copies of the mask (the
    reference stacks them); only the summation order differs (~1e-7 relative).
    """
    h, w = m.shape[-2:]
    out = torch.zeros_like(m)
    n = 0
    for d in dilations:
        mp = F.pad(m, [d] * 4, mode="replicate")
        for dy, dx in _NEIGHBOURS:
            out.addcmul_(mp[..., d + dy * d: d + dy * d + h, d + dx * d: d + dx * d + w], aff[:, :, n])
            n += 1
    return out
