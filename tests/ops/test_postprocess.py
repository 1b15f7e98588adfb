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
