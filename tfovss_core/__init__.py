"""tfovss_core: training-free open-vocabulary semantic segmentation on open_clip.

    import tfovss_core as tc
    model = tc.load_clip("ViT-B-16", "openai")                  # or a local file / state dict
    seg = tc.Segmenter(model, method="sclip", classes="voc21")   # preset: official settings
    res = seg.predict("photo.jpg")                               # res.probs (C,H,W), res.mask (H,W)
    tc.list_methods()

The public names are imported lazily (PEP 562): ``import tfovss_core`` costs nothing, and reading a
preset (``tc.presets``) never imports torch; torch is imported by the first name that needs it. The layers, bottom to top, are
``errors`` / ``spec`` / ``io`` / ``clip`` / ``ops`` / ``methods`` / ``engine`` / ``eval`` /
``export`` / ``analysis`` / ``cli``; each imports only the ones below it (``docs/architecture.md``).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC = {
    "load_clip": "tfovss_core.clip.loading",
    "ClipModel": "tfovss_core.clip.loading",
    "Segmenter": "tfovss_core.engine.segmenter",
    "SegmentationResult": "tfovss_core.engine.segmenter",
    "Settings": "tfovss_core.spec.settings",
    "sliding_windows": "tfovss_core.engine.windows",
    "MultiSegmenter": "tfovss_core.engine.multi",
    "compare": "tfovss_core.engine.multi",
    "stream": "tfovss_core.engine.multi",
    "fast_settings": "tfovss_core.engine.multi",
    "list_methods": "tfovss_core.methods",
    "describe_method": "tfovss_core.methods",
    "get_method_class": "tfovss_core.methods",
    "register_method": "tfovss_core.methods",
    "TfovssError": "tfovss_core.errors",
    "ConfigError": "tfovss_core.errors",
    "InputError": "tfovss_core.errors",
    "WeightsError": "tfovss_core.errors",
}
_SUBMODULES = {"presets": "tfovss_core.spec.presets"}

__all__ = sorted([*_PUBLIC, *_SUBMODULES, "set_threads", "__version__"])


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(_SUBMODULES[name])
    else:
        raise AttributeError(f"module 'tfovss_core' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


def set_threads(n: int) -> None:
    """CPU threads used by torch (1 is often fastest when other jobs share the cores)."""
    import torch
    torch.set_num_threads(max(1, int(n)))
