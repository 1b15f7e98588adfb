"""Where the shared material lives, and the golden weights/model built once per session.

The shared material (goldens, sample data) lives in ``../shared`` beside the checkout (CI puts it
there); ``TFOVSS_SHARED`` overrides the location. The installed product never reads it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("TFOVSS_SHARED", REPO_ROOT.parent / "shared")).resolve()
GOLDEN = SHARED / "golden"
DATA = SHARED / "data"
# the sample photos in the checkout (the product's examples), unlike the shared material above
SAMPLES = REPO_ROOT / "samples"

_weights_cache: dict = {}
_models: dict = {}


def golden_state_dict(arch: str = "ViT-B/16", seed: int = 0):
    """The synthetic golden weights (OpenAI format), regenerated once per session and arch."""
    key = (arch, seed)
    if key not in _weights_cache:
        if str(GOLDEN) not in sys.path:
            sys.path.insert(0, str(GOLDEN))
        from make_weights import make_state_dict
        _weights_cache[key] = make_state_dict(arch, seed=seed, anomalies=True)
    return _weights_cache[key]


def golden_model(arch: str = "ViT-B/16"):
    """A tfovss ClipModel of the golden weights (built once per session and arch)."""
    import tfovss_core as tc
    if arch not in _models:
        _models.clear()  # keep one big model in memory at a time
        _models[arch] = tc.load_clip(arch.replace("/", "-"), dict(golden_state_dict(arch)))
    return _models[arch]
