"""What a ``--pretrained`` / ``pretrained=`` string means: the one parser, with no torch.

Every entry point (core, CLI, benchmark, FiftyOne plugin) asks this module whether weights are
synthetic, so the flag on labels, run info, overlay banners and tables cannot disagree.

Kinds of spec:

* ``tag``: an open_clip pretrained tag (``openai``, ``laion2b_s34b_b88k``, ...);
* ``file``: a local checkpoint (the text contains a path separator, or names an existing file);
* ``tiny[:seedN]``: the tiny random CLIP of :mod:`tfovss_core.clip.synthetic` (whatever the
  architecture says);
* ``random[:seedN]``: a seeded random initialisation of the architecture by open_clip;
* ``synthetic[:seedN]``: the deterministic synthetic CLIP of a ``make_weights.py``-style script.

The last three are SYNTHETIC: their outputs mean nothing and every output made with them carries
:data:`SYNTHETIC_BANNER`. The seed may be written ``tiny``, ``tiny:3``, ``tiny:seed3`` or
``tiny:seed=3``.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: The one warning shown wherever synthetic output appears (overlays, run.json, tables, logs).
SYNTHETIC_BANNER = "SYNTHETIC WEIGHTS - random CLIP, output is NOT a real segmentation"
SYNTHETIC_KINDS = ("tiny", "random", "synthetic")
ENV_SYNTHETIC_SCRIPT = "TFOVSS_SYNTHETIC_WEIGHTS"

_SYNTHETIC_RE = re.compile(r"^(synthetic|tiny|random)(?::(?:seed)?=?(\d+))?$")


@dataclass(frozen=True)
class WeightsSpec:
    """A parsed pretrained spec: ``kind`` is ``tag``, ``file``, ``tiny``, ``random`` or ``synthetic``."""

    text: str          # as given, stripped
    kind: str
    seed: int = 0      # synthetic kinds only

    @property
    def is_synthetic(self) -> bool:
        return self.kind in SYNTHETIC_KINDS

    @property
    def label(self) -> str:
        """How tables and UIs name the weights: ``tiny:seed0``, ``file:ckpt.pt``, ``openai``."""
        if self.is_synthetic:
            return f"{self.kind}:seed{self.seed}"
        if self.kind == "file":
            return f"file:{Path(self.text).name}"
        return self.text


def parse_weights_spec(pretrained) -> WeightsSpec:
    """Parses a spec string (or path); raises ``ValueError`` for an empty one."""
    text = str(os.fspath(pretrained) if isinstance(pretrained, os.PathLike) else pretrained).strip()
    if not text:
        raise ValueError("empty weights spec: give an open_clip tag, a checkpoint path, or "
                         "tiny:SEED / random:SEED / synthetic:SEED")
    m = _SYNTHETIC_RE.match(text)
    if m:
        return WeightsSpec(text, m.group(1), int(m.group(2) or 0))
    if os.sep in text or (os.altsep and os.altsep in text) or Path(text).expanduser().exists():
        return WeightsSpec(text, "file")
    return WeightsSpec(text, "tag")


def is_synthetic(pretrained) -> bool:
    """True for ``tiny:`` / ``random:`` / ``synthetic:`` specs, and for the labels that loaded
    synthetic models carry (``ClipModel.pretrained`` = ``tiny:seed0``, ``random:seed2``, ...).
    State dicts, ``None`` and empty strings are not specs: False."""
    if pretrained is None or isinstance(pretrained, Mapping):
        return False
    if not isinstance(pretrained, (str, os.PathLike)):
        return False
    return bool(_SYNTHETIC_RE.match(str(pretrained).strip()))
