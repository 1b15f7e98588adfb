"""Reading and resizing input images (mmseg-style test pipeline).

One orientation rule for every reader: an image is the image as displayed, i.e. with its EXIF
Orientation applied (``PIL.ImageOps.exif_transpose``), for every format that carries EXIF (JPEG,
PNG ``eXIf``, WebP, TIFF). That is the size FiftyOne's metadata records and the App shows, and
the array the official cv2-based pipelines read (``cv2.imread`` with ``IMREAD_COLOR``, mmcv's
default ``color`` flag, rotates JPEG, PNG and WebP alike). Masks therefore align with the
photo a user sees. Arrays carry no EXIF and are taken as they are.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tfovss_core.errors import InputError

# CLIP's mean / std in 0-255 RGB units (the SCLIP-family SegDataPreProcessor).
CLIP_MEAN = (122.771, 116.746, 104.094)
CLIP_STD = (68.501, 66.632, 70.323)

ORIENTATION_TAG = 0x0112   # EXIF Orientation: 1 upright, 2-8 mirrored and/or rotated
_CONVERTIBLE_MODES = {"RGB", "L", "P", "CMYK", "YCbCr", "1", "RGBA", "LA", "PA", "RGBX"}


def image_label(image, name: str | None = None) -> str:
    if name:
        return name
    if isinstance(image, (str, os.PathLike)):
        return str(image)
    if isinstance(image, Image.Image) and getattr(image, "filename", None):
        return image.filename
    return "<in-memory image>"


def load_image(image, name: str | None = None) -> np.ndarray:
    """An RGB uint8 ``(H, W, 3)`` array from a path, a PIL image or an array.

    Files and PIL images are turned upright by their EXIF Orientation (the module's rule), so
    the array has the displayed size. Files and PIL images in 8-bit modes (greyscale, palette, CMYK, RGBA: alpha dropped) are
    converted to RGB, as dataset loaders do. Arrays must already be ``(H, W, 3)`` uint8 RGB.
    16-bit and float images are refused: their value range is ambiguous.
    """
    label = image_label(image, name)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise InputError(f"{label}: no such image file")
        try:
            with Image.open(path) as im:
                im.load()
                return _from_pil(upright(im), label)
        except InputError:
            raise
        except UnidentifiedImageError:  # PIL's message would repeat the path
            raise InputError(f"{label}: cannot decode the image file (not an image, or a format "
                             "Pillow cannot read)") from None
        except (OSError, ValueError, SyntaxError) as exc:
            detail = str(exc).replace(f"'{path}'", "the file").replace(str(path), "the file")
            raise InputError(f"{label}: cannot decode the image file ({detail})") from None
    if isinstance(image, Image.Image):
        return _from_pil(upright(image), label)
    if isinstance(image, np.ndarray):
        return _check_array(image, label)
    raise InputError(f"{label}: unsupported image type {type(image).__name__}; "
                     "pass a file path, a PIL image or an HxWx3 uint8 RGB array")


def upright(im: Image.Image) -> Image.Image:
    """The image as displayed: its EXIF Orientation applied (and the tag dropped), or itself."""
    if im.getexif().get(ORIENTATION_TAG, 1) in (None, 1):
        return im
    return ImageOps.exif_transpose(im)


def displayed_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image file as displayed (EXIF Orientation applied), without
    decoding the pixels."""
    with Image.open(path) as im:
        w, h = im.size
        return (h, w) if im.getexif().get(ORIENTATION_TAG) in (5, 6, 7, 8) else (w, h)


def _from_pil(im: Image.Image, label: str) -> np.ndarray:
    if im.mode not in _CONVERTIBLE_MODES:
        raise InputError(f"{label}: {im.mode!r} images (16-bit or float) are not supported; "
                         "convert to 8-bit RGB first")
    return _check_array(np.asarray(im.convert("RGB")), label)


def _check_array(arr: np.ndarray, label: str) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise InputError(f"{label}: image array has dtype {arr.dtype}, expected uint8 RGB "
                         "(scale 16-bit or float images to 0..255 uint8 first)")
    if arr.ndim == 2:
        raise InputError(f"{label}: greyscale array of shape {arr.shape}; expected HxWx3 RGB "
                         "(np.repeat(a[..., None], 3, axis=2) converts it)")
    if arr.ndim != 3 or arr.shape[2] != 3:
        hint = " (RGBA: drop the alpha channel, a[..., :3])" if arr.ndim == 3 and arr.shape[2] == 4 else ""
        raise InputError(f"{label}: image array of shape {arr.shape}; expected HxWx3 RGB{hint}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"{label}: empty image of shape {arr.shape}")
    return np.ascontiguousarray(arr)


def rescale_size(height: int, width: int, short_side: int, long_side: int = 2048) -> tuple[int, int]:
    """mmcv ``imrescale`` with ``scale=(long_side, short_side)``: keep ratio, short side -> S.

    factor = min(long / max(h, w), short / min(h, w)); new size = int(x * factor + 0.5).
    """
    factor = min(long_side / max(height, width), short_side / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_short_side(img: np.ndarray, short_side: int | None, long_side: int = 2048) -> np.ndarray:
    """Bilinear (cv2 INTER_LINEAR, as mmcv) keep-ratio resize; ``None`` leaves the image as is."""
    if not short_side:
        return img
    h, w = img.shape[:2]
    nh, nw = rescale_size(h, w, short_side, long_side)
    if (nh, nw) == (h, w):
        return img
    return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
