"""Test images made from a seed, so that a test's input is the same on every run and machine."""
from __future__ import annotations

import numpy as np


def random_image(seed: int, height: int, width: int) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 RGB image of uniform noise from ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
