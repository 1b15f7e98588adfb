"""Vanilla dense CLIP: the unchanged last block on every token, CLS dropped."""
from __future__ import annotations

from tfovss_core.methods import LastBlockMethod, MethodCard, MethodInfo, register_method

# ClearCLIP's framework (the baselines' golden protocol): short side 448, windows 448 / 224,
# logit scale 50, crops padded to a multiple of the patch size.
CLEARCLIP_PROTOCOL = dict(short_side=448, crop=448, stride=224, logit_scale=50.0, pad_to_patch=True)


class VanillaCLIP(LastBlockMethod):
    name = "clip"
    info = MethodInfo(
        title="CLIP (dense baseline)",
        paper="Radford et al., ICML 2021; dense use as in ClearCLIP's baselines",
        official_code="mc-lan/ClearCLIP@ad68a40 (model_type='vanilla', ignore_residual=False)",
        summary="softmax(q k^T) attention, residual and FFN kept in the last block; ln_post and the "
                "visual projection applied to every patch token.",
    )

    def attention(self, q, k, v, grid):
        return self.backbone.similarity_attention(q, k)

    def keep_residual(self):
        return True

    def keep_ffn(self):
        return True


CARD = MethodCard(
    method=VanillaCLIP,
    text_independent=True,
    display_name="CLIP (vanilla dense)",
    repo="mc-lan/ClearCLIP", commit="ad68a40",
    note=("No official code of its own: ClearCLIP's framework with model_type='vanilla', ignore_residual=False. "
        "prob_thd 0.2 on the datasets with background is the ClearCLIP author's answer in mc-lan/ClearCLIP#2; the "
        "shipped cfg files say 0.5 / 0.15 / 0.4 (the goldens were run with the shipped cfg, 0.5 on VOC21)."),
    aliases=("vanilla", "vanilla_clip",),
    protocol=CLEARCLIP_PROTOCOL,
    # The official per-dataset settings, each with its source (where every number comes from:
    # tfovss_core/spec/presets/README.md).
    datasets={
        "voc21": {
            "short_side": 448, "max_long_side": 2048, "crop": 448, "stride": 224, "logit_scale": 50,
            "prob_thd": 0.2, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "clearclip_voc21.txt",
            "source": "mc-lan/ClearCLIP@ad68a40: configs/cfg_voc21.py (prob_thd from mc-lan/ClearCLIP#2)",
            "clearclip_framework": {"model_type": "vanilla", "ignore_residual": False},
        },
        "voc20": {
            "short_side": 448, "max_long_side": 2048, "crop": 448, "stride": 224, "logit_scale": 50,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "clearclip_voc20.txt", "source": "mc-lan/ClearCLIP@ad68a40: configs/cfg_voc20.py",
            "clearclip_framework": {"model_type": "vanilla", "ignore_residual": False},
        },
        "context60": {
            "short_side": 448, "max_long_side": 2048, "crop": 448, "stride": 224, "logit_scale": 50,
            "prob_thd": 0.2, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "context60.txt",
            "source": "mc-lan/ClearCLIP@ad68a40: configs/cfg_context60.py (prob_thd from mc-lan/ClearCLIP#2)",
            "clearclip_framework": {"model_type": "vanilla", "ignore_residual": False},
        },
        "context59": {
            "short_side": 448, "max_long_side": 2048, "crop": 448, "stride": 224, "logit_scale": 50,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "context59.txt", "source": "mc-lan/ClearCLIP@ad68a40: configs/cfg_context59.py",
            "clearclip_framework": {"model_type": "vanilla", "ignore_residual": False},
        },
        "coco_object": {
            "short_side": 448, "max_long_side": 2048, "crop": 448, "stride": 224, "logit_scale": 50,
            "prob_thd": 0.2, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "clearclip_coco_object.txt",
            "source": "mc-lan/ClearCLIP@ad68a40: configs/cfg_coco_object.py (prob_thd from mc-lan/ClearCLIP#2)",
            "clearclip_framework": {"model_type": "vanilla", "ignore_residual": False},
        },
        "coco_stuff": {
            "short_side": 448, "max_long_side": 2048, "crop": 448, "stride": 224, "logit_scale": 50,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "coco_stuff.txt", "source": "mc-lan/ClearCLIP@ad68a40: configs/cfg_coco_stuff164k.py",
            "clearclip_framework": {"model_type": "vanilla", "ignore_residual": False},
        },
        "cityscapes": {
            "short_side": 448, "max_long_side": 2048, "crop": 224, "stride": 224, "logit_scale": 50,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "cityscapes.txt", "source": "mc-lan/ClearCLIP@ad68a40: configs/cfg_city_scapes.py",
            "clearclip_framework": {"model_type": "vanilla", "ignore_residual": False},
        },
        "ade20k": {
            "short_side": 448, "max_long_side": 2048, "crop": 448, "stride": 224, "logit_scale": 50,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "ade20k.txt", "source": "mc-lan/ClearCLIP@ad68a40: configs/cfg_ade20k.py",
            "clearclip_framework": {"model_type": "vanilla", "ignore_residual": False},
        },
        "ade847": {
            "short_side": 448, "max_long_side": 2048, "crop": 448, "stride": 224, "logit_scale": 50,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "ade847.txt",
            "source": "GUESS: no official config; copied from mc-lan/ClearCLIP@ad68a40: configs/cfg_ade20k.py (ADE20K-150)",
            "clearclip_framework": {"model_type": "vanilla", "ignore_residual": False}, "guess": True,
        },
        "context459": {
            "short_side": 448, "max_long_side": 2048, "crop": 448, "stride": 224, "logit_scale": 50,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "context459.txt",
            "source": "GUESS: no official config; copied from mc-lan/ClearCLIP@ad68a40: configs/cfg_ade20k.py (ADE20K-150)",
            "clearclip_framework": {"model_type": "vanilla", "ignore_residual": False}, "guess": True,
        },
    },
)
register_method(CARD)
