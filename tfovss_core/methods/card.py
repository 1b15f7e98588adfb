"""A method's card: everything the rest of tfovss needs to know about a method, kept beside it.

Each method module ends with ``CARD = MethodCard(method=..., ...)`` and ``register_method(CARD)``.
The card holds, in one place:

* the options with their provenance: the method class's ``Options`` dataclass
  (``option(source=...)``), reached as ``card.options``;
* ``protocol``: the driver settings the method's repository uses when no dataset preset is given;
* ``constants``: per-backbone constants by profile name (``"ViT-B/16"``, ``"ViT-L/14"``); a backbone
  without a published profile gets the ViT-B/16 values rescaled by depth
  (:func:`tfovss_core.clip.profiles.scale_block_indices`);
* ``datasets``: the official per-dataset inference settings, each with its ``source``
  (or ``inherit``: another method's settings, for methods without official code);
* ``aliases``: other spellings accepted wherever a method name is (``"SC-CLIP"`` -> ``scclip``);
* ``addon``: for an add-on (LHT-CLIP), its components, the hosts it composes with, and how it
  changes a host's dataset settings.

Pure data and callables: no torch here, so cards can be read by anything above ``methods``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from tfovss_core.clip.profiles import REFERENCE_PROFILE, BackboneProfile, scale_block_indices


@dataclass(frozen=True)
class AddonCard:
    """An add-on that composes onto host methods: ``"<host>+<component>[+<component>...]"``."""

    name: str                                  # the add-on's own name ("lht"): all components at once
    title: str                                 # shown in forms ("LHT-CLIP")
    components: tuple[str, ...]                # the parts that can be switched on one by one
    hosts: tuple[str, ...]                     # method names it composes with
    compose: Callable[[type, tuple[str, ...]], type]    # (host class, components) -> Method subclass
    # How the add-on changes a host's dataset settings (a new dict from the host's entry);
    # None keeps the host's settings.
    adjust_settings: Callable[[dict], dict] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """Every name accepted after a ``+``: the add-on itself and each component."""
        return (self.name, *self.components)


@dataclass(frozen=True)
class MethodCard:
    """What one method is, beside its module (see the module docstring)."""

    method: type                                        # the Method subclass
    protocol: Mapping[str, Any] = field(default_factory=dict)
    constants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    datasets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    addon: AddonCard | None = None
    # Settings of another method, for methods without official code (``datasets`` stays empty):
    inherit: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)      # applied on the inherited entry
    class_family: str | None = None    # class-file family replacing the inherited one's
    # Card-wide facts shown with the settings:
    display_name: str = ""
    repo: str | None = None            # "owner/repo" of the official code
    commit: str | None = None
    note: str = ""
    official: bool = True
    # The method's features do not read the text (no SFR-like use of a temporary segmentation):
    # encoded features then serve any vocabulary (tfovss_core.engine.features). False is the safe
    # default: such a method is re-run for every vocabulary.
    text_independent: bool = False

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def options(self) -> type:
        """The typed ``Options`` dataclass; each field says where its default comes from."""
        return self.method.Options

    @property
    def paper_based(self) -> bool:
        return bool(self.method.info.paper_based)

    def constants_for(self, profile: BackboneProfile) -> dict[str, Any]:
        """This method's constants for ``profile``: the published ones, or the reference profile's
        rescaled by depth when the profile itself was rescaled (``profile.scaled_from``)."""
        if profile.name in self.constants:
            return dict(self.constants[profile.name])
        if profile.scaled_from and profile.scaled_from in self.constants:
            return scale_block_indices(self.constants[profile.scaled_from], profile.depth,
                                       _REFERENCE_DEPTH[profile.scaled_from])
        return {}


# Depth of each profile that scaled constants can come from.
_REFERENCE_DEPTH = {REFERENCE_PROFILE.name: REFERENCE_PROFILE.depth}
