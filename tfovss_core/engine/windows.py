"""Sliding-window geometry (mmseg's ``slide_inference``) and ClearCLIP/TCL's patch padding."""
from __future__ import annotations


def sliding_windows(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg-style windows ``(y1, y2, x1, x2)``; the last one is shifted back to end at the border.

    ``crop == 0`` (or an image no larger than the crop) gives one window. A window never exceeds
    the image: it shrinks to the image when the image is smaller than the crop.
    """
    if crop <= 0:
        return [(0, height, 0, width)]
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y1, x1 = r * stride, c * stride
            y2, x2 = min(y1 + crop, height), min(x1 + crop, width)
            boxes.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return boxes


def pad_to_multiple(height: int, width: int, patch: int) -> tuple[int, int, int, int]:
    """Symmetric zero padding (left, right, top, bottom) to a patch multiple (ClearCLIP/TCL)."""
    def split(n):
        extra = (-n) % patch
        return extra // 2, extra - extra // 2
    left, right = split(width)
    top, bottom = split(height)
    return left, right, top, bottom
