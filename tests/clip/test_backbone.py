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

def test_stock_trunk_reproduces_encode_image(tiny):
    bb = tiny.visual
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        trunk = bb.run_trunk(x, TrunkRequest(depth=bb.depth))
        ours = bb.head(trunk.x[:, 0])
        ref = tiny.model.encode_image(x)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_custom_last_block_with_stock_settings_equals_stock_block(tiny):
    bb = tiny.visual
    x = torch.randn(3, 17, bb.width)
    with torch.inference_mode():
        ours = bb.last_block(x, lambda q, k, v: bb.similarity_attention(q, k), residual=True, ffn=True)
        ref = bb.blocks[-1](x)
    torch.testing.assert_close(ours, ref, atol=2e-6, rtol=1e-5)


def test_positional_embedding_interpolation(tiny):
    bb = tiny.visual
    table = bb.visual.positional_embedding
    assert torch.equal(bb.positional_embedding((4, 4), "cpu", torch.float32), table)
    pos = bb.positional_embedding((3, 7), "cpu", torch.float32)
    assert pos.shape == (1 + 21, bb.width)
    assert torch.equal(pos[0], table[0])
    grid = table[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, scale_factor=(3.1 / 4, 7.1 / 4), mode="bicubic",
                                               align_corners=False).permute(0, 2, 3, 1).reshape(21, -1)
    torch.testing.assert_close(pos[1:], expected)
    assert bb.positional_embedding((3, 7), "cpu", torch.float32) is pos   # cached


def test_weight_edit_is_reverted_bit_for_bit(tiny):
    w = tiny.visual.blocks[1].mlp.c_proj.weight
    before = w.detach().clone()
    with tiny.visual.weight_edit([(w, lambda t: t * 0)]):
        assert (w == 0).all()
    assert torch.equal(w, before)
    with pytest.raises(RuntimeError):
        with tiny.visual.weight_edit([(w, lambda t: t + 1)]):
            raise RuntimeError("boom")
    assert torch.equal(w, before)
