"""Shared test fixtures.

The shared material (goldens, sample data) lives in ``../shared`` beside the checkout (CI puts it
there); ``TFOVSS_SHARED`` overrides the location. The installed product never reads it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("TFOVSS_SHARED", REPO_ROOT.parent / "shared")).resolve()
GOLDEN = SHARED / "golden"
DATA = SHARED / "data"


# Text embeddings are cached on disk; keep the tests' cache inside the checkout (gitignored) so
# repeated local runs are fast and CI starts clean.
os.environ.setdefault("TFOVSS_CACHE_DIR", str(REPO_ROOT / ".pytest_cache" / "tfovss"))

_weights_cache: dict = {}


def golden_state_dict(arch: str = "ViT-B/16", seed: int = 0):
    """The synthetic golden weights (OpenAI format), regenerated once per session and arch."""
    import sys
    key = (arch, seed)
    if key not in _weights_cache:
        sys.path.insert(0, str(GOLDEN))
        from make_weights import make_state_dict
        _weights_cache[key] = make_state_dict(arch, seed=seed, anomalies=True)
    return _weights_cache[key]


_models: dict = {}


def golden_model(arch: str = "ViT-B/16"):
    """A tfovss ClipModel of the golden weights (built once per session and arch)."""
    import tfovss_core as tc
    if arch not in _models:
        _models.clear()  # keep one big model in memory at a time
        _models[arch] = tc.load_clip(arch.replace("/", "-"), dict(golden_state_dict(arch)))
    return _models[arch]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared material not found at {SHARED} (set TFOVSS_SHARED)")
    return SHARED
