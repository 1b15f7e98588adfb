"""``Segmenter.input_logits`` against the official codes' loop, bit for bit.

The engine upsamples one window at a time into one buffer and sums on an ``(h, w, Q)`` canvas
(memory and speed: bench/RESULTS.md); the official codes upsample each batch at once and sum into
a ``(Q, h, w)`` canvas. Same kernel, same additions in the same order: the values must not move.
"""
from __future__ import annotations

import dataclasses
import pickle
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import tfovss_core as tc
from tests.support.images import random_image

CLASSES = [["sky", "clouds"], "tree", ["person", "man", "woman"], "road", "car"]


def official_input_logits(seg: tc.Segmenter, x: torch.Tensor, outputs) -> torch.Tensor:
    """SCLIP's / ClearCLIP's ``slide_inference``: a batch's maps upsampled at once, summed channel-first."""
    _, _, h, w = x.shape
    canvas = x.new_zeros((seg.text_features.shape[0], h, w))
    count = x.new_zeros((1, h, w))
    for out in outputs:
        y1, y2, x1, x2 = out.boxes[0]
        ch, cw = y2 - y1, x2 - x1
        left, right, top, bottom = seg.window_padding(ch, cw)
        up = F.interpolate(out.logits, size=(ch + top + bottom, cw + left + right), mode="bilinear",
                           align_corners=False)[:, :, top:top + ch, left:left + cw]
        for (y1, y2, x1, x2), window in zip(out.boxes, up):
            canvas[:, y1:y2, x1:x2] += window
            count[:, y1:y2, x1:x2] += 1
    return canvas / count


@pytest.mark.parametrize("settings", [
    dict(short_side=112, crop=56, stride=28),                      # full windows, several batches
    dict(short_side=100, crop=50, stride=20, pad_to_patch=True),  # windows padded to a patch multiple
    dict(short_side=96, crop=0),                                    # the whole image in one pass
], ids=["windows", "padded", "whole"])
def test_input_logits_equal_the_official_loop_bit_for_bit(tiny, settings):
    seg = tc.Segmenter(tiny, "sclip", CLASSES, templates=["a photo of a {}."], batch_size=3, **settings)
    _, x = seg.prepare(random_image(3, 90, 131))
    outputs = list(seg.windows(x))
    padded = {seg.window_padding(b[1] - b[0], b[3] - b[2]) != (0, 0, 0, 0) for out in outputs for b in out.boxes}
    assert padded == {bool(settings.get("pad_to_patch"))}
    assert outputs[0].logits.is_contiguous(memory_format=torch.channels_last)   # the text product's layout
    got = seg.input_logits(x, outputs)
    assert got.shape == (len(seg.text_features), *x.shape[-2:]) and got.is_contiguous()
    assert torch.equal(got, official_input_logits(seg, x, outputs))


def test_a_canvas_over_its_limit_is_summed_in_place_with_the_same_values(tiny):
    """Over ``transposed_canvas_bytes`` the canvas stays (Q, h, w) (no second copy): same values,
    and what a caller gets is that canvas itself (too large to be kept as scratch)."""
    seg = tc.Segmenter(tiny, "sclip", CLASSES, templates=["a photo of a {}."], short_side=112, crop=56, stride=28)
    _, x = seg.prepare(random_image(7, 90, 131))
    outputs = list(seg.windows(x))
    seg.transposed_canvas_bytes = 0
    seg.scratch.max_bytes = 0
    got = seg.input_logits(x, outputs)
    assert torch.equal(got, official_input_logits(seg, x, outputs)) and got.is_contiguous()
    assert seg.scratch.nbytes == 0


def test_input_logits_of_channel_first_maps_equal_the_official_loop(tiny):
    """A method whose logits come channel-first keeps a channel-first canvas: still the same values."""
    seg = tc.Segmenter(tiny, "sclip", CLASSES, templates=["a photo of a {}."], short_side=112, crop=56, stride=28)
    _, x = seg.prepare(random_image(4, 80, 120))
    outputs = [dataclasses.replace(out, logits=out.logits.contiguous()) for out in seg.windows(x)]
    assert not outputs[0].logits.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(seg.input_logits(x, outputs), official_input_logits(seg, x, outputs))


def test_scratch_maps_are_reused_and_never_handed_out(tiny):
    """The canvas, window and full-resolution maps are the same memory from image to image; a result
    a caller receives is never scratch, so a later image does not change it."""
    seg = tc.Segmenter(tiny, "sclip", CLASSES, templates=["a photo of a {}."], short_side=112, crop=56, stride=28)
    first, second = random_image(5, 90, 131), random_image(6, 90, 131)
    _, x1 = seg.prepare(first)
    kept = seg.input_logits(x1)
    expected_kept = kept.clone()
    mask1 = seg.predict_mask(first)
    pointers = {name: t.data_ptr() for name, t in seg.scratch._by_thread[threading.get_ident()].items()}
    assert {"canvas", "count", "window", "logits", "full_res"} <= set(pointers)
    mask2 = seg.predict_mask(second)
    again = {name: t.data_ptr() for name, t in seg.scratch._by_thread[threading.get_ident()].items()}
    assert again == pointers                                    # reused, not reallocated
    assert torch.equal(kept, expected_kept)                     # what a caller holds stays its own
    assert all(kept.data_ptr() != p for p in pointers.values())
    # and the results are those of a Segmenter with nothing kept
    fresh = tc.Segmenter(tiny, "sclip", CLASSES, templates=["a photo of a {}."], short_side=112, crop=56, stride=28)
    for image, got in ((first, mask1), (second, mask2)):
        want = fresh.predict(image)
        assert np.array_equal(got.mask, want.mask)
        fresh.scratch.release()
        assert fresh.scratch.nbytes == 0
    assert seg.scratch.nbytes > 0
    seg.scratch.release()
    assert seg.scratch.nbytes == 0 and torch.equal(seg.input_logits(x1), expected_kept)


def test_scratch_keeps_nothing_over_its_limit():
    from tfovss_core.engine.scratch import Scratch

    scratch = Scratch(max_bytes=4096)
    small = scratch.get("a", (16, 16), torch.float32, "cpu")
    assert scratch.get("a", (16, 16), torch.float32, "cpu").data_ptr() == small.data_ptr()
    wide = scratch.get("a", (16, 16), torch.float64, "cpu")     # another dtype: a new one, kept instead
    assert wide.dtype == torch.float64 and scratch.get("a", (16, 16), torch.float64, "cpu").data_ptr() == wide.data_ptr()
    big = scratch.get("b", (2048,), torch.float32, "cpu")       # 8 KiB: handed out, not kept
    assert scratch.get("b", (2048,), torch.float32, "cpu").data_ptr() != big.data_ptr()
    assert scratch.nbytes == 16 * 16 * 8
    cl = scratch.get("c", (1, 3, 4, 4), torch.float32, "cpu", torch.channels_last)
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    copied = pickle.loads(pickle.dumps(scratch))                # travels (to a Ray actor) empty
    assert copied.max_bytes == 4096 and copied.nbytes == 0
    assert copied.get("a", (2,), torch.float32, "cpu").shape == (2,) and copied.nbytes == 8
