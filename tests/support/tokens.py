"""Hand-made token grids for the token-level pieces of the methods (neighbour fills, flags)."""
from __future__ import annotations

import torch


def grid_tokens(values, shape) -> torch.Tensor:
    """``values`` (row-major over a ``shape`` grid) as a ``(1, H*W, 1)`` float64 token tensor."""
    return torch.tensor(values, dtype=torch.float64).view(1, shape[0] * shape[1], 1)


def token_flags(indices, n: int) -> torch.Tensor:
    """A ``(1, n)`` boolean mask with the tokens at ``indices`` set."""
    flags = torch.zeros(1, n, dtype=torch.bool)
    flags[0, list(indices)] = True
    return flags
