"""Colour palettes, overlays and index-mask PNGs for segmentation outputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def palette(num_classes: int) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved), extended to any number of classes."""
    colours = np.zeros((max(num_classes, 1), 3), dtype=np.uint8)
    for i in range(len(colours)):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours[i] = (r, g, b)
    return colours


def save_index_mask(mask: np.ndarray, path: str | Path, num_classes: int) -> None:
    """Class-index PNG: 8-bit palette PNG for <= 256 classes (viewers show colours, the pixel
    *index* is the class), 16-bit greyscale otherwise."""
    path = Path(path)
    if num_classes <= 256:
        im = Image.fromarray(mask.astype(np.uint8), mode="P")
        im.putpalette(palette(256).flatten().tolist())
    else:
        im = Image.fromarray(mask.astype(np.uint16))
    im.save(path)


def overlay(image: np.ndarray, mask: np.ndarray, class_names: list[str], *, alpha: float = 0.5,
            banner: str | None = None) -> Image.Image:
    """The image blended with the class colours, plus a legend of the classes present."""
    colours = palette(len(class_names))
    blended = (image.astype(np.float32) * (1 - alpha) + colours[mask].astype(np.float32) * alpha)
    canvas = Image.fromarray(blended.clip(0, 255).astype(np.uint8))
    present = [int(c) for c, n in zip(*np.unique(mask, return_counts=True)) if n > 0]
    present.sort(key=lambda c: -(mask == c).sum())
    font = ImageFont.load_default()
    line = 14
    legend_h = line * ((len(present[:12]) + 2) // 3) + 6 + (line + 4 if banner else 0)
    out = Image.new("RGB", (canvas.width, canvas.height + legend_h), (255, 255, 255))
    out.paste(canvas, (0, 0))
    draw = ImageDraw.Draw(out)
    y0 = canvas.height + 3
    if banner:
        draw.rectangle([0, y0 - 3, out.width, y0 + line], fill=(200, 30, 30))
        draw.text((4, y0), banner, fill=(255, 255, 255), font=font)
        y0 += line + 4
    col_w = max(out.width // 3, 1)
    for k, c in enumerate(present[:12]):
        x, y = (k % 3) * col_w + 4, y0 + (k // 3) * line
        draw.rectangle([x, y + 2, x + 10, y + 11], fill=tuple(int(v) for v in colours[c]), outline=(0, 0, 0))
        draw.text((x + 14, y), f"{c}: {class_names[c]}"[:40], fill=(0, 0, 0), font=font)
    return out
