"""The official per-dataset settings of a method, read from its card.

``method_settings("scclip", "voc21", arch_depth=24)`` -> short side, sliding window, logit scale,
thresholds, PAMR, class file, method extras and ``source``. A card either lists its datasets
(``card.datasets``) or ``inherit``s another method's (methods without official code); an add-on
(``"clearclip+lht"``) takes its host's settings and lets the add-on's card adjust them. Methods
without settings of their own get :func:`tfovss_core.spec.presets.default_protocol`.
"""
from __future__ import annotations

import copy
from typing import Callable

from tfovss_core.methods.card import MethodCard
from tfovss_core.spec.presets import canonical_name, default_protocol, get_preset


def resolve_settings(find_card: Callable[[str], MethodCard | None], find_addon: Callable,
                     method: str, dataset: str, arch_depth: int | None = None) -> dict:
    """``method_settings`` over the cards that ``find_card`` (name -> card or None) knows."""
    preset = get_preset(dataset)
    host, *addons = [canonical_name(p) for p in str(method).split("+")]
    addons = [a for a in addons if a]
    card = find_card(host) if host != "default" else None
    entry = _card_entry(find_card, card, preset) if card is not None else None
    if entry is None:
        entry = default_protocol(card.name if card is not None else host, preset.name)
    overrides = entry.pop("overrides_by_depth", None) or {}
    if arch_depth is not None and str(int(arch_depth)) in overrides:
        override = dict(overrides[str(int(arch_depth))])
        override_source = override.pop("source", "")
        entry.update(override)
        entry["arch_overrides"] = override
        entry["source"] = f"{entry['source']}; depth-{int(arch_depth)} override" + (
            f": {override_source}" if override_source else "")
    if addons:
        entry["addons"] = addons
        seen = []
        for name in addons:
            addon = find_addon(name)
            if addon is not None and addon not in seen:
                seen.append(addon)
                if addon.adjust_settings is not None:
                    entry = addon.adjust_settings(entry)
    entry["method"] = str(method)
    entry["dataset"] = preset.name
    return entry


def _card_entry(find_card, card: MethodCard, preset, seen: tuple[str, ...] = ()) -> dict | None:
    """The card's entry for ``preset`` (``inherit`` resolved), or None when it has none."""
    if card.name in seen:
        return None
    if card.inherit is not None:
        base_card = find_card(card.inherit)
        base = _card_entry(find_card, base_card, preset, seen + (card.name,)) if base_card else None
        if base is None:
            return None
        entry = copy.deepcopy(base)
        entry.update(copy.deepcopy(dict(card.overrides)))
        if card.class_family:
            entry["class_file"] = preset.class_file(card.class_family)
        entry["inherit"] = card.inherit
        entry["official"] = False
        if card.paper_based:
            entry["paper_based"] = True
        if card.note:
            entry["note"] = card.note
        entry["source"] = (f"paper-based ({card.display_name or card.name}, no official code): settings of "
                           f"'{card.inherit}' [{base['source']}]")
        return entry
    if preset.name not in card.datasets:
        return None
    entry = copy.deepcopy(dict(card.datasets[preset.name]))
    entry.setdefault("official", bool(card.official) and not entry.get("guess", False))
    if card.note and "note" not in entry:
        entry["note"] = card.note
    return entry
