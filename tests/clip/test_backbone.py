"""The vision backbone: the stock trunk reproduces encode_image, custom blocks, positional-embedding
interpolation, weight edits reverted bit for bit."""
from __future__ import annotations

import pytest
import torch

from tfovss_core.clip.backbone import TrunkRequest


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
