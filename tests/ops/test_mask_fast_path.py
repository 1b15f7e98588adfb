"""The whole-vocabulary pre-label path (``mask_and_confidence_from_logits``): the protocol's mask
bit for bit and its confidence within 1e-6, on logits built to hit the cases where a shortcut
would go wrong: probabilities one rounding apart, a top probability exactly at ``prob_thd``, an
area threshold that drops a class, synonyms, and image sizes that end inside a vector lane."""
from __future__ import annotations

import pytest
import torch

from tfovss_core.ops.postprocess import (
    BLOCK_BYTES,
    block_pixels_for,
    mask_and_confidence_from_logits,
    probabilities_and_mask,
)

SYNONYMS = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4, 5, 5, 6])   # 7 classes, 11 queries


def _check(logits, query_class, num_classes, block_pixels=64, **kw):
    probs, mask = probabilities_and_mask(logits, query_class, num_classes, **kw)
    got, conf, stats = mask_and_confidence_from_logits(logits, query_class, num_classes,
                                                       block_pixels=block_pixels, **kw)
    assert torch.equal(got, mask)
    assert float((conf - probs.max(dim=0).values).abs().max()) <= 1e-6
    return probs, mask, stats


def _random_logits(q, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(q, h, w, generator=g) * 0.05 + 0.2


@pytest.mark.parametrize("size", [(8, 8), (13, 17), (31, 29), (48, 40)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("block_pixels", [64, 128, 1024])
def test_bit_identical_probabilities_at_sizes_that_end_inside_a_vector_lane(size, threads, block_pixels):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        logits = _random_logits(11, *size, seed=size[0])
        probs, mask, _ = _check(logits, SYNONYMS, 7, block_pixels=block_pixels, logit_scale=60.0)
        # the confidence is the protocol's very float, not just within 1e-6
        _, conf, _ = mask_and_confidence_from_logits(logits, SYNONYMS, 7, logit_scale=60.0, block_pixels=block_pixels)
        assert torch.equal(conf, probs.max(dim=0).values)
    finally:
        torch.set_num_threads(before)


def test_probabilities_one_rounding_apart_take_the_first_class():
    """Query 1's logit is one float32 step below query 2's: their probabilities round to the same
    value, and the protocol's first index (class 1) wins, where the logit argmax says class 2."""
    logits = torch.zeros(4, 9, 10)
    logits[2] = 0.03
    logits[1] = torch.nextafter(torch.tensor(0.03), torch.tensor(0.0))
    logits[3, :, 5:] = 0.03                                   # an exact tie, later class: never shown
    probs, mask, _ = _check(logits, torch.arange(4), 4, logit_scale=1.0)
    assert bool((mask == 1).all())
    assert bool((logits.argmax(dim=0) == 2).all())           # what a logit argmax would have given


def test_rounding_ties_across_synonyms_pick_the_first_class_of_any_tied_query():
    logits = _random_logits(11, 12, 12, seed=4) * 0.1
    # class 5's second query (index 9) one step below class 2's third query (index 5), both on top
    logits[5] = 0.5
    logits[9] = torch.nextafter(torch.tensor(0.5), torch.tensor(0.0))
    logits[9, :6] = 0.6                                       # top half: class 5 clearly wins
    _, mask, _ = _check(logits, SYNONYMS, 7, logit_scale=1.0)
    assert bool((mask[6:] == 2).all()) and bool((mask[:6] == 5).all())


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_top_probability_exactly_at_and_one_step_around_prob_thd(offset):
    logits = _random_logits(11, 10, 14, seed=7)
    probs, _ = probabilities_and_mask(logits, SYNONYMS, 7, logit_scale=40.0)
    top = probs.max(dim=0).values
    at = top[3, 5]
    thd = float(torch.nextafter(at, at + offset) if offset else at)
    _, mask, _ = _check(logits, SYNONYMS, 7, logit_scale=40.0, prob_thd=thd)
    # below the threshold -> background; at it or above -> kept (the protocol's "<")
    assert (int(mask[3, 5]) == 0) == (offset > 0)
    assert int(mask[3, 5]) == 0 or int(mask[3, 5]) == int(probs[:, 3, 5].argmax())


@pytest.mark.parametrize("size", [(24, 32), (25, 33)])        # 768 pixels, and 825 = 12 x 64 + 57
@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("with_confidence", [False, True])
def test_area_threshold_dropping_a_class_recomputes_only_its_pixels(size, renormalize, with_confidence):
    h, w = size
    logits = _random_logits(11, h, w, seed=9) * 0.1 + 0.2
    logits[2:6] -= 0.1                        # classes 1 and 2 never win ...
    logits[4, h - 4:, w - 4:] += 0.5          # ... except class 2 on the last 4x4 corner (in the
    #                                           825-pixel image, partly in the last partial lane)
    kw = dict(logit_scale=40.0, area_thd=0.05, prob_thd=0.1, renormalize=renormalize)
    probs, mask = probabilities_and_mask(logits, SYNONYMS, 7, **kw)
    got, conf, stats = mask_and_confidence_from_logits(logits, SYNONYMS, 7, block_pixels=64,
                                                       with_confidence=with_confidence, **kw)
    assert torch.equal(got, mask)
    assert not bool((mask == 2).any())                       # the area rule dropped class 2 ...
    unthresholded = probabilities_and_mask(logits, SYNONYMS, 7, logit_scale=40.0)[1]
    assert int((unthresholded == 2).sum()) == 16             # ... which did win those pixels
    assert stats["passes"] == 2
    # only those 16 pixels are decided again, unless renormalized confidences need every pixel's
    # new class sum
    assert stats["redone_pixels"] == (h * w if renormalize and with_confidence else 16)
    if with_confidence:
        assert float((conf - probs.max(dim=0).values).abs().max()) <= 1e-6
    else:
        assert conf is None


def test_area_threshold_that_keeps_every_class_takes_one_pass():
    logits = _random_logits(7, 16, 16, seed=2)
    _, _, stats = _check(logits, torch.arange(7), 7, logit_scale=40.0, area_thd=0.0)
    assert stats["passes"] == 1 and stats["redone_pixels"] == 0


def test_block_size_must_follow_the_vector_lanes():
    with pytest.raises(ValueError, match="block_pixels=100"):
        mask_and_confidence_from_logits(torch.zeros(2, 4, 4), torch.arange(2), 2, logit_scale=1.0, block_pixels=100)


def test_default_blocks_are_lane_aligned_cache_sized_and_never_4_kib_strided():
    for queries in (1, 11, 56, 150, 171, 459, 847, 5000):
        block = block_pixels_for(queries, 10**6)
        assert block >= 64 and block % 64 == 0 and block % 1024 != 0, (queries, block)
        assert block * queries * 4 <= BLOCK_BYTES or block == 64
    assert block_pixels_for(171, 480 * 640) == 1088
    assert block_pixels_for(171, 480 * 640, "cuda") == 480 * 640     # the protocol's own call


def test_default_blocks_bit_identical_across_several_blocks_and_a_lane_tail():
    """An image spanning several default blocks (11 queries: 17,856 pixels a block) and ending
    inside a vector lane: the protocol's probabilities, so its very mask and confidence floats."""
    logits = _random_logits(11, 151, 263, seed=7)
    assert 151 * 263 > 2 * block_pixels_for(11, 151 * 263) and (151 * 263) % 64
    probs, mask = probabilities_and_mask(logits, SYNONYMS, 7, logit_scale=60.0, prob_thd=0.3, area_thd=0.1)
    got, conf, _ = mask_and_confidence_from_logits(logits, SYNONYMS, 7, logit_scale=60.0, prob_thd=0.3,
                                                   area_thd=0.1)
    assert torch.equal(got, mask)
    assert torch.equal(conf, probs.max(dim=0).values)
