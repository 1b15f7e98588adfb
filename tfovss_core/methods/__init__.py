"""The method registry: one module a method, ending with its card and ``register_method(CARD)``.

A method is its module (a :class:`Method` subclass) plus its :class:`MethodCard` (options with
provenance, protocol, per-backbone constants, per-dataset settings with sources, aliases, add-on
hosts; see :mod:`tfovss_core.methods.card`). Nothing else names a method.

Names with ``+`` compose an add-on onto a host method (``clearclip+lht``, ``sclip+atr+ssr``): the
add-on's card (``MethodCard.addon``) lists its components and hosts and composes the class.

Methods from outside the package register the same way, from a module that is imported when the
registry loads: a module named in ``$TFOVSS_METHOD_MODULES`` (comma-separated module names on the
Python path), or an entry point in the group ``tfovss.methods`` (pointing at a module, or at a card).
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from importlib import metadata

from tfovss_core.errors import ConfigError
from tfovss_core.methods.base import LastBlockMethod, Method, MethodInfo, option
from tfovss_core.methods.card import AddonCard, MethodCard
from tfovss_core.methods.dataset_settings import resolve_settings
from tfovss_core.spec import presets
from tfovss_core.spec.presets import canonical_name

#: environment variable naming extra method modules (comma-separated), imported with the built-ins
METHOD_MODULES_ENV = "TFOVSS_METHOD_MODULES"
#: entry-point group of method plugins (a module, or a :class:`MethodCard`)
ENTRY_POINT_GROUP = "tfovss.methods"
# modules of this package that are not methods
_SUPPORT_MODULES = frozenset({"base", "card", "dataset_settings"})

_CARDS: dict[str, MethodCard] = {}
_ALIASES: dict[str, str] = {}          # canonical alias -> method name
_ADDONS: dict[str, AddonCard] = {}     # every name accepted after "+" -> its add-on
_loaded = False


def register_method(card: MethodCard | type[Method]) -> type[Method]:
    """Registers a method from its card (a bare class gets a card holding only itself).

    Returns the method class, so ``register_method`` also works as a class decorator. The card's
    ``protocol`` becomes the class's ``default_settings``; the class gets ``card``.
    """
    if isinstance(card, type) and issubclass(card, Method):
        card = card.__dict__.get("card") or MethodCard(method=card)
    if not isinstance(card, MethodCard):
        raise TypeError(f"register_method takes a MethodCard or a Method subclass, not {card!r}")
    cls, name = card.method, card.name
    if name in _CARDS and _CARDS[name].method is not cls:
        raise ValueError(f"method name {name!r} registered twice")
    aliases = {canonical_name(a) for a in card.aliases} - {name}
    taken = sorted(a for a in aliases if (_ALIASES.get(a, name) != name) or (a in _CARDS and a != name))
    if taken:
        raise ValueError(f"alias(es) {taken} of method {name!r} already name another method")
    if card.addon is not None:
        clash = sorted(n for n in card.addon.names if _ADDONS.get(n, card.addon) is not card.addon)
        if clash:
            raise ValueError(f"add-on name(s) {clash} of method {name!r} already belong to another add-on")
    cls.card = card
    if card.protocol:
        cls.default_settings = dict(card.protocol)
    _CARDS[name] = card
    for alias in aliases:
        _ALIASES[alias] = name
    if card.addon is not None:
        for n in card.addon.names:
            _ADDONS[n] = card.addon
    return cls


def unregister_method(name: str) -> None:
    """Removes a method, its aliases and its add-on (tests, plugins that reload their module)."""
    card = _CARDS.pop(name, None)
    if card is None:
        raise ConfigError(f"unknown method {name!r}; registered: {', '.join(_CARDS)}")
    for alias in [a for a, target in _ALIASES.items() if target == name]:
        del _ALIASES[alias]
    for n in [n for n, addon in _ADDONS.items() if addon is card.addon]:
        del _ADDONS[n]


def _import_plugin(module: str, origin: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as exc:
        raise ConfigError(f"method module {module!r} (from {origin}) failed to import: {exc}") from exc


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True     # before importing: method modules import this package and may look names up
    try:
        for mod in pkgutil.iter_modules(__path__):
            if mod.name not in _SUPPORT_MODULES and not mod.name.startswith("_"):
                importlib.import_module(f"{__name__}.{mod.name}")
        for module in filter(None, (m.strip() for m in os.environ.get(METHOD_MODULES_ENV, "").split(","))):
            _import_plugin(module, f"${METHOD_MODULES_ENV}")
        for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                loaded = entry.load()
            except Exception as exc:
                raise ConfigError(f"method entry point {entry.name!r} ({entry.value}, group "
                                  f"{ENTRY_POINT_GROUP!r}) failed to load: {exc}") from exc
            if isinstance(loaded, MethodCard):
                register_method(loaded)
    except BaseException:
        _loaded = False
        raise


def list_methods(include_composed: bool = False) -> list[str]:
    _load_all()
    names = list(_CARDS)
    if include_composed:
        names += [n for n in composed_examples()]
    return names


def list_addons() -> list[AddonCard]:
    """The registered add-ons (each once)."""
    _load_all()
    return list({id(a): a for a in _ADDONS.values()}.values())


def addons_for(host: str) -> list[AddonCard]:
    """The add-ons that compose onto ``host`` (a method name or alias)."""
    cls = get_method_class(host)
    return [a for a in list_addons() if cls.name in a.hosts]


def composed_examples() -> list[str]:
    return [f"{host}+{addon.name}" for addon in list_addons() for host in addon.hosts]


def _card_or_none(name: str) -> MethodCard | None:
    _load_all()
    key = str(name).strip().lower()
    if key in _CARDS:
        return _CARDS[key]
    key = canonical_name(key)
    return _CARDS.get(_ALIASES.get(key, key))


def method_card(name: str) -> MethodCard:
    """The card of a registered method (by name or alias)."""
    card = _card_or_none(name)
    if card is None:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(list_methods())}")
    return card


def get_method_class(name: str) -> type[Method]:
    _load_all()
    key = str(name).strip().lower()
    card = _card_or_none(key)
    if card is not None:
        return card.method
    if "+" in key:
        host, *components = key.split("+")
        host_cls = get_method_class(host)
        addons = {id(a): a for a in (_ADDONS.get(c.strip()) for c in components) if a is not None}
        unknown = [c for c in components if c.strip() not in _ADDONS]
        if unknown or len(addons) != 1:
            raise ConfigError(f"unknown add-on(s) {unknown or components} in {name!r}; add-ons: "
                              f"{sorted(a.name for a in list_addons()) or 'none'} "
                              "(components of one add-on per name)")
        addon = next(iter(addons.values()))
        if host_cls.name not in addon.hosts:
            raise ConfigError(f"the {addon.title} add-on works on {', '.join(addon.hosts)}, not {host_cls.name!r}")
        return addon.compose(host_cls, tuple(components))
    raise ConfigError(f"unknown method {name!r}; available: {', '.join(list_methods(include_composed=True))}")


def method_settings(method: str, dataset: str, arch_depth: int | None = None) -> dict:
    """The official inference settings of ``method`` on ``dataset``, from the method's card.

    ``method`` may be an alias ("SC-CLIP") and may carry add-on suffixes ("clearclip+lht",
    "sclip+atr+ssr"): the host before the first "+" selects the settings and the add-on's card
    adjusts them (LHT-CLIP switches PAMR off). ``arch_depth=24`` applies the ViT-L/14 overrides
    where the official repo gives them (SC-CLIP on VOC21 / COCO-Object). A method without settings
    gets the default protocol with ``"official": False``. Keys: short_side, max_long_side, crop
    (0 = whole image), stride, logit_scale, prob_thd, area_thd, pamr_steps, pamr_dilations,
    class_file, source, official, method, dataset, plus method extras (ResCLIP: temp_thd, ...).
    ``tfovss_core.spec.presets.method_settings`` is an alias of this function.
    """
    return resolve_settings(_card_or_none, lambda n: _ADDONS.get(n), method, dataset, arch_depth)


presets.set_method_settings_provider(method_settings)


def create_method(name: str, backbone, **options) -> Method:
    cls = get_method_class(name)
    return cls(backbone, cls.make_options(**options))


def describe_method(name: str) -> dict:
    """Name, paper, code, paper-based flag, every option with type, default, doc and source, and
    the card's aliases, per-backbone constants, dataset sources and add-ons."""
    import typing
    cls = get_method_class(name)
    hints = typing.get_type_hints(cls.Options)
    options = []
    for f in cls.option_fields():
        default = f.default if f.default is not f.default_factory else None  # type: ignore[comparison-overlap]
        if callable(getattr(f, "default_factory", None)) and f.default_factory is not None and \
                f.default_factory.__class__.__name__ != "_MISSING_TYPE":
            default = f.default_factory()
        options.append({"name": f.name, "type": str(hints.get(f.name, "")).replace("typing.", ""),
                        "default": list(default) if isinstance(default, tuple) else default,
                        "doc": f.metadata.get("doc", ""), "source": f.metadata.get("source", "authors"),
                        **({"choices": list(f.metadata["choices"])} if "choices" in f.metadata else {}),
                        **{k: f.metadata[k] for k in ("reading", "passage") if k in f.metadata}})
    info = cls.info
    return {"name": cls.name, "title": info.title, "paper": info.paper, "official_code": info.official_code,
            "paper_based": info.paper_based, "summary": info.summary, "options": options,
            "default_settings": dict(cls.default_settings), "renormalize_probs": cls.renormalize_probs,
            **_card_facts(name, cls)}


def _card_facts(name: str, cls: type[Method]) -> dict:
    card = cls.__dict__.get("card")
    if card is None:   # a composed add-on class: its host's card carries the settings
        return {"aliases": [], "constants": {}, "dataset_sources": {}, "addons": []}
    sources = {ds: method_settings(name, ds)["source"] for ds in presets.list_presets()}
    return {"aliases": list(card.aliases),
            "constants": {profile: _jsonable(values) for profile, values in card.constants.items()},
            "dataset_sources": sources,
            "addons": [{"name": a.name, "title": a.title, "components": list(a.components)}
                       for a in list_addons() if cls.name in a.hosts]}


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


__all__ = ["Method", "LastBlockMethod", "MethodInfo", "MethodCard", "AddonCard", "option", "register_method",
           "unregister_method", "list_methods", "list_addons", "addons_for", "method_card", "get_method_class",
           "create_method", "describe_method", "method_settings", "METHOD_MODULES_ENV", "ENTRY_POINT_GROUP"]
