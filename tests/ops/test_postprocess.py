"""Post-processing: the area threshold, the mask on ties, PAMR."""
from __future__ import annotations

import torch


def test_area_threshold_drops_small_foreground_classes():
    from tfovss_core.ops.postprocess import apply_area_threshold
    probs = torch.zeros(3, 10, 10)
    probs[0] = 0.2
    probs[1, :, :9] = 0.9            # class 1 wins 90 pixels
    probs[2, :, 9] = 0.8             # class 2 wins 10 pixels = 10 % of the foreground
    out = apply_area_threshold(probs, 0.1)
    assert torch.equal(out[1], probs[1]) and (out[2] == 0).all() and torch.equal(out[0], probs[0])
    assert torch.equal(apply_area_threshold(probs, 0.09)[2], probs[2])


def test_mask_takes_the_first_class_on_ties_and_the_top_probability():
    from tfovss_core.ops.postprocess import probabilities_and_mask
    logits = torch.zeros(4, 3, 5)
    logits[2, 0] = 1.0
    logits[3, 0] = 1.0               # row 0: queries 2 and 3 tie -> the first (class 1 via synonyms)
    logits[1, 1] = 2.0               # row 1: class 1 (query 1) wins
    query_class = torch.tensor([0, 1, 1, 2])
    probs, mask = probabilities_and_mask(logits, query_class, 3, logit_scale=10.0)
    assert mask[0].tolist() == [1] * 5 and mask[1].tolist() == [1] * 5
    assert mask[2].tolist() == [0] * 5                        # all-equal row -> class 0
    torch.testing.assert_close(probs, torch.stack([torch.softmax(logits * 10, 0)[0],
                                                   torch.softmax(logits * 10, 0)[1:3].amax(0),
                                                   torch.softmax(logits * 10, 0)[3]]))
    _, strict = probabilities_and_mask(logits, query_class, 3, logit_scale=10.0, prob_thd=0.6)
    assert strict[1].tolist() == [1] * 5 and strict[0].tolist() == [0] * 5  # 0.5 top prob < 0.6


def test_pamr_keeps_constant_masks_and_smooths_towards_edges():
    from tfovss_core.ops.pamr import pamr
    img = torch.zeros(1, 3, 20, 20)
    img[..., :, 10:] = 1.0
    const = torch.full((1, 2, 20, 20), 0.3)
    torch.testing.assert_close(pamr(img, const, 5, (1, 2)), const)
    noisy = torch.zeros(1, 1, 20, 20)
    noisy[..., :, 10:] = 1.0
    noisy[..., 5, 3] = 1.0                       # an outlier inside the left region
    out = pamr(img, noisy, 10, (1, 2))
    assert out[0, 0, 5, 3] < 0.5 and out[0, 0, :, 12:].min() > 0.9
