"""The one place that imports ``open_clip``.

``import open_clip`` imports torchvision unconditionally (``open_clip/utils.py`` for a ResNet
BatchNorm helper, ``open_clip/transform.py`` for its classification transforms). On a CPU-only
torch there is often no importable torchvision: the registry's builds are CUDA builds and fail
with ``operator torchvision::nms does not exist``. We never use either code path (our
preprocessing is our own, mmseg-style), so when a real torchvision import fails we register a
small placeholder package first. Placeholders raise if anyone tries to *use* them.
"""
from __future__ import annotations

import enum
import sys
import types

_STUB_MARK = "__tfovss_stub__"


class _Unavailable:
    """A torchvision class we do not provide: constructing it says so."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(
            f"torchvision.{type(self).__name__} is not available: tfovss imported open_clip with a "
            "torchvision placeholder because no working torchvision is installed. tfovss does not "
            "need it; open_clip's image transforms are not used.")


def _install_torchvision_stub() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]

    def module(name: str) -> types.ModuleType:
        mod = types.ModuleType(name)
        setattr(mod, _STUB_MARK, True)
        sys.modules[name] = mod
        return mod

    tv = module("torchvision")
    ops = module("torchvision.ops")
    misc = module("torchvision.ops.misc")
    transforms = module("torchvision.transforms")
    functional = module("torchvision.transforms.functional")
    tv.ops, ops.misc, tv.transforms, transforms.functional = ops, misc, transforms, functional
    misc.FrozenBatchNorm2d = type("FrozenBatchNorm2d", (_Unavailable,), {})

    class InterpolationMode(enum.Enum):
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"
        BOX = "box"
        HAMMING = "hamming"
        LANCZOS = "lanczos"

    transforms.InterpolationMode = InterpolationMode
    for cls in ("Normalize", "Compose", "RandomResizedCrop", "ToTensor", "Resize", "CenterCrop",
                "ColorJitter", "Grayscale", "RandomHorizontalFlip", "Lambda", "Pad"):
        setattr(transforms, cls, type(cls, (_Unavailable,), {}))

    def _unavailable_fn(*args, **kwargs):
        raise RuntimeError("torchvision.transforms.functional is a tfovss placeholder")

    def _functional_getattr(name: str):
        if name.startswith("__"):  # module introspection (inspect, pickle) must see a plain module
            raise AttributeError(name)
        return _unavailable_fn

    functional.__getattr__ = _functional_getattr  # type: ignore[attr-defined]


def _import_open_clip():
    try:
        import torchvision  # noqa: F401
    except Exception:  # ModuleNotFoundError, or RuntimeError from a CUDA-only build
        _install_torchvision_stub()
    import open_clip as oc
    return oc


open_clip = _import_open_clip()


def torchvision_is_stub() -> bool:
    return bool(getattr(sys.modules.get("torchvision"), _STUB_MARK, False))
