"""What a ``--pretrained`` / ``pretrained=`` string means, in one place for the CLI, the benchmark
and the FiftyOne plugin.

* an open_clip tag (``openai``, ``laion2b_s34b_b88k``, ...) or a local checkpoint path: real weights
  through :func:`tfovss_core.load_clip`;
* ``tiny[:seedN]``: the tiny random CLIP of :mod:`tfovss_core.clip.synthetic` (whatever ``arch`` says);
* ``random[:seedN]``: a seeded random initialisation of ``arch`` by open_clip (full size, offline);
* ``synthetic[:seedN]``: the deterministic synthetic CLIP of a ``make_weights.py``-style script
  (``make_state_dict(arch, seed=N, anomalies=True)``), given as ``synthetic_script`` or by the
  ``TFOVSS_SYNTHETIC_WEIGHTS`` environment variable; the package never looks for it elsewhere.

The last three are SYNTHETIC: their outputs mean nothing and every output made with them says so.
"""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tfovss_core.errors import WeightsError

ENV_SYNTHETIC_SCRIPT = "TFOVSS_SYNTHETIC_WEIGHTS"
SYNTHETIC_BANNER = "SYNTHETIC WEIGHTS - random CLIP, output is NOT a real segmentation"


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


_SYNTH_RE = re.compile(r"^(synthetic|tiny|random)(?::(?:seed)?=?(\d+))?$")


def is_synthetic_spec(pretrained) -> bool:
    return bool(_SYNTH_RE.match(str(pretrained).strip()))


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

    spec = str(pretrained).strip()
    m = _SYNTH_RE.match(spec)
    kind, seed = (m.group(1), int(m.group(2) or 0)) if m else (None, 0)
    if kind == "tiny":
        def load_tiny(device, seed=seed):
            from tfovss_core.clip.synthetic import tiny_clip
            return tiny_clip(seed=seed, device=device)

        return Weights(spec, "tiny", f"tiny:seed{seed}", f"tiny-clip:seed{seed}", True, load_tiny)
    if kind == "random":
        def load_random(device, seed=seed):
            import torch
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model = _model.load_clip(arch, None, device=device)
            model.pretrained = f"random:seed{seed}"
            return model

        return Weights(spec, _model.canonical_arch(arch), f"random:seed{seed}",
                       f"random-init:{_model.canonical_arch(arch)}:seed{seed}", True, load_random)
    if kind == "synthetic":
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

        def load_synth(device, mod=mod, oarch=oarch, seed=seed):
            sd = mod.make_state_dict(oarch, seed=seed, anomalies=True)
            model = _model.load_clip(arch, sd, device=device, quick_gelu=True)
            model.pretrained = f"synthetic:seed{seed}"
            return model

        return Weights(spec, _model.canonical_arch(arch), f"synthetic:seed{seed}",
                       f"synthetic:{oarch}:seed{seed}:recipe{recipe}", True, load_synth)
    path = Path(spec).expanduser()
    if os.sep in spec or path.exists():
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist")
        st = path.stat()
        ident = f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"

        def load_file(device, path=path):
            return _model.load_clip(arch, str(path), device=device)

        return Weights(spec, _model.canonical_arch(arch), f"file:{path.name}", ident, False, load_file)

    def load_tag(device, tag=spec):
        return _model.load_clip(arch, tag, device=device)

    return Weights(spec, _model.canonical_arch(arch), spec, f"tag:{spec}", False, load_tag)
