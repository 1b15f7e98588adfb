"""The method registry: ``@register_method`` on a :class:`Method` subclass, one module a method.

Names with ``+`` compose add-ons onto a host method (e.g. ``clearclip+lht``): an add-on is a
function ``(host_class, components) -> class`` registered with :func:`register_addon`.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

from tfovss_core.errors import ConfigError
from tfovss_core.methods.base import LastBlockMethod, Method, MethodInfo, option

_METHODS: dict[str, type[Method]] = {}
_ADDONS: dict[str, Callable] = {}
_loaded = False


def register_method(cls: type[Method]) -> type[Method]:
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} registered twice")
    _METHODS[cls.name] = cls
    return cls


def register_addon(name: str, compose: Callable) -> None:
    """``compose(host_cls, components: tuple[str, ...]) -> Method subclass``."""
    _ADDONS[name] = compose


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in ("base",) and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")
    _loaded = True


def list_methods(include_composed: bool = False) -> list[str]:
    _load_all()
    names = list(_METHODS)
    if include_composed:
        names += [n for n in composed_examples()]
    return names


def composed_examples() -> list[str]:
    _load_all()
    out = []
    for addon, compose in _ADDONS.items():
        for host in getattr(compose, "hosts", ()):
            out.append(f"{host}+{addon}")
    return out


def get_method_class(name: str) -> type[Method]:
    _load_all()
    name = name.strip().lower()
    if name in _METHODS:
        return _METHODS[name]
    if "+" in name:
        host, *components = name.split("+")
        host_cls = get_method_class(host)
        for addon, compose in _ADDONS.items():
            parts = getattr(compose, "components", {addon})
            if all(c == addon or c in parts for c in components):
                return compose(host_cls, tuple(components))
        raise ConfigError(f"unknown add-on(s) {components} in {name!r}; add-ons: {sorted(_ADDONS) or 'none'}")
    raise ConfigError(f"unknown method {name!r}; available: {', '.join(list_methods(include_composed=True))}")


def create_method(name: str, backbone, **options) -> Method:
    cls = get_method_class(name)
    return cls(backbone, cls.make_options(**options))


def describe_method(name: str) -> dict:
    """Name, paper, code, paper-based flag and every option with type, default, doc and source."""
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
                        **({"choices": list(f.metadata["choices"])} if "choices" in f.metadata else {})})
    info = cls.info
    return {"name": cls.name, "title": info.title, "paper": info.paper, "official_code": info.official_code,
            "paper_based": info.paper_based, "summary": info.summary, "options": options,
            "default_settings": dict(cls.default_settings), "renormalize_probs": cls.renormalize_probs}


__all__ = ["Method", "LastBlockMethod", "MethodInfo", "option", "register_method", "register_addon",
           "list_methods", "get_method_class", "create_method", "describe_method"]
