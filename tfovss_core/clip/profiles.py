"""Backbone profiles: which published family a vision tower belongs to (by depth and width).

A method's per-backbone constants (SC-CLIP's adjustment indices, ResCLIP's RCS layers, LHT-CLIP's
SSR layers, ...) live on the method's card (:mod:`tfovss_core.methods.card`), keyed by the profile
names here, and are never code branches. Constant names ending in ``_idx``, ``_layers`` or
``_blocks`` are 0-based block indices; for a depth without a published profile they are rescaled
from the ViT-B/16 values (``round(i * depth / 12)``, at most ``depth - 2``) by
:func:`scale_block_indices`, and a warning says so.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class BackboneProfile:
    name: str
    depth: int
    width: int
    source: str = ""
    scaled_from: str | None = None  # set when a method's constants must be depth-scaled from this profile


_PROFILES: dict[str, BackboneProfile] = {}


def register_profile(profile: BackboneProfile) -> BackboneProfile:
    _PROFILES[profile.name] = profile
    return profile


# ViT-B/16 constants on the cards are the official repos' defaults; ViT-L/14 values are given
# where a repo or paper states them (sources beside each card's entry).
REFERENCE_PROFILE = register_profile(BackboneProfile(
    name="ViT-B/16", depth=12, width=768,
    source="official repos' ViT-B/16 defaults; paper-based methods as documented per entry"))
register_profile(BackboneProfile(
    name="ViT-L/14", depth=24, width=1024, source="official repos' ViT-L/14 values where published"))

_INDEX_SUFFIXES = ("_idx", "_layers", "_blocks")


def _is_index_key(key: str) -> bool:
    return key.endswith(_INDEX_SUFFIXES)


def _scale(value: Any, depth: int, ref_depth: int, exclusive_end: bool = False) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        # indices point at intermediate outputs, i.e. blocks before the last one; an exclusive
        # end index (``*_end_idx``) may reach the last block's index
        top = depth - 1 if exclusive_end else depth - 2
        return min(max(int(round(value * depth / ref_depth)), 0), max(top, 0))
    if isinstance(value, (list, tuple)):
        scaled = [_scale(v, depth, ref_depth) for v in value]
        return type(value)(dict.fromkeys(scaled))  # keep order, drop duplicates
    return value


def scale_block_indices(constants: Mapping[str, Any], depth: int, ref_depth: int) -> dict[str, Any]:
    """``constants`` published for a ``ref_depth``-block ViT, with block indices rescaled to ``depth``."""
    return {k: (_scale(v, depth, ref_depth, k.endswith("_end_idx")) if _is_index_key(k) else v)
            for k, v in constants.items()}


def profile_for(depth: int, width: int) -> BackboneProfile:
    """The profile of a vision tower with ``depth`` blocks of ``width`` channels."""
    for profile in _PROFILES.values():
        if profile.depth == depth and profile.width == width:
            return profile
    for profile in _PROFILES.values():  # same depth, other width (e.g. a ViT-B/32): same indices
        if profile.depth == depth:
            return profile
    ref = REFERENCE_PROFILE
    warnings.warn(
        f"No published layer constants for a {depth}-block ViT; using {ref.name}'s rescaled by "
        f"depth ({depth}/{ref.depth}). Methods that use layer indices may need calibration.",
        stacklevel=2)
    return BackboneProfile(name=f"ViT-{depth}x{width}", depth=depth, width=width,
                           source="depth-scaled", scaled_from=ref.name)


def list_profiles() -> list[str]:
    return list(_PROFILES)


def get_profile(name: str) -> BackboneProfile:
    return _PROFILES[name]
