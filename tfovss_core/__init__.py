"""tfovss_core: training-free open-vocabulary semantic segmentation on open_clip.

    import tfovss_core as tc
    model = tc.load_clip("ViT-B-16", "openai")                  # or a local file / state dict
    seg = tc.Segmenter(model, method="sclip", classes="voc21")   # preset: official settings
    res = seg.predict("photo.jpg")                               # res.probs (C,H,W), res.mask (H,W)
    tc.list_methods()
"""
from __future__ import annotations

from . import presets
from .errors import ConfigError, InputError, TfovssError, WeightsError
from .inference import SegmentationResult, Segmenter, Settings, sliding_windows
from .methods import describe_method, get_method_class, list_methods, register_method
from .model import ClipModel, load_clip
from .multi import MultiSegmenter, compare, fast_settings, stream  # several methods, one shared trunk

__version__ = "0.1.0"


def set_threads(n: int) -> None:
    """CPU threads used by torch (1 is often fastest when other jobs share the cores)."""
    import torch
    torch.set_num_threads(max(1, int(n)))


__all__ = ["load_clip", "ClipModel", "Segmenter", "MultiSegmenter", "compare", "stream", "fast_settings",
           "SegmentationResult", "Settings", "list_methods",
           "describe_method", "get_method_class", "register_method", "presets", "sliding_windows",
           "set_threads", "TfovssError", "ConfigError", "InputError", "WeightsError", "__version__"]
