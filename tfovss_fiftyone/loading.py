"""Loading a CLIP for the FiftyOne side, with a small in-process cache so that operators re-run
cheaply. Used by :mod:`tfovss_fiftyone.model` (``apply_model``) and
:mod:`tfovss_fiftyone.prelabel`; it imports neither."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Mapping

__all__ = ["get_clip", "clear_cache"]

_CACHE: "OrderedDict[tuple, object]" = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 2


def get_clip(arch: str, pretrained, device=None):
    """``tfovss_core.load_clip`` with a small in-process cache (operators re-run cheaply).

    ``pretrained``: an open_clip tag, a local checkpoint path, a state dict, or a synthetic spec
    ``tiny:seedN`` / ``random:seedN`` / ``synthetic:seedN`` (SYNTHETIC: its masks mean nothing;
    labels made with it carry ``synthetic=True``), parsed by ``tfovss_core.spec.weights``."""
    import tfovss_core as tc
    from tfovss_core.clip.weights import resolve_weights

    dev = None if device in (None, "", "auto") else str(device)
    if isinstance(pretrained, Mapping):  # a state dict: no caching
        return tc.load_clip(arch, pretrained, device=dev)
    weights = resolve_weights(arch, pretrained)
    key = (weights.identity, dev) if weights.synthetic else (str(arch), str(pretrained), dev)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    model = weights.load(dev) if weights.synthetic else tc.load_clip(arch, pretrained, device=dev)
    with _CACHE_LOCK:
        _CACHE[key] = model
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return model


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
