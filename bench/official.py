"""Runs an official SCLIP-family segmentor (SCLIP, SC-CLIP, ...) unchanged, side by side with ours.

The official repositories (``wangf3014/SCLIP``, ``SuleBai/SC-CLIP``) need mmseg/mmengine only for
their base class, their registry and a result container; this module puts tiny stand-ins for
those three names into ``sys.modules`` and then imports the repository's own ``clip`` package and
``*_segmentor.py`` from a checkout directory given by the caller. The segmentor's
``predict`` -> ``forward_slide`` -> ``forward_feature`` -> ``encode_image`` path, its model code and
its post-processing run exactly as committed; only ``__init__`` is bypassed, because it encodes
the text at full 77-token length (minutes on a CPU): the query embeddings are set instead (the
caller passes the official ones, e.g. a golden's ``text_features``, which are bit-identical to
ours for the shared names). The model is built with the repository's ``clip.model.build_model``
on an OpenAI-format state dict and cast to float32, as its ``clip.load`` does on a CPU.

Used by ``bench/bench.py --official-sclip DIR --official-scclip DIR`` (not a test, never needed
by the product).
"""
from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import torch
from torch import nn


def _install_mm_stubs() -> None:
    if "mmseg" in sys.modules and getattr(sys.modules["mmseg"], "__bench_stub__", False):
        return

    def module(name):
        mod = types.ModuleType(name)
        mod.__bench_stub__ = True
        sys.modules[name] = mod
        return mod

    class BaseSegmentor(nn.Module):
        def __init__(self, data_preprocessor=None, init_cfg=None):
            super().__init__()

    class _Registry:
        def register_module(self, *args, **kwargs):
            return lambda cls: cls

    class PixelData:
        def __init__(self, **kwargs):
            for k, v in kwargs.items():
                setattr(self, k, v)

    for name in ("mmseg", "mmseg.models", "mmseg.models.segmentors", "mmseg.models.data_preprocessor",
                 "mmseg.registry", "mmengine", "mmengine.structures"):
        module(name)
    sys.modules["mmseg.models.segmentors"].BaseSegmentor = BaseSegmentor
    sys.modules["mmseg.models.data_preprocessor"].SegDataPreProcessor = lambda **kw: None
    sys.modules["mmseg.registry"].MODELS = _Registry()
    sys.modules["mmengine.structures"].PixelData = PixelData
    if "pkg_resources" not in sys.modules:
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            import packaging.version
            pr = module("pkg_resources")
            pr.packaging = packaging


class DataSample:
    """The slice of mmseg's SegDataSample the segmentors touch."""

    def __init__(self, ori_shape):
        self.metainfo = {"ori_shape": tuple(ori_shape)}
        self.seg_logits = self.pred_sem_seg = None

    def set_data(self, data: dict):
        for k, v in data.items():
            setattr(self, k, v.data)


class OfficialSegmentor:
    """One official segmentor built from a checkout directory (``clip/`` + ``*_segmentor.py``)."""

    def __init__(self, repo_dir: str | Path, state_dict: dict, query_features: torch.Tensor,
                 query_idx, *, logit_scale=40.0, prob_thd=0.0, area_thd=None, slide_crop=224,
                 slide_stride=112, **net_attrs):
        import tfovss_core.clip.openclip  # noqa: F401  (installs the torchvision placeholder if needed)
        _install_mm_stubs()
        repo_dir = Path(repo_dir).resolve()
        seg_files = sorted(repo_dir.glob("*_segmentor.py"))
        if not (repo_dir / "clip" / "model.py").is_file() or not seg_files:
            raise FileNotFoundError(f"{repo_dir} is not an SCLIP-family checkout (clip/model.py, *_segmentor.py)")
        for name in [m for m in sys.modules if m == "clip" or m.startswith("clip.") or m.endswith("_segmentor")
                     or m in ("pamr", "prompts", "prompts.imagenet_template")]:
            del sys.modules[name]
        sys.path.insert(0, str(repo_dir))
        try:
            clip = importlib.import_module("clip")
            seg_mod = importlib.import_module(seg_files[0].stem)
        finally:
            sys.path.remove(str(repo_dir))
        cls = next(v for v in vars(seg_mod).values() if isinstance(v, type) and issubclass(v, nn.Module)
                   and v.__module__ == seg_mod.__name__)
        seg = cls.__new__(cls)
        nn.Module.__init__(seg)
        net = clip.model.build_model({k: v.clone() for k, v in state_dict.items()}).to("cpu")
        net.float()  # clip.load on a CPU
        net.eval()
        for k, v in net_attrs.items():
            setattr(net.visual, k, v)
        seg.net = net
        seg.query_idx = torch.as_tensor(list(query_idx), dtype=torch.int64)
        seg.num_queries = len(seg.query_idx)
        seg.num_classes = int(max(seg.query_idx)) + 1
        seg.query_features = query_features.to(torch.float32).clone()
        seg.dtype = seg.query_features.dtype
        seg.logit_scale, seg.prob_thd, seg.area_thd = logit_scale, prob_thd, area_thd
        seg.slide_stride, seg.slide_crop, seg.align_corners = slide_stride, slide_crop, False
        seg.pamr = None
        self.segmentor = seg
        self.name = cls.__name__

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor, ori_shape) -> tuple[torch.Tensor, torch.Tensor]:
        """``inputs``: the normalised ``(1, 3, h, w)`` tensor; returns (seg_logits, pred)."""
        sample = DataSample(ori_shape)
        self.segmentor.predict(inputs, [sample])
        return sample.seg_logits, sample.pred_sem_seg
