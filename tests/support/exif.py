"""Images with an EXIF Orientation tag, and what a viewer displays for them.

EXIF Orientation (tag 0x0112) says how the stored ("sensor") pixels must be turned to be shown
upright; ``DISPLAYED[o]`` applies it to a stored ``(H, W, 3)`` array, written from the EXIF
specification (independently of PIL, whose ``exif_transpose`` the product uses).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

ORIENTATION_TAG = 0x0112

DISPLAYED = {
    1: lambda a: a,                                  # upright
    2: lambda a: a[:, ::-1],                         # mirrored left-right
    3: lambda a: a[::-1, ::-1],                      # rotated 180
    4: lambda a: a[::-1],                            # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),               # mirrored along the main diagonal
    6: lambda a: np.rot90(a, -1),                    # stored 90 counter-clockwise: shown turned clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),   # mirrored along the anti-diagonal
    8: lambda a: np.rot90(a, 1),                     # shown turned counter-clockwise
}


def sensor_image(height: int = 48, width: int = 80) -> np.ndarray:
    """A landscape image with a distinctive red top-left quadrant on blue, and a horizontal
    green ramp, so that any flip or rotation changes it."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:] = (30, 60, 200)
    a[: height // 2, : width // 2] = (230, 30, 30)
    a[..., 1] = (np.arange(width) * 3 % 256).astype(np.uint8)[None, :]
    return a


def write_oriented(path: Path, stored: np.ndarray, orientation: int, fmt: str = "JPEG") -> np.ndarray:
    """Writes ``stored`` with an EXIF Orientation tag; returns the displayed pixels (the decoded
    stored pixels, turned as the tag says: JPEG is lossy, so decoded, not the input)."""
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    extra = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(stored).save(path, format=fmt, exif=exif.tobytes(), **extra)
    with Image.open(path) as im:                      # PIL never applies EXIF on its own
        assert im.getexif().get(ORIENTATION_TAG) == orientation
        decoded = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(DISPLAYED[orientation](decoded))
