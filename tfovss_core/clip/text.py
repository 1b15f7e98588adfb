"""Prompt templates and the cached text classifier.

A *class* is one or more *queries* (synonyms; :class:`tfovss_core.spec.vocabulary.Vocabulary`); every query is filled into every template, each
prompt embedding is L2-normalised, the template embeddings of a query are averaged and the mean is
normalised again (the recipe of every SCLIP-family repo and ClearCLIP). Per-query embeddings are
cached on disk, keyed by the text tower's weights digest, the templates, the query and the recipe,
so shared names are encoded once across vocabularies, methods and runs.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from tfovss_core.clip.openclip import open_clip
from tfovss_core.errors import ConfigError

RECIPE_VERSION = "tfovss-text-v1: per-template l2norm, mean over templates, l2norm; EOT pooling"

# MaskCLIP / CLIP Surgery add five "scene" templates to the 80 ImageNet ones.
_SCENE_TEMPLATES = (
    "there is a {} in the scene.", "there is the {} in the scene.", "this is a {} in the scene.",
    "this is the {} in the scene.", "this is one {} in the scene.",
)
# TCL's "custom" set: 7 of the ImageNet templates + 2 plural ones (kakaobrain/tcl datasets/templates.py).
_TCL_TEMPLATES = (
    "itap of a {}.", "a bad photo of a {}.", "a origami {}.", "a photo of the large {}.",
    "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
    "a photo of many {}.", "a photo of {}s.",
)


def _openai_imagenet() -> tuple[str, ...]:
    # open_clip ships OpenAI's 80 ImageNet templates as lambdas; identical to the SCLIP-family
    # repos' prompts/imagenet_template.py (same strings, same order).
    return tuple(t("{}") for t in open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES)


TEMPLATE_SETS = {
    "openai_imagenet": _openai_imagenet,            # 80, the default of every method here
    "maskclip": lambda: _openai_imagenet() + _SCENE_TEMPLATES,   # 85
    "tcl": lambda: _TCL_TEMPLATES,                  # 9
    "single": lambda: ("a photo of a {}.",),       # GEM's library default
    "none": lambda: ("{}",),
}


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """A template-set name or a list of strings with one ``{}`` each."""
    if isinstance(templates, str):
        try:
            return TEMPLATE_SETS[templates]()
        except KeyError:
            raise ConfigError(f"unknown template set {templates!r}; choose one of "
                              f"{sorted(TEMPLATE_SETS)} or pass a list of strings with '{{}}'") from None
    out = tuple(templates)
    if not out:
        raise ConfigError("the template list is empty")
    bad = [t for t in out if not isinstance(t, str) or t.count("{}") != 1]
    if bad:
        raise ConfigError(f"every template needs exactly one '{{}}' placeholder; bad: {bad[:3]}")
    return out


def default_cache_dir() -> Path:
    env = os.environ.get("TFOVSS_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tfovss"


class TextEncoder:
    """Encodes queries with a CLIP text tower, truncating prompts to their real length.

    Truncation is exact: the text transformer is causal and pools at the EOT token, so positions
    after the longest EOT in a batch never influence the result. Prompts are sorted by length so
    each batch is cut as short as possible.
    """

    def __init__(self, model, tokenizer, digest: str, *, cache_dir: str | Path | None = None,
                 use_cache: bool = True, batch_size: int = 256, progress: bool | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.digest = digest
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.use_cache = use_cache
        self.batch_size = batch_size
        self.progress = progress
        self._memory: dict[tuple[str, str], torch.Tensor] = {}

    # -- cache -------------------------------------------------------------------------------
    def _template_key(self, templates: tuple[str, ...]) -> str:
        payload = json.dumps([RECIPE_VERSION, open_clip.__version__, self.digest, list(templates)])
        return hashlib.sha256(payload.encode()).hexdigest()[:24]

    def _cache_path(self, tkey: str, query: str) -> Path:
        qkey = hashlib.sha256(query.encode()).hexdigest()[:32]
        return self.cache_dir / "text" / tkey / f"{qkey}.pt"

    def _load(self, tkey: str, query: str) -> torch.Tensor | None:
        hit = self._memory.get((tkey, query))
        if hit is not None or not self.use_cache:
            return hit
        path = self._cache_path(tkey, query)
        if path.is_file():
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # a truncated or foreign file: recompute and overwrite it
                return None
            if isinstance(blob, dict) and blob.get("query") == query:
                self._memory[(tkey, query)] = blob["embedding"]
                return blob["embedding"]
        return None

    def _store(self, tkey: str, query: str, emb: torch.Tensor) -> None:
        self._memory[(tkey, query)] = emb
        if not self.use_cache:
            return
        path = self._cache_path(tkey, query)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            os.close(fd)
            torch.save({"query": query, "embedding": emb}, tmp)
            os.replace(tmp, path)  # atomic: concurrent writers never leave half a file
        except OSError:
            pass  # a read-only cache only costs time

    # -- encoding ------------------------------------------------------------------------------
    def encode_queries(self, queries: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """``(len(queries), D)`` float32 unit vectors on CPU, cached per query."""
        templates = tuple(templates)
        tkey = self._template_key(templates)
        out: dict[str, torch.Tensor] = {}
        missing = []
        for q in dict.fromkeys(queries):
            hit = self._load(tkey, q)
            if hit is None:
                missing.append(q)
            else:
                out[q] = hit
        if missing:
            for q, emb in zip(missing, self._encode_uncached(missing, templates)):
                self._store(tkey, q, emb)
                out[q] = emb
        return torch.stack([out[q] for q in queries]) if queries else torch.zeros(0)

    @torch.inference_mode()
    def _encode_uncached(self, queries: list[str], templates: tuple[str, ...]) -> list[torch.Tensor]:
        prompts = [t.format(q) for q in queries for t in templates]
        tokens = self.tokenizer(prompts)
        order = torch.argsort(tokens.argmax(dim=-1))  # by EOT position, so batches truncate well
        device = next(self.model.parameters()).device
        feats = torch.empty(len(prompts), self._embed_dim(), dtype=torch.float32)
        batches = range(0, len(prompts), self.batch_size)
        show = self.progress if self.progress is not None else len(prompts) > 2000
        if show:
            from tqdm.auto import tqdm
            batches = tqdm(batches, desc=f"text: {len(queries)} queries x {len(templates)} templates",
                           unit="batch")
        for start in batches:
            idx = order[start:start + self.batch_size]
            emb = self.encode_tokens(tokens[idx].to(device))
            feats[idx] = F.normalize(emb.float(), dim=-1).cpu()
        feats = feats.view(len(queries), len(templates), -1).mean(dim=1)
        return list(F.normalize(feats, dim=-1))

    def _embed_dim(self) -> int:
        proj = self.model.text_projection
        return proj.shape[1] if isinstance(proj, torch.Tensor) else proj.out_features

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """EOT-pooled, projected text embeddings of token ids, truncated to the longest prompt."""
        m = self.model
        if getattr(m, "text_pool_type", "argmax") != "argmax" or not hasattr(m, "token_embedding"):
            return m.encode_text(tokens)  # towers we cannot truncate safely: full length
        length = int(tokens.argmax(dim=-1).max()) + 1
        tokens = tokens[:, :length]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast) + m.positional_embedding[:length].to(cast)
        mask = m.attn_mask[:length, :length] if m.attn_mask is not None else None
        x = m.transformer(x, attn_mask=mask)
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        proj = m.text_projection
        return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
