"""Fixtures for every test. Helpers live in :mod:`support` (``tests/support``), so test modules
import them by name instead of from a conftest."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from support.paths import REPO_ROOT, SHARED

# Text embeddings are cached on disk; keep the tests' cache inside the checkout (gitignored) so
# repeated local runs are fast and CI starts clean.
os.environ.setdefault("TFOVSS_CACHE_DIR", str(REPO_ROOT / ".pytest_cache" / "tfovss"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared material not found at {SHARED} (set TFOVSS_SHARED)")
    return SHARED
