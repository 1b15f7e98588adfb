"""Core engine: loading paths, backbone equivalences, text encoding, driver mechanics, bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import tfovss_core as tc
from tfovss_core.clip import loading as model_mod
from tfovss_core.clip.backbone import TrunkRequest
from tfovss_core.clip.synthetic import tiny_clip, tiny_state_dict
from support.paths import REPO_ROOT

SAMPLES = REPO_ROOT / "samples"


@pytest.fixture(scope="module")
def tiny():
    return tiny_clip(seed=0)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(100, 140, 3), dtype=np.uint8)


def _sd_variants(tmp_path):
    """The same tiny weights in every file format load_clip accepts."""
    sd = tiny_state_dict(seed=1)
    ref = tc.load_clip("tiny", dict(sd))
    open_clip_sd = ref.model.state_dict()               # open_clip keys, fp16-rounded values
    paths = {}
    paths["pt"] = tmp_path / "w.pt"
    torch.save(open_clip_sd, paths["pt"])
    paths["wrapped"] = tmp_path / "w_wrapped.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in open_clip_sd.items()}}, paths["wrapped"])
    from safetensors.torch import save_file
    paths["safetensors"] = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in open_clip_sd.items()}, str(paths["safetensors"]))
    openai = {k: (v.half() if v.ndim >= 2 and "embedding" not in k else v) for k, v in sd.items()}
    openai.update(input_resolution=torch.tensor(64), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    paths["openai"] = tmp_path / "w_openai.pt"
    torch.save(openai, paths["openai"])
    return ref, paths

def _st(path):
    from safetensors.torch import load_file
    return load_file(str(path))


class _Holder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

def test_truncated_text_equals_full_length(tiny):
    prompts = ["a photo of a cat.", "a very very long and detailed photograph of a small orange cat on a mat."]
    tokens = tiny.tokenizer(prompts)
    with torch.inference_mode():
        full = tiny.model.encode_text(tokens)
        short = tiny.text.encode_tokens(tokens)
    torch.testing.assert_close(short, full, atol=1e-6, rtol=1e-6)


def test_text_cache_hits_disk(tmp_path):
    m = tiny_clip(seed=0, text_cache_dir=tmp_path)
    first = m.text.encode_queries(["cat", "dog"], ["a photo of a {}.", "a {}."])
    assert len(list(tmp_path.rglob("*.pt"))) == 2
    m2 = tiny_clip(seed=0, text_cache_dir=tmp_path)
    m2.text._encode_uncached = lambda *a, **k: pytest.fail("should have been read from the cache")
    torch.testing.assert_close(m2.text.encode_queries(["dog", "cat"], ["a photo of a {}.", "a {}."]), first.flip(0))
    other = tiny_clip(seed=3, text_cache_dir=tmp_path)      # other weights -> other cache key
    assert not torch.allclose(other.text.encode_queries(["cat"], ["a {}."]), first[:1])
