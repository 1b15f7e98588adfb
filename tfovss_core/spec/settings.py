"""The driver settings every method runs under: resize, windows, logit scale, thresholds, PAMR,
templates, batching and precision. Plain data (no torch), so presets, forms and run identities
can read and validate them cheaply."""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Any

from tfovss_core.errors import ConfigError


@dataclass
class Settings:
    """Driver settings. Defaults are SCLIP's protocol; methods and presets override them."""

    short_side: int | None = 336        # keep-ratio resize of the short side (None: no resize)
    max_long_side: int = 2048           # mmseg's Resize(scale=(2048, S)) cap on the long side
    crop: int = 224                     # sliding-window size; 0 = whole image in one pass
    stride: int = 112                   # sliding-window stride
    pad_to_patch: bool = False          # pad windows to a patch multiple (ClearCLIP/TCL) instead of flooring
    logit_scale: float = 40.0           # softmax temperature on cosine similarities
    prob_thd: float = 0.0               # pixels whose top class probability is lower -> class 0
    area_thd: float | None = None       # drop foreground classes with <= this share of the foreground
    pamr_steps: int = 0                 # PAMR iterations on the final logits (0 = off)
    pamr_dilations: tuple[int, ...] = (8, 16)
    templates: Any = "openai_imagenet"  # template-set name or a list of strings with "{}"
    batch_size: int = 16                # windows per forward pass; 0 = as many as fit a memory budget
    precision: str = "fp32"             # fp32 | fp16 | bf16: autocast of the ViT blocks (text, logits, merging stay fp32)

    def validate(self) -> None:
        if self.crop < 0 or (self.crop and self.stride <= 0):
            raise ConfigError(f"invalid windows: crop={self.crop}, stride={self.stride}")
        if self.short_side is not None and self.short_side <= 0:
            raise ConfigError(f"short_side must be positive or None, got {self.short_side}")
        if not 0 <= self.prob_thd <= 1:
            raise ConfigError(f"prob_thd must be in [0, 1], got {self.prob_thd}")
        if self.area_thd is not None and not 0 <= self.area_thd <= 1:
            raise ConfigError(f"area_thd must be in [0, 1] or None, got {self.area_thd}")
        if self.batch_size < 0:
            raise ConfigError(f"batch_size must be >= 1 (or 0 = automatic), got {self.batch_size}")
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise ConfigError(f"precision must be 'fp32', 'fp16' or 'bf16', got {self.precision!r}")


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(Settings))


def coerce_setting(name: str, value):
    hint = typing.get_type_hints(Settings)[name]
    if value is None or name == "templates":
        return tuple(value) if isinstance(value, list) else value
    try:
        if name == "pamr_dilations":
            return tuple(int(v) for v in (value.split(",") if isinstance(value, str) else value))
        base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        target = base[0]
        if target is bool and isinstance(value, str):
            return value.lower() in ("1", "true", "yes", "on")
        if target in (int, float):
            if isinstance(value, str) and value.lower() in ("none", "null", ""):
                return None
            return target(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name!r} expects {hint}, got {value!r}") from None
    return value


def parse_sets(items: list[str] | None) -> dict:
    """``--set key=value`` pairs; values are JSON when they parse as JSON (numbers, lists, null).

    Raises :class:`~tfovss_core.errors.ConfigError` on an item without ``=``.
    """
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value.strip())
        except json.JSONDecodeError:
            out[key.strip()] = value.strip()
    return out
