"""Loading CLIP weights through open_clip: pretrained tags, local files, in-memory state dicts.

``load_clip`` is the one entry point. It never touches the network for a local file or a state
dict. For a pretrained tag it follows open_clip's own route: the Hugging Face hub copy when
``huggingface_hub`` is installed (resolved here, so that a file missing from an offline cache, a
missing network and a missing package each get their own error), else open_clip's URL download.
Every error says how to fix it.
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from tfovss_core.clip.openclip import open_clip
from tfovss_core.clip.backbone import VisionBackbone
from tfovss_core.errors import WeightsError
from tfovss_core.clip.text import TextEncoder
from tfovss_core.clip.checkpoints import state_dict_mismatch

_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def canonical_arch(arch: str) -> str:
    """open_clip model names: ``ViT-B/16`` -> ``ViT-B-16`` (OpenAI spelling accepted)."""
    arch = arch.strip().replace("/", "-")
    if arch.endswith("@336px"):
        arch = arch[: -len("@336px")] + "-336"
    return arch.replace("-336px", "-336")


def _base_arch(arch: str) -> str:
    return arch[: -len("-quickgelu")] if arch.endswith("-quickgelu") else arch


class ClipModel:
    """A loaded CLIP: the open_clip module, its dense vision backbone and its text encoder."""

    def __init__(self, model: torch.nn.Module, arch: str, pretrained_label: str, device: torch.device,
                 *, text_cache_dir=None, use_text_cache: bool = True):
        model = model.float().eval().requires_grad_(False).to(device)
        self.model = model
        self.arch = arch
        self.pretrained = pretrained_label
        self.device = device
        self.visual = VisionBackbone(model.visual)
        self.tokenizer = open_clip.get_tokenizer(_base_arch(arch)) if _has_config(arch) \
            else open_clip.tokenizer.tokenize
        self.text_digest = _digest_modules(model, exclude_prefix="visual.")
        self.text = TextEncoder(model, self.tokenizer, self.text_digest, cache_dir=text_cache_dir,
                                use_cache=use_text_cache)
        self._weights_digest: str | None = None

    @property
    def weights_digest(self) -> str:
        """sha256 over every parameter (computed once, on first use)."""
        if self._weights_digest is None:
            self._weights_digest = _digest_modules(self.model)
        return self._weights_digest

    @property
    def embed_dim(self) -> int:
        return self.model.visual.proj.shape[1]

    def describe(self) -> dict:
        return {"arch": self.arch, "pretrained": self.pretrained, "device": str(self.device),
                "vision_depth": self.visual.depth, "vision_width": self.visual.width,
                "patch_size": self.visual.patch, "backbone_profile": self.visual.profile.name,
                "text_digest": self.text_digest[:16]}

    def __repr__(self) -> str:
        return f"ClipModel({self.arch!r}, pretrained={self.pretrained!r}, device={str(self.device)!r})"


def _has_config(arch: str) -> bool:
    return open_clip.get_model_config(arch) is not None


def _digest_modules(model: torch.nn.Module, exclude_prefix: str | None = None) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if exclude_prefix and name.startswith(exclude_prefix):
            continue
        h.update(name.encode())
        t = tensor.detach().to("cpu").contiguous()
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def resolve_device(device=None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WeightsError(f"device {str(device)!r} was requested but no CUDA GPU is available; "
                           "use device='cpu' (or leave it unset to pick automatically)")
    return device


def load_clip(arch: str, pretrained=None, device=None, *, quick_gelu: bool | None = None,
              cache_dir: str | None = None, text_cache_dir=None, use_text_cache: bool = True) -> ClipModel:
    """Loads a CLIP ViT through open_clip.

    ``pretrained`` is one of:

    * an open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b88k"``, ``"metaclip_400m"``, ...).
      When ``huggingface_hub`` is installed every tag with a hub copy (``openai`` included) comes
      from the Hugging Face hub cache (``cache_dir``, default ``$HF_HOME/hub``), downloaded once;
      with ``HF_HUB_OFFLINE=1`` only the cache is read, never the network. Tags without a hub
      copy are downloaded by open_clip from their URL;
    * a local file: an open_clip checkpoint (``.pt``/``.bin``/``.safetensors``, optionally under a
      ``state_dict`` key with ``module.`` prefixes), an OpenAI-format state dict, or OpenAI's
      TorchScript archive. Never touches the network;
    * an OpenAI-format state dict in memory (the format of OpenAI's ``clip`` package and of the
      synthetic test weights), built with open_clip's OpenAI builder;
    * ``None``: random initialisation (tests and timing only).

    OpenAI-format weights are rounded to float16 on load, exactly as OpenAI's loader and open_clip's
    builder do, then computed in float32. ``quick_gelu`` forces the activation; by default it
    follows the tag (OpenAI, MetaCLIP and DFN weights are QuickGELU), the ``-quickgelu`` model name,
    or True for OpenAI-format weights. Loading a QuickGELU checkpoint into a GELU model gives wrong
    features silently, so for an open_clip-format local file of QuickGELU weights pass
    ``quick_gelu=True`` or use the ``-quickgelu`` name.
    """
    arch = canonical_arch(arch)
    dev = resolve_device(device)
    label: str
    if isinstance(pretrained, Mapping):
        model = _from_openai_state_dict(dict(pretrained), arch, quick_gelu, source="state dict")
        label = "state-dict"
    elif pretrained is None or pretrained == "":
        model = _create(arch, None, quick_gelu)
        label = "random-init"
    elif isinstance(pretrained, (str, os.PathLike)) and (os.path.sep in str(pretrained)
                                                         or Path(pretrained).exists()):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {str(path)!r} does not exist")
        model = _from_file(path, arch, quick_gelu)
        label = f"file:{path.name}"
    elif isinstance(pretrained, str):
        model = _from_tag(arch, pretrained, quick_gelu, cache_dir)
        label = pretrained
    else:
        raise WeightsError(f"pretrained must be a tag, a file path or a state dict, got {type(pretrained).__name__}")
    return ClipModel(model, arch, label, dev, text_cache_dir=text_cache_dir, use_text_cache=use_text_cache)


def _create(arch: str, pretrained, quick_gelu, **kwargs):
    if not _has_config(arch):
        known = [m for m in open_clip.list_models() if m.startswith("ViT")]
        raise WeightsError(f"unknown architecture {arch!r}; open_clip ViTs: {', '.join(known[:30])} ...")
    extra = {} if quick_gelu is None else {"force_quick_gelu": bool(quick_gelu)}
    return open_clip.create_model(arch, pretrained=pretrained, **extra, **kwargs)


def _from_tag(arch: str, tag: str, quick_gelu, cache_dir):
    base = _base_arch(arch)
    tags = open_clip.list_pretrained_tags_by_model(base) + open_clip.list_pretrained_tags_by_model(base + "-quickgelu")
    if tag not in tags:
        raise WeightsError(f"{tag!r} is not a pretrained tag of {arch} (known: {', '.join(sorted(set(tags))) or 'none'}). "
                           "Fix: pick one of these tags, or pass a local checkpoint's path")
    cfg = open_clip.get_pretrained_cfg(base, tag) or open_clip.get_pretrained_cfg(base + "-quickgelu", tag) or {}
    if quick_gelu is None:
        quick_gelu = bool(cfg.get("quick_gelu", False)) if cfg else None
    hub_id, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    hub = _hub_module()
    if hub_id and hub is not None:
        # open_clip prefers the hub copy whenever huggingface_hub is importable (``openai``
        # included); resolving the file here tells a missing cache entry from a missing network.
        path = _hub_checkpoint(hub, hub_id, arch, tag, cache_dir)
        return _create_from_checkpoint(arch, path, quick_gelu, f"{arch} / {tag!r}")
    if hub_id and not url:
        raise WeightsError(
            f"the weights {arch} / {tag!r} are hosted only on the Hugging Face hub "
            f"({hub_id.rstrip('/')}) and the huggingface_hub package is not installed. "
            "Fix: pip install huggingface_hub (scripts/setup.sh installs it), or pass a local "
            "checkpoint's path")
    try:
        return _create(arch, tag, quick_gelu, cache_dir=cache_dir)
    except WeightsError:
        raise
    except Exception as exc:  # download failures surface as RuntimeError/OSError/HTTP errors
        if _is_network_error(exc):
            raise WeightsError(
                f"could not download the pretrained weights {arch} / {tag!r}: no network ({_root_cause(exc)}). "
                "Fix: run once with network access to fill the cache "
                f"({cache_dir or 'open_clip default cache'}), or download the checkpoint elsewhere and "
                "pass its local path: load_clip(arch, '/path/to/checkpoint') / --pretrained "
                "/path/to/checkpoint. To try the pipeline without real weights use the synthetic "
                "test weights (see README).") from exc
        raise WeightsError(
            f"could not obtain the pretrained weights {arch} / {tag!r}: {exc}. Fix: download the "
            "checkpoint and pass its local path (--pretrained /path/to/checkpoint)") from exc


# -- the Hugging Face hub route --------------------------------------------------------------------

HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"        # open_clip's names on the hub
HF_SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"

# Exception class names (anywhere in the cause chain) that mean the network could not be reached:
# httpx / httpx2 / requests / urllib3 spell them differently and are not all installed.
_NETWORK_ERROR_NAMES = {"ConnectError", "ConnectTimeout", "ConnectTimeoutError", "TimeoutException",
                        "ReadTimeout", "ProxyError", "NewConnectionError", "NameResolutionError",
                        "ConnectionError", "NetworkError", "URLError", "gaierror", "timeout",
                        "TimeoutError", "ConnectionRefusedError", "ConnectionResetError"}


def _hub_module():
    """``huggingface_hub`` or None when it cannot be imported (open_clip then cannot use the hub)."""
    try:
        import huggingface_hub
    except ImportError:
        return None
    return huggingface_hub


def _causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _is_network_error(exc: BaseException) -> bool:
    for e in _causes(exc):
        names = {c.__name__ for c in type(e).__mro__}
        if names & _NETWORK_ERROR_NAMES and type(e).__name__ != "HTTPError":
            return True
        reason = getattr(e, "reason", None)  # urllib's URLError wraps the socket error
        if isinstance(reason, OSError):
            return True
    return False


def _root_cause(exc: BaseException) -> str:
    *_, last = _causes(exc)
    return f"{type(last).__name__}: {last}"


def _hub_filenames(hub_id: str) -> tuple[str, list[str]]:
    """open_clip's lookup order: ``org/name/`` -> the safetensors file, then the .bin."""
    repo_id, filename = os.path.split(hub_id)
    filename = filename or HF_WEIGHTS_NAME
    names = []
    if filename == HF_WEIGHTS_NAME:
        names.append(HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        names.append(filename[:-4] + ".safetensors")
    return repo_id, names + [filename]


def _hub_checkpoint(hub, hub_id: str, arch: str, tag: str, cache_dir) -> Path:
    """The cached (or freshly downloaded) checkpoint of a hub-hosted tag, or an error naming the
    cause: offline cache without the file, no network, or the hub's own refusal."""
    from huggingface_hub import constants

    repo_id, names = _hub_filenames(hub_id)
    what = f"{arch} / {tag!r}"
    failures: list[BaseException] = []
    for name in names:
        try:
            return Path(hub.hf_hub_download(repo_id=repo_id, filename=name, cache_dir=cache_dir,
                                            library_name="open_clip",
                                            library_version=getattr(open_clip, "__version__", None)))
        except Exception as exc:  # noqa: BLE001 - classified below, once every name was tried
            failures.append(exc)
    exc = failures[-1]
    files = " or ".join(names)
    cache = cache_dir or constants.HF_HUB_CACHE
    fetch = (f"on a machine with network run `hf download {repo_id} {names[-1]}` (or "
             f"huggingface_hub.hf_hub_download('{repo_id}', '{names[-1]}')) and copy its Hugging Face "
             "cache (HF_HOME) here")
    # by class name: huggingface_hub has moved its exception classes between modules
    not_cached = all("LocalEntryNotFoundError" in {c.__name__ for c in type(e).__mro__} for e in failures)
    if constants.HF_HUB_OFFLINE and not_cached:
        raise WeightsError(
            f"the weights {what} ({repo_id}: {files}) are not in the offline Hugging Face cache "
            f"{cache} (HF_HUB_OFFLINE is set, so nothing is downloaded). Fix: {fetch}, pointing "
            "HF_HOME at the copy; or unset HF_HUB_OFFLINE on a machine with network") from exc
    if any(_is_network_error(e) for e in failures):
        raise WeightsError(
            f"could not download the weights {what} from the Hugging Face hub ({repo_id}): no network "
            f"({_root_cause(exc)}). Fix: connect this machine, or {fetch} and set HF_HUB_OFFLINE=1; "
            "or pass a local checkpoint's path") from exc
    raise WeightsError(
        f"the Hugging Face hub did not provide the weights {what} ({repo_id}: {files}): "
        f"{type(exc).__name__}: {exc}. Fix: check that the repository is reachable with your "
        "credentials (`hf auth login` for gated repositories), or pass a local checkpoint's path") from exc


def _create_from_checkpoint(arch: str, path: Path, quick_gelu, what: str):
    """open_clip builds the model and loads the checkpoint (its conversions included); a
    checkpoint of another shape is reported by what does not fit, not by a key dump."""
    try:
        return _create(arch, str(path), quick_gelu)
    except WeightsError:
        raise
    except Exception as exc:
        try:
            sd = _unwrap(open_clip.factory.load_state_dict(str(path)))
            _check_fits(_create(arch, None, quick_gelu), sd, arch, f"{str(path)!r} ({what})")
        except WeightsError:
            raise
        except Exception:  # noqa: BLE001 - unreadable: reported below with open_clip's error
            pass
        raise WeightsError(f"cannot load the checkpoint {str(path)!r} ({what}): {exc}. Fix: delete the "
                           "file from the cache so that it is downloaded again") from exc


def _looks_like_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or n.endswith("/code/__torch__.py") or "/code/" in n
                   for n in zf.namelist())


def _from_file(path: Path, arch: str, quick_gelu):
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        elif _looks_like_torchscript(path):
            with open(path, "rb") as f:
                jit = torch.jit.load(io.BytesIO(f.read()), map_location="cpu")
            sd = {k: v for k, v in jit.state_dict().items()}
            return _from_openai_state_dict(sd, arch, quick_gelu, source=str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except WeightsError:
        raise
    except Exception as exc:
        raise WeightsError(f"cannot read weights file {str(path)!r}: {exc}") from exc
    if not isinstance(sd, Mapping):
        raise WeightsError(f"{str(path)!r} does not hold a state dict")
    sd = _unwrap(sd)
    is_openai = any(k in sd for k in _OPENAI_EXTRA_KEYS) or any(
        isinstance(v, torch.Tensor) and v.dtype == torch.float16 for v in sd.values())
    if is_openai:
        return _from_openai_state_dict(sd, arch, quick_gelu, source=str(path))
    model = _create(arch, None, quick_gelu)
    _check_fits(model, sd, arch, str(path))
    model.load_state_dict(sd, strict=True)
    return model


def _unwrap(sd: Mapping) -> dict:
    """Training checkpoints: ``{"state_dict": {...}}`` and DataParallel ``module.`` prefixes."""
    if "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}


def _from_openai_state_dict(sd: dict, arch: str, quick_gelu, source: str):
    sd = _unwrap(sd)
    if "visual.proj" not in sd:
        raise WeightsError(f"{source}: not a CLIP ViT state dict (no 'visual.proj'; ResNet CLIPs are not supported)")
    for key in _OPENAI_EXTRA_KEYS:
        sd.pop(key, None)
    qg = True if quick_gelu is None else bool(quick_gelu)
    if quick_gelu is None and _has_config(arch) and not arch.endswith("-quickgelu"):
        warnings.warn(f"{source}: OpenAI-format weights are built with QuickGELU (as OpenAI trained "
                      f"them) although {arch!r} names a GELU config; pass quick_gelu=False to override",
                      stacklevel=3)
    try:
        model = open_clip.model.build_model_from_openai_state_dict(sd, quick_gelu=qg)
    except Exception as exc:
        raise WeightsError(f"{source}: cannot build a CLIP from this state dict: {exc}") from exc
    if _has_config(arch):
        _check_arch(model, arch, source)
    return model.float()


def _check_arch(model, arch: str, source: str) -> None:
    """The OpenAI builder infers the shape from the weights; they must be those of ``arch``."""
    cfg = open_clip.get_model_config(arch)
    vcfg, tcfg = cfg["vision_cfg"], cfg["text_cfg"]
    v = model.visual
    patch = v.patch_size[0] if isinstance(v.patch_size, (tuple, list)) else v.patch_size
    image = v.image_size[0] if isinstance(v.image_size, (tuple, list)) else v.image_size
    found = {"vision layers": len(v.transformer.resblocks), "vision width": v.transformer.width,
             "patch size": patch, "image size": image, "embed dim": model.text_projection.shape[1],
             "text width": model.transformer.width}
    want = {"vision layers": vcfg["layers"], "vision width": vcfg["width"],
            "patch size": vcfg["patch_size"], "image size": vcfg["image_size"],
            "embed dim": cfg["embed_dim"], "text width": tcfg["width"]}
    wrong = [f"{k}: weights {found[k]} vs {arch} {want[k]}" for k in want if found[k] != want[k]]
    if wrong:
        raise WeightsError(f"checkpoint {source} does not fit architecture {arch}: " + "; ".join(wrong)
                           + ". Pick the architecture the checkpoint was trained with.")


def _check_fits(model: torch.nn.Module, sd: Mapping, arch: str, source: str) -> None:
    """A clear error when a checkpoint does not fit the architecture (instead of a key dump)."""
    problems = state_dict_mismatch(model.state_dict(), sd, arch,
                                   ignore=lambda key: key.endswith("attn_mask"))
    if problems:
        raise WeightsError(f"checkpoint {source} does not fit architecture {arch}: {problems}"
                           ". Pick the architecture the checkpoint was trained with.")
