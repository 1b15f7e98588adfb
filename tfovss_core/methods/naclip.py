"""NACLIP (Hajimiri, Ben Ayed, Dolz, WACV 2025): neighbourhood attention in the last block."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from tfovss_core.methods import LastBlockMethod, MethodCard, MethodInfo, option, register_method

NACLIP_PROTOCOL = dict(short_side=336, crop=224, stride=112, logit_scale=40.0,
                       pamr_steps=10, pamr_dilations=(8, 16))


@functools.lru_cache(maxsize=32)
def _gaussian_bias_cpu(grid: tuple[int, int], std: float) -> torch.Tensor:
    gh, gw = grid
    rows = torch.arange(gh, dtype=torch.float32).repeat_interleave(gw)
    cols = torch.arange(gw, dtype=torch.float32).repeat(gh)
    d2 = (rows[:, None] - rows[None, :]) ** 2 + (cols[:, None] - cols[None, :]) ** 2
    omega = torch.exp(-d2 / (2.0 * std * std))
    out = torch.zeros(gh * gw + 1, gh * gw + 1)
    out[1:, 1:] = omega      # CLS row and column get no spatial prior
    return out


def gaussian_attention_bias(grid: tuple[int, int], std: float, device, dtype) -> torch.Tensor:
    """Omega[i, j] = exp(-|pos_i - pos_j|^2 / (2 std^2)) over patches (peak 1), 0 for CLS; cached.

    Equal to NACLIP's construction (one-hot maps convolved with a (2h-1)x(2w-1) Gaussian window).
    """
    return _gaussian_bias_cpu(tuple(grid), float(std)).to(device=device, dtype=dtype)


class NACLIP(LastBlockMethod):
    name = "naclip"
    info = MethodInfo(
        title="NACLIP",
        paper="Hajimiri, Ben Ayed, Dolz. Pay Attention to Your Neighbours: Training-Free "
              "Open-Vocabulary Semantic Segmentation. WACV 2025 (arXiv 2404.08181)",
        official_code="sinahmr/NACLIP@0cac3a6",
        summary="A = softmax(k k^T / sqrt(d) + Omega), Omega a Gaussian neighbourhood prior (std 5 "
                "patches); 'reduced' architecture: no residual, no FFN. PAMR (10 steps, dilations "
                "8, 16) is on in the repo's defaults.",
    )
    renormalize_probs = True

    @dataclass
    class Options:
        gaussian_std: float = option(5.0, "Std (in patches) of the neighbourhood prior Omega.")
        attention: str = option("naclip", "naclip = k-k + Omega; kk = k-k only (ablation).",
                                choices=("naclip", "kk"))
        reduced: bool = option(True, "Drop residual and FFN in the last block (NACLIP's 'reduced' arch).")

    def attention(self, q, k, v, grid):
        logits = (k @ k.transpose(-1, -2)) * self.backbone.scale
        if self.options.attention == "naclip":
            logits = logits + gaussian_attention_bias(grid, self.options.gaussian_std, k.device, k.dtype)
        return torch.softmax(logits, dim=-1)

    def keep_residual(self):
        return not self.options.reduced

    def keep_ffn(self):
        return not self.options.reduced


CARD = MethodCard(
    method=NACLIP,
    text_independent=True,
    display_name="NACLIP",
    repo="sinahmr/NACLIP", commit="0cac3a6",
    note=("The repo's eval.py keeps the constructor default pamr_steps=10 (dilations 8, 16) unless run with '--pamr "
        "off'; the paper's main table is without PAMR (the goldens use pamr_steps=0)."),
    aliases=("na_clip",),
    protocol=NACLIP_PROTOCOL,
    # The official per-dataset settings, each with its source (where every number comes from:
    # tfovss_core/spec/presets/README.md).
    datasets={
        "voc21": {
            "short_side": 336, "max_long_side": 2048, "crop": 0, "stride": 112, "logit_scale": 40, "prob_thd": 0.1,
            "area_thd": None, "pamr_steps": 10, "pamr_dilations": [8, 16], "class_file": "voc21.txt",
            "source": "sinahmr/NACLIP@0cac3a6: configs/cfg_voc21.py (+ naclip.py constructor defaults)",
        },
        "voc20": {
            "short_side": 336, "max_long_side": 2048, "crop": 0, "stride": 112, "logit_scale": 40, "prob_thd": 0.0,
            "area_thd": None, "pamr_steps": 10, "pamr_dilations": [8, 16], "class_file": "voc20.txt",
            "source": "sinahmr/NACLIP@0cac3a6: configs/cfg_voc20.py (+ naclip.py constructor defaults)",
        },
        "context60": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.1, "area_thd": None, "pamr_steps": 10, "pamr_dilations": [8, 16],
            "class_file": "context60.txt",
            "source": "sinahmr/NACLIP@0cac3a6: configs/cfg_context60.py (+ naclip.py constructor defaults)",
        },
        "context59": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 10, "pamr_dilations": [8, 16],
            "class_file": "context59.txt",
            "source": "sinahmr/NACLIP@0cac3a6: configs/cfg_context59.py (+ naclip.py constructor defaults)",
        },
        "coco_object": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.1, "area_thd": None, "pamr_steps": 10, "pamr_dilations": [8, 16],
            "class_file": "coco_object.txt",
            "source": "sinahmr/NACLIP@0cac3a6: configs/cfg_coco_object.py (+ naclip.py constructor defaults)",
        },
        "coco_stuff": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 10, "pamr_dilations": [8, 16],
            "class_file": "coco_stuff.txt",
            "source": "sinahmr/NACLIP@0cac3a6: configs/cfg_coco_stuff164k.py (+ naclip.py constructor defaults)",
        },
        "cityscapes": {
            "short_side": 560, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 10, "pamr_dilations": [8, 16],
            "class_file": "cityscapes.txt",
            "source": "sinahmr/NACLIP@0cac3a6: configs/cfg_city_scapes.py (+ naclip.py constructor defaults)",
        },
        "ade20k": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 10, "pamr_dilations": [8, 16],
            "class_file": "ade20k.txt",
            "source": "sinahmr/NACLIP@0cac3a6: configs/cfg_ade20k.py (+ naclip.py constructor defaults)",
        },
        "ade847": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 10, "pamr_dilations": [8, 16],
            "class_file": "ade847.txt",
            "source": "GUESS: no official config; copied from sinahmr/NACLIP@0cac3a6: configs/cfg_ade20k.py (+ naclip.py constructor defaults) (ADE20K-150)",
            "guess": True,
        },
        "context459": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 10, "pamr_dilations": [8, 16],
            "class_file": "context459.txt",
            "source": "GUESS: no official config; copied from sinahmr/NACLIP@0cac3a6: configs/cfg_ade20k.py (+ naclip.py constructor defaults) (ADE20K-150)",
            "guess": True,
        },
    },
)
register_method(CARD)
