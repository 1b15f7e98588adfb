"""Vision foundation models (VFMs): a second frozen backbone beside CLIP, loaded and cached like it.

ProxyCLIP and its family (CASS, Trident, CorrCLIP) borrow the patch correspondences of a
self-supervised ViT. This module builds those ViTs in plain torch, with the parameter names of
their official code so the official checkpoints load with ``strict=True``, and runs them on the
windows the driver hands a method.

* A registry by name (:data:`VFM_REGISTRY`, :func:`register_vfm`): DINO v1 ViT-S/B with patch 8/16
  as ``facebookresearch/dino``'s hub entries build them (``dino_vits16``, ``dino_vits8``,
  ``dino_vitb16``, ``dino_vitb8``). DINOv2 (with registers), SAM or MAE encoders are further
  :class:`VfmSpec` s with their own ``build`` function and checkpoint names.
* :func:`load_vfm` takes a local checkpoint file (never touching the network), an in-memory state
  dict, ``"random"`` (seeded random weights for tests and timing only), or the model's name: the
  official checkpoint from torch hub's checkpoint folder, downloaded there once from its official
  URL as ``torch.hub`` does for ``facebookresearch/dino``; a failed download names its cause and
  the fix.
* Loaded models are cached per process (file path, size and modification time, device), so every
  Segmenter of a run shares one copy.
* :meth:`VisionFoundationModel.patch_features` takes CLIP-normalised windows (the driver's) and
  re-normalises them for ImageNet-trained VFMs exactly as ProxyCLIP does (undo CLIP's mean/std, then
  ImageNet's), without resizing; the positional table is interpolated with DINO's own recipe.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tfovss_core.clip.checkpoints import state_dict_mismatch
from tfovss_core.errors import ConfigError, WeightsError

# Mean/std of CLIP's preprocessing (0-1 units) and of ImageNet (torchvision), per RGB channel.
CLIP_MEAN_UNIT = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD_UNIT = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Which tokens of the last block a method may take as "the VFM features": the final normed output
# (DINO's get_intermediate_layers()[0]) or the query / key / value of the last block's attention.
FEATURE_KINDS = ("tokens", "q", "k", "v")


@dataclass(frozen=True)
class VfmSpec:
    """A vision foundation model by name: shape, official checkpoint file and how to build it."""

    name: str
    family: str                     # "dino"; later "dinov2", "sam", "mae", ...
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    checkpoint_file: str            # the official file name (looked up in torch hub's checkpoint folder)
    source: str                     # where the architecture and checkpoint are defined
    build: Callable[["VfmSpec"], nn.Module]
    img_size: int = 224
    mlp_ratio: float = 4.0
    ln_eps: float = 1e-6
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    url: str = ""                   # where the official checkpoint is downloaded from ("": nowhere)


VFM_REGISTRY: dict[str, VfmSpec] = {}


def register_vfm(spec: VfmSpec) -> VfmSpec:
    if spec.name in VFM_REGISTRY and VFM_REGISTRY[spec.name] != spec:
        raise ValueError(f"VFM name {spec.name!r} registered twice")
    VFM_REGISTRY[spec.name] = spec
    return spec


def list_vfms() -> list[str]:
    return sorted(VFM_REGISTRY)


def vfm_spec(name: str) -> VfmSpec:
    try:
        return VFM_REGISTRY[name.strip().lower()]
    except KeyError:
        raise ConfigError(f"unknown vision foundation model {name!r}; available: {', '.join(list_vfms())}") from None


# ------------------------------------------------------------------------------- DINO v1 ViT
class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.patch_size = patch
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.num_heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _Mlp(dim, hidden)


class DinoViT(nn.Module):
    """DINO's ``vision_transformer.VisionTransformer`` (num_classes=0): same parameter names, same math.

    Pre-norm blocks, qkv with bias, softmax(q k^T / sqrt(d)) attention written out as DINO does
    (not a fused kernel, so the result follows the official summation order closely), exact GELU,
    LayerNorm eps 1e-6, a final ``norm``. No head.
    """

    def __init__(self, spec: VfmSpec):
        super().__init__()
        d, p = spec.embed_dim, spec.patch_size
        self.patch_embed = _PatchEmbed(p, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, (spec.img_size // p) ** 2 + 1, d))
        self.blocks = nn.ModuleList(_Block(d, spec.num_heads, int(d * spec.mlp_ratio), spec.ln_eps)
                                    for _ in range(spec.depth))
        self.norm = nn.LayerNorm(d, eps=spec.ln_eps)
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    def positional_embedding(self, grid: tuple[int, int], square_input: bool, dtype) -> torch.Tensor:
        """DINO's ``interpolate_pos_encoding``: bicubic from the native grid with the ``+0.1`` trick.

        The sampling positions follow ``scale_factor = (n + 0.1) / native`` (not ``n / native``),
        as in the official call. As there, the native table is used unchanged only when the token
        count is native and the input is square in pixels.
        """
        key = (grid, square_input, dtype, self.pos_embed.device)
        cached = self._pos_cache.get(key)
        if cached is not None:
            return cached
        table = self.pos_embed
        n = table.shape[1] - 1
        native = math.sqrt(n)
        gh, gw = grid
        if gh * gw == n and square_input:
            pos = table
        else:
            side = int(native)
            patch_pos = table[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
            patch_pos = F.interpolate(patch_pos, scale_factor=((gh + 0.1) / native, (gw + 0.1) / native),
                                      mode="bicubic")
            if tuple(patch_pos.shape[-2:]) != (gh, gw):  # pragma: no cover - guarded by the +0.1
                raise RuntimeError(f"positional interpolation gave {tuple(patch_pos.shape[-2:])}, want {grid}")
            patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
            pos = torch.cat([table[:, :1], patch_pos], dim=1)
        pos = pos.to(dtype)
        self._pos_cache[key] = pos
        return pos

    def forward_features(self, x: torch.Tensor, kind: str = "tokens") -> tuple[torch.Tensor, tuple[int, int]]:
        """ImageNet-normalised images ``(N, 3, H, W)`` -> patch features ``(N, gh*gw, C)`` and the grid.

        ``kind="tokens"``: the last block's output after the final ``norm``, CLS dropped (DINO's
        ``get_intermediate_layers(x)[0][:, 1:]``); ``"q"`` / ``"k"`` / ``"v"``: that part of the last
        block's ``qkv`` projection, heads concatenated, CLS dropped.
        """
        if kind not in FEATURE_KINDS:
            raise ConfigError(f"unknown VFM feature kind {kind!r}; choose one of {list(FEATURE_KINDS)}")
        square_input = x.shape[-2] == x.shape[-1]
        x = self.patch_embed.proj(x.to(self.cls_token.dtype))
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.positional_embedding(grid, square_input, x.dtype)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            qkv = block.attn.qkv(block.norm1(x))
            if i == last and kind != "tokens":
                part = ("q", "k", "v").index(kind)
                width = x.shape[-1]
                return qkv[:, 1:, part * width:(part + 1) * width], grid
            x = x + block.attn.proj(self._attend(block.attn, qkv))
            x = x + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(x))))
        return self.norm(x)[:, 1:], grid

    @staticmethod
    def _attend(attn: _Attention, qkv: torch.Tensor) -> torch.Tensor:
        n, length, three_c = qkv.shape
        c = three_c // 3
        qkv = qkv.reshape(n, length, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)
        return (a @ v).transpose(1, 2).reshape(n, length, c)


#: where facebookresearch/dino's hubconf.py downloads its checkpoints from
DINO_DOWNLOAD_ROOT = "https://dl.fbaipublicfiles.com/dino/"


def _dino(name: str, dim: int, heads: int, patch: int, file: str) -> VfmSpec:
    return VfmSpec(name=name, family="dino", embed_dim=dim, depth=12, num_heads=heads, patch_size=patch,
                   checkpoint_file=file, source=f"facebookresearch/dino hubconf.py `{name}`", build=DinoViT,
                   url=f"{DINO_DOWNLOAD_ROOT}{Path(file).stem}/{file}")


for _spec in (_dino("dino_vits16", 384, 6, 16, "dino_deitsmall16_pretrain.pth"),
              _dino("dino_vits8", 384, 6, 8, "dino_deitsmall8_pretrain.pth"),
              _dino("dino_vitb16", 768, 12, 16, "dino_vitbase16_pretrain.pth"),
              _dino("dino_vitb8", 768, 12, 8, "dino_vitbase8_pretrain.pth")):
    register_vfm(_spec)


# ------------------------------------------------------------------------------- the loaded model
class VisionFoundationModel:
    """A loaded, frozen VFM on a device, with the input conversion from the driver's windows."""

    def __init__(self, module: nn.Module, spec: VfmSpec, label: str, device: torch.device):
        self.module = module.float().eval().requires_grad_(False).to(device)
        self.spec = spec
        self.label = label
        self.device = device
        # x_imagenet = (x_clip * s_clip + m_clip - m_in) / s_in, done in ProxyCLIP's order of ops
        self._clip_std = torch.tensor(CLIP_STD_UNIT, device=device).view(1, 3, 1, 1)
        self._clip_mean = torch.tensor(CLIP_MEAN_UNIT, device=device).view(1, 3, 1, 1)
        self._mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
        self.forwards = 0       # batches of windows run through the model (tests, bench)
        self.hits = 0           # batches served from the shared latest batch (share_batches)
        self._share_depth = 0
        self._last: tuple | None = None     # (key, windows, (features, grid)) of the latest batch

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def patch(self) -> int:
        return self.spec.patch_size

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch, width // self.patch

    def input_from_clip(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised images -> the VFM's normalisation, same size (ProxyCLIP's
        ``Normalize(ImageNet)(UnNormalize(CLIP)(x))``: ``x * s + m`` then ``(v - mean) / std``)."""
        x = images.float()
        return (x * self._clip_std + self._clip_mean - self._mean) / self._std

    def patch_features(self, clip_images: torch.Tensor, kind: str = "tokens") -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch features ``(N, gh*gw, C)`` (CLS dropped, not normalised) of CLIP-normalised windows.

        Inside :meth:`share_batches` a call with the same windows (equal tensors), the same
        ``kind`` and the same autocast state as the previous one returns the previous result
        instead of running the model again: the same kernels on the same input would give the
        same bits, so methods that share a batch of windows share one forward.
        """
        key = None
        if self._share_depth:
            dev = clip_images.device.type
            key = (kind, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
            last = self._last
            if last is not None and last[0] == key and last[1].shape == clip_images.shape \
                    and last[1].device == clip_images.device and torch.equal(last[1], clip_images):
                self.hits += 1
                return last[2]
        out = self.module.forward_features(self.input_from_clip(clip_images), kind)
        self.forwards += 1
        if key is not None:
            self._last = (key, clip_images, out)
        return out

    @contextmanager
    def share_batches(self):
        """While open, repeated :meth:`patch_features` calls on the same batch of windows run the
        model once (the latest batch is held; released when the outermost context closes).
        :class:`~tfovss_core.engine.multi.MultiSegmenter` opens it around a group of methods
        that see the same windows and use this VFM."""
        self._share_depth += 1
        try:
            yield self
        finally:
            self._share_depth -= 1
            if not self._share_depth:
                self._last = None

    def describe(self) -> dict:
        return {"name": self.name, "family": self.spec.family, "weights": self.label, "patch_size": self.patch,
                "embed_dim": self.embed_dim, "depth": self.spec.depth, "source": self.spec.source}

    def __repr__(self) -> str:
        return f"VisionFoundationModel({self.name!r}, weights={self.label!r}, device={str(self.device)!r})"


_LOADED: dict[tuple, VisionFoundationModel] = {}


def load_vfm(name: str = "dino_vitb8", weights=None, device=None) -> VisionFoundationModel:
    """Loads a vision foundation model by registry name.

    ``weights`` is one of:

    * a local checkpoint file (``.pth``/``.pt``/``.safetensors``; the official files load as they
      are; training checkpoints under ``teacher`` / ``student`` / ``state_dict`` / ``model`` with
      ``module.`` / ``backbone.`` prefixes are unwrapped). Never touches the network;
    * a state dict in memory (not cached: the caller holds it);
    * ``"random"`` or ``"random:<seed>"``: seeded random weights, for tests and timing only (its
      segmentations mean nothing);
    * ``None`` or the model's own name: the official checkpoint in torch hub's checkpoint folder,
      downloaded there first from ``VfmSpec.url`` when it is missing (once; a partial download never
      takes the file's name); a failed download raises a :class:`WeightsError` naming the cause and
      how to get the file by hand.

    Models from files and random weights are cached per process and device.
    """
    spec = vfm_spec(name)
    dev = _device(device)
    if isinstance(weights, Mapping):
        return VisionFoundationModel(_build_loaded(spec, dict(weights), "state dict"), spec, "state-dict", dev)
    if weights is None or (isinstance(weights, str) and weights.strip().lower() in ("", spec.name, "official")):
        path = Path(torch.hub.get_dir()) / "checkpoints" / spec.checkpoint_file
        if not path.is_file():
            download_official_checkpoint(spec, path)
        weights = path
    if isinstance(weights, str) and weights.strip().lower().startswith("random"):
        seed = _random_seed(weights)
        key = (spec.name, "random", seed, str(dev))
        if key not in _LOADED:
            _LOADED[key] = VisionFoundationModel(_random_module(spec, seed), spec, f"random:{seed}", dev)
        return _LOADED[key]
    if not isinstance(weights, (str, os.PathLike)):
        raise WeightsError(f"VFM weights must be a file path, a state dict or 'random', got {type(weights).__name__}")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(f"VFM weights file {str(path)!r} does not exist")
    stat = path.stat()
    key = (spec.name, str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(dev))
    if key not in _LOADED:
        sd = _read_file(path)
        _LOADED[key] = VisionFoundationModel(_build_loaded(spec, sd, str(path)), spec, f"file:{path.name}", dev)
    return _LOADED[key]


def download_official_checkpoint(spec: VfmSpec, path: Path) -> None:
    """Downloads ``spec``'s official checkpoint to ``path`` (torch.hub's downloader: a temporary
    file renamed when complete), or raises a :class:`WeightsError` with the cause and the fix."""
    fix = (f"Fix: download {spec.url or 'the official checkpoint ' + spec.checkpoint_file} (from "
           f"{spec.source}) elsewhere and pass its path as vfm_weights='/path/to/{spec.checkpoint_file}' "
           f"(CLI: --set vfm_weights=/path/to/{spec.checkpoint_file}), or put it in torch hub's "
           f"checkpoint folder ({path.parent}).")
    if not spec.url:
        raise WeightsError(f"the {spec.name} weights are not on this machine and have no download URL. {fix}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(spec.url, str(path), progress=False)
    except Exception as exc:  # no network, an HTTP error, a full disk: each says so
        raise WeightsError(f"could not download the {spec.name} weights from {spec.url}: "
                           f"{type(exc).__name__}: {exc}. {fix}") from exc


def clear_vfm_cache() -> None:
    """Forgets every cached VFM (frees their memory once no method holds them)."""
    _LOADED.clear()


def _device(device) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _random_seed(spec: str) -> int:
    _, _, seed = spec.partition(":")
    try:
        return int(seed) if seed.strip() else 0
    except ValueError:
        raise WeightsError(f"random VFM weights are 'random' or 'random:<integer seed>', got {spec!r}") from None


def _read_file(path: Path) -> dict:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read VFM weights file {str(path)!r}: {exc}") from exc
    if not isinstance(sd, Mapping):
        raise WeightsError(f"VFM weights file {str(path)!r} does not hold a state dict")
    return dict(sd)


def _unwrap(sd: dict) -> dict:
    """Official hub files are plain; DINO training checkpoints nest the backbone."""
    for key in ("teacher", "state_dict", "model", "student"):
        if key in sd and isinstance(sd[key], Mapping):
            sd = dict(sd[key])
            break
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "backbone."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        if not k.startswith("head."):  # DINO's projection head is not part of the backbone
            out[k] = v
    return out


def _build_loaded(spec: VfmSpec, sd: dict, source: str) -> nn.Module:
    sd = _unwrap(sd)
    module = spec.build(spec)
    problems = state_dict_mismatch(module.state_dict(), sd, spec.name)
    if problems:
        raise WeightsError(f"VFM weights {source} do not fit {spec.name}: {problems}"
                           f". Pick the model the checkpoint belongs to (available: {', '.join(list_vfms())}).")
    module.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return module


def _random_module(spec: VfmSpec, seed: int) -> nn.Module:
    """Seeded random weights (std 0.02, LayerNorm ~1, fan-in scaled patch embedding so the final
    patch features are not nearly constant). For tests and timing; never a real segmentation."""
    module = spec.build(spec)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in sorted(module.state_dict(keep_vars=True).items()):
            z = torch.randn(t.shape, generator=g)
            if key == "patch_embed.proj.weight":
                t.copy_(z * (3 * spec.patch_size ** 2) ** -0.5)
            elif ".norm" in key or key.startswith("norm."):
                t.copy_(1 + 0.02 * z if key.endswith("weight") else 0.02 * z)
            elif key.endswith("bias"):
                t.copy_(0.01 * z)
            else:
                t.copy_(0.02 * z)
    return module


__all__ = ["VfmSpec", "VFM_REGISTRY", "FEATURE_KINDS", "register_vfm", "list_vfms", "vfm_spec", "DinoViT",
           "VisionFoundationModel", "load_vfm", "clear_vfm_cache"]
