"""SCLIP (Wang, Mei, Yuille, ECCV 2024): correlative self-attention in the last block."""
from __future__ import annotations

from dataclasses import dataclass

from tfovss_core.methods import LastBlockMethod, MethodCard, MethodInfo, option, register_method

SCLIP_PROTOCOL = dict(short_side=336, crop=224, stride=112, logit_scale=40.0)


class SCLIP(LastBlockMethod):
    name = "sclip"
    info = MethodInfo(
        title="SCLIP",
        paper="Wang, Mei, Yuille. SCLIP: Rethinking Self-Attention for Dense Vision-Language "
              "Inference. ECCV 2024 (arXiv 2312.01597)",
        official_code="wangf3014/SCLIP@b56bd30",
        summary="A = softmax(q q^T / sqrt(d)) + softmax(k k^T / sqrt(d)) (rows sum to 2, not "
                "renormalised: the logit scale acts as the temperature), residual and FFN kept.",
    )

    @dataclass
    class Options:
        residual_ffn: bool = option(True, "Keep the last block's residual and FFN (official SCLIP). "
                                          "False is the 'SCLIP attention, no residual/FFN' baseline of LHT-CLIP.")

    def attention(self, q, k, v, grid):
        bb = self.backbone
        return bb.similarity_attention(q, q) + bb.similarity_attention(k, k)

    def keep_residual(self):
        return self.options.residual_ffn

    def keep_ffn(self):
        return self.options.residual_ffn


CARD = MethodCard(
    method=SCLIP,
    text_independent=True,
    display_name="SCLIP",
    repo="wangf3014/SCLIP", commit="b56bd30",
    protocol=SCLIP_PROTOCOL,
    # The official per-dataset settings, each with its source (where every number comes from:
    # tfovss_core/spec/presets/README.md).
    datasets={
        "voc21": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 65,
            "prob_thd": 0.1, "area_thd": 0.1, "pamr_steps": 0, "pamr_dilations": [8, 16], "class_file": "voc21.txt",
            "source": "wangf3014/SCLIP@b56bd30: configs/cfg_voc21.py",
        },
        "voc20": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "voc20.txt", "source": "wangf3014/SCLIP@b56bd30: configs/cfg_voc20.py",
        },
        "context60": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 50,
            "prob_thd": 0.1, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "context60.txt", "source": "wangf3014/SCLIP@b56bd30: configs/cfg_context60.py",
        },
        "context59": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "context59.txt", "source": "wangf3014/SCLIP@b56bd30: configs/cfg_context59.py",
        },
        "coco_object": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 50,
            "prob_thd": 0.1, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "coco_object.txt", "source": "wangf3014/SCLIP@b56bd30: configs/cfg_coco_object.py",
        },
        "coco_stuff": {
            "short_side": 448, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "coco_stuff.txt", "source": "wangf3014/SCLIP@b56bd30: configs/cfg_coco_stuff164k.py",
        },
        "cityscapes": {
            "short_side": 560, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "cityscapes.txt", "source": "wangf3014/SCLIP@b56bd30: configs/cfg_city_scapes.py",
        },
        "ade20k": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "ade20k.txt", "source": "wangf3014/SCLIP@b56bd30: configs/cfg_ade20k.py",
        },
        "ade847": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "ade847.txt",
            "source": "GUESS: no official config; copied from wangf3014/SCLIP@b56bd30: configs/cfg_ade20k.py (ADE20K-150)",
            "guess": True,
        },
        "context459": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "context459.txt",
            "source": "GUESS: no official config; copied from wangf3014/SCLIP@b56bd30: configs/cfg_ade20k.py (ADE20K-150)",
            "guess": True,
        },
    },
)
register_method(CARD)
