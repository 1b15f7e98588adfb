"""Loaders for every ``--pretrained`` / ``pretrained=`` spec, in one place for the CLI, the
benchmark and the FiftyOne plugin. What a spec *means* (and whether it is synthetic) is decided by
the torch-free parser :mod:`tfovss_core.spec.weights`; this module only builds the loaders.

* an open_clip tag (``openai``, ``laion2b_s34b_b88k``, ...) or a local checkpoint path: real weights
  through :func:`tfovss_core.load_clip`;
* ``tiny[:seedN]``: the tiny random CLIP of :mod:`tfovss_core.clip.synthetic` (whatever ``arch`` says);
* ``random[:seedN]``: a seeded random initialisation of ``arch`` by open_clip (full size, offline);
* ``synthetic[:seedN]``: the deterministic synthetic CLIP of a ``make_weights.py``-style script
  (``make_state_dict(arch, seed=N, anomalies=True)``), given as ``synthetic_script`` or by the
  ``TFOVSS_SYNTHETIC_WEIGHTS`` environment variable; the package never looks for it elsewhere.

The last three are SYNTHETIC: their outputs mean nothing and every output made with them says so
(:data:`tfovss_core.spec.weights.SYNTHETIC_BANNER`). Loaded synthetic models carry their spec label
(``tiny:seed0``, ...) as ``ClipModel.pretrained``, so :func:`~tfovss_core.spec.weights.is_synthetic`
recognises the model as well as the spec.
"""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tfovss_core.errors import WeightsError
from tfovss_core.spec.weights import (ENV_SYNTHETIC_SCRIPT, SYNTHETIC_BANNER, is_synthetic,  # noqa: F401
                                      parse_weights_spec)


@dataclass
class Weights:
    """What a pretrained spec resolved to."""

    spec: str                 # as given
    arch: str                 # architecture used
    label: str                # shown in tables and UIs
    identity: str             # enters settings hashes (resume keys)
    synthetic: bool = False
    loader: Callable[[Any], Any] | None = field(default=None, repr=False)

    def load(self, device=None):
        return self.loader(device)


def _openai_arch(arch: str) -> str:
    """open_clip spelling -> OpenAI spelling used by the synthetic-weights script."""
    a = arch.strip()
    if a.endswith("-336") or a.endswith("@336px"):
        a = a.replace("@336px", "").replace("-336", "") + "@336px"
    return re.sub(r"^ViT-([A-Za-z]+)-(\d+)", r"ViT-\1/\2", a)


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location("tfovss_synthetic_weights", path)
    if spec is None or spec.loader is None:
        raise WeightsError(f"cannot import the synthetic-weights script {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "make_state_dict"):
        raise WeightsError(f"{path} has no make_state_dict(arch, seed=..., anomalies=...)")
    return mod


def resolve_weights(arch: str, pretrained: str, synthetic_script: str | None = None) -> Weights:
    """Parses a pretrained spec (see the module docstring) without loading anything yet."""
    from tfovss_core.clip import loading as _model

    try:
        spec = parse_weights_spec(pretrained)
    except ValueError as exc:
        raise WeightsError(str(exc)) from None
    seed = spec.seed
    if spec.kind == "tiny":
        def load_tiny(device, seed=seed):
            from tfovss_core.clip.synthetic import tiny_clip
            return tiny_clip(seed=seed, device=device)   # labelled tiny:seedN

        return Weights(spec.text, "tiny", spec.label, f"tiny-clip:seed{seed}", True, load_tiny)
    if spec.kind == "random":
        def load_random(device, seed=seed, label=spec.label):
            import torch
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model = _model.load_clip(arch, None, device=device)
            model.pretrained = label
            return model

        return Weights(spec.text, _model.canonical_arch(arch), spec.label,
                       f"random-init:{_model.canonical_arch(arch)}:seed{seed}", True, load_random)
    if spec.kind == "synthetic":
        script = synthetic_script or os.environ.get(ENV_SYNTHETIC_SCRIPT)
        if not script:
            raise WeightsError(
                "--pretrained synthetic:seedN needs the synthetic-weights script: pass "
                f"--synthetic-weights-script PATH (a make_weights.py) or set {ENV_SYNTHETIC_SCRIPT}; "
                "or use random:seedN for a random initialisation")
        path = Path(script).expanduser().resolve()
        if not path.is_file():
            raise WeightsError(f"synthetic-weights script {path} does not exist")
        mod = _load_script(path)
        oarch = _openai_arch(arch)
        archs = getattr(mod, "ARCHS", None)
        if archs is not None and oarch not in archs:
            raise WeightsError(f"the synthetic-weights script knows {sorted(archs)}, not {arch!r}")
        recipe = getattr(mod, "RECIPE_VERSION", "?")

        def load_synth(device, mod=mod, oarch=oarch, seed=seed, label=spec.label):
            sd = mod.make_state_dict(oarch, seed=seed, anomalies=True)
            model = _model.load_clip(arch, sd, device=device, quick_gelu=True)
            model.pretrained = label
            return model

        return Weights(spec.text, _model.canonical_arch(arch), spec.label,
                       f"synthetic:{oarch}:seed{seed}:recipe{recipe}", True, load_synth)
    if spec.kind == "file":
        path = Path(spec.text).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist")
        st = path.stat()
        ident = f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"

        def load_file(device, path=path):
            return _model.load_clip(arch, str(path), device=device)

        return Weights(spec.text, _model.canonical_arch(arch), spec.label, ident, False, load_file)

    def load_tag(device, tag=spec.text):
        return _model.load_clip(arch, tag, device=device)

    return Weights(spec.text, _model.canonical_arch(arch), spec.label, f"tag:{spec.text}", False, load_tag)
