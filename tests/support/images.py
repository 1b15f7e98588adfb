"""Test images made from a seed, so that a test's input is the same on every run and machine."""
from __future__ import annotations

import numpy as np


def random_image(seed: int, height: int, width: int) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 RGB image of uniform noise from ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def write_bad_images(folder, good) -> tuple:
    """Three files a pre-label must list and go past, written into ``folder``: a file that is not
    an image (``corrupt.jpg``), ``good`` cut after 600 bytes or half its size if that is less
    (``truncated.jpg``: a JPEG whose data stops early) and a 16-bit grayscale PNG
    (``sixteen_bit.png``, which the core refuses rather than rescales). Returns their paths in
    that order."""
    from pathlib import Path

    from PIL import Image

    folder = Path(folder)
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(b"not an image at all" * 10)
    truncated = folder / "truncated.jpg"
    data = Path(good).read_bytes()
    truncated.write_bytes(data[:min(600, len(data) // 2)])
    deep = folder / "sixteen_bit.png"
    Image.fromarray(np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 13).save(deep)
    assert Image.open(deep).mode.startswith("I")
    return corrupt, truncated, deep
