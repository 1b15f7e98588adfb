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


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared material not found at {SHARED} (set TFOVSS_SHARED)")
    return SHARED
