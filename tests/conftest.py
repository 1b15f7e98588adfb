"""Fixtures for every test. Helpers live in :mod:`support` (``tests/support``), so test modules
import them by name instead of from a conftest."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from support.images import random_image
from support.paths import REPO_ROOT, SHARED
from tfovss_core.clip.synthetic import tiny_clip

# Text embeddings are cached on disk; keep the tests' cache inside the checkout (gitignored) so
# repeated local runs are fast and CI starts clean.
os.environ.setdefault("TFOVSS_CACHE_DIR", str(REPO_ROOT / ".pytest_cache" / "tfovss"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared material not found at {SHARED} (set TFOVSS_SHARED)")
    return SHARED


@pytest.fixture(scope="module")
def tiny():
    """A tiny random CLIP (3 blocks, seed 0), built once per test module. Modules that need another
    depth or seed define their own ``tiny``, which takes precedence over this one."""
    return tiny_clip(seed=0)


@pytest.fixture(scope="module")
def image():
    """A 100x140 noise image (seed 0); modules that need another size define their own ``image``."""
    return random_image(0, 100, 140)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray on loopback with 2 CPUs in a temp dir, for every test module that needs one
    (or the Ray already running, left running); stopped and its dir removed at the end."""
    ray = pytest.importorskip("ray", reason='ray is not installed (pip install "tfovss[ray]")')
    from tfovss_core.engine.ray_executor import start_local_ray

    if ray.is_initialized():
        yield ray
        return
    tmp = tempfile.mkdtemp(prefix="tfovss-ray-")
    start_local_ray(num_cpus=2, temp_dir=tmp)
    try:
        assert [n["NodeManagerAddress"] for n in ray.nodes()] == ["127.0.0.1"]
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
