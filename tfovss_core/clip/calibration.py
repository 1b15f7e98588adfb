"""Calibration profiles: per-backbone choices (discriminative heads, coherent layer) measured by
:func:`tfovss_core.analysis.calibrate` and stored as JSON, read by the methods that use them."""
from __future__ import annotations

import json
import os
from pathlib import Path

from tfovss_core.clip.backbone import VisionBackbone
from tfovss_core.clip.text import default_cache_dir
from tfovss_core.errors import ConfigError

PROFILE_FORMAT = "tfovss-profile/1"


def profile_dir(directory: str | os.PathLike | None = None) -> Path:
    """Where profiles live: ``directory``, ``$TFOVSS_PROFILE_DIR``, or ``<tfovss cache>/profiles``."""
    if directory is not None:
        return Path(directory)
    env = os.environ.get("TFOVSS_PROFILE_DIR")
    return Path(env) if env else default_cache_dir() / "profiles"


def save_profile(profile: dict, name: str, directory: str | os.PathLike | None = None) -> Path:
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ConfigError(f"invalid profile name {name!r}")
    path = profile_dir(directory) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(profile, indent=1))
    tmp.replace(path)
    return path


def list_profiles(directory: str | os.PathLike | None = None) -> list[str]:
    d = profile_dir(directory)
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


def load_profile(name_or_path: str | os.PathLike, backbone=None, directory=None) -> dict:
    """A saved profile by name (in :func:`profile_dir`) or path; checked against ``backbone``."""
    path = Path(name_or_path)
    if not (path.suffix == ".json" and path.is_file()):
        path = profile_dir(directory) / f"{name_or_path}.json"
    if not path.is_file():
        raise ConfigError(f"no calibration profile {str(name_or_path)!r} (looked in {profile_dir(directory)}); "
                          f"make one with tfovss_core.analysis.calibrate(..., name=...)")
    profile = json.loads(path.read_text())
    if profile.get("format") != PROFILE_FORMAT:
        raise ConfigError(f"{path}: not a tfovss profile (format {profile.get('format')!r})")
    if backbone is not None:
        bb = backbone if isinstance(backbone, VisionBackbone) else backbone.visual  # a ClipModel
        have = profile.get("backbone", {})
        if (have.get("depth"), have.get("width")) != (bb.depth, bb.width):
            raise ConfigError(f"profile {path.name} was calibrated on a {have.get('depth')}-block, width "
                              f"{have.get('width')} ViT; this model has {bb.depth} blocks of width {bb.width}")
    return profile
