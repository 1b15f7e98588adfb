"""ClearCLIP (Lan et al., ECCV 2024): self-self attention, no residual, no FFN in the last block."""
from __future__ import annotations

import copy
from dataclasses import dataclass

from tfovss_core.methods import LastBlockMethod, MethodCard, MethodInfo, option, register_method
from tfovss_core.methods.clip import CLEARCLIP_PROTOCOL


class ClearCLIP(LastBlockMethod):
    name = "clearclip"
    info = MethodInfo(
        title="ClearCLIP",
        paper="Lan et al. ClearCLIP: Decomposing CLIP Representations for Dense Vision-Language "
              "Inference. ECCV 2024",
        official_code="mc-lan/ClearCLIP@ad68a40 (model_type='ClearCLIP', ignore_residual=True)",
        summary="A = softmax(q q^T / sqrt(d)); y = out_proj(A v) with the residual connection and "
                "the FFN removed; then ln_post and the projection.",
    )

    @dataclass
    class Options:
        attention: str = option("qq", "Self-self attention kind of the last block: q-q (ClearCLIP), "
                                      "k-k, v-v, or q-k (standard).", choices=("qq", "kk", "vv", "qk"))
        residual: bool = option(False, "Keep the residual connection (ClearCLIP's ablation).")
        ffn: bool = option(False, "Keep the FFN (ClearCLIP's ablation).")

    def attention(self, q, k, v, grid):
        a, b = {"qq": (q, q), "kk": (k, k), "vv": (v, v), "qk": (q, k)}[self.options.attention]
        return self.backbone.similarity_attention(a, b)

    def keep_residual(self):
        return self.options.residual

    def keep_ffn(self):
        return self.options.ffn


# The official per-dataset settings of ClearCLIP's cfg files, each with its source (where every
# number comes from: tfovss_core/spec/presets/README.md).
CLEARCLIP_DATASETS = {
    "voc21": {
        "short_side": 448, "max_long_side": 2048, "crop": 448, "stride": 224, "logit_scale": 50,
        "prob_thd": 0.5, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
        "class_file": "clearclip_voc21.txt", "source": "mc-lan/ClearCLIP@ad68a40: configs/cfg_voc21.py",
        "clearclip_framework": {"model_type": "ClearCLIP", "ignore_residual": True},
    },
    "voc20": {
        "short_side": 448, "max_long_side": 2048, "crop": 448, "stride": 224, "logit_scale": 50,
        "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
        "class_file": "clearclip_voc20.txt", "source": "mc-lan/ClearCLIP@ad68a40: configs/cfg_voc20.py",
        "clearclip_framework": {"model_type": "ClearCLIP", "ignore_residual": True},
    },
    "context60": {
        "short_side": 448, "max_long_side": 2048, "crop": 448, "stride": 224, "logit_scale": 50,
        "prob_thd": 0.15, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
        "class_file": "context60.txt", "source": "mc-lan/ClearCLIP@ad68a40: configs/cfg_context60.py",
        "clearclip_framework": {"model_type": "ClearCLIP", "ignore_residual": True},
    },
    "context59": {
        "short_side": 448, "max_long_side": 2048, "crop": 448, "stride": 224, "logit_scale": 50,
        "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
        "class_file": "context59.txt", "source": "mc-lan/ClearCLIP@ad68a40: configs/cfg_context59.py",
        "clearclip_framework": {"model_type": "ClearCLIP", "ignore_residual": True},
    },
    "coco_object": {
        "short_side": 448, "max_long_side": 2048, "crop": 448, "stride": 224, "logit_scale": 50,
        "prob_thd": 0.4, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
        "class_file": "clearclip_coco_object.txt",
        "source": "mc-lan/ClearCLIP@ad68a40: configs/cfg_coco_object.py",
        "clearclip_framework": {"model_type": "ClearCLIP", "ignore_residual": True},
    },
    "coco_stuff": {
        "short_side": 448, "max_long_side": 2048, "crop": 448, "stride": 224, "logit_scale": 50,
        "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
        "class_file": "coco_stuff.txt", "source": "mc-lan/ClearCLIP@ad68a40: configs/cfg_coco_stuff164k.py",
        "clearclip_framework": {"model_type": "ClearCLIP", "ignore_residual": True},
    },
    "cityscapes": {
        "short_side": 448, "max_long_side": 2048, "crop": 224, "stride": 224, "logit_scale": 50,
        "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
        "class_file": "cityscapes.txt", "source": "mc-lan/ClearCLIP@ad68a40: configs/cfg_city_scapes.py",
        "clearclip_framework": {"model_type": "ClearCLIP", "ignore_residual": True},
    },
    "ade20k": {
        "short_side": 448, "max_long_side": 2048, "crop": 448, "stride": 224, "logit_scale": 50,
        "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
        "class_file": "ade20k.txt", "source": "mc-lan/ClearCLIP@ad68a40: configs/cfg_ade20k.py",
        "clearclip_framework": {"model_type": "ClearCLIP", "ignore_residual": True},
    },
    "ade847": {
        "short_side": 448, "max_long_side": 2048, "crop": 448, "stride": 224, "logit_scale": 50,
        "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
        "class_file": "ade847.txt",
        "source": "GUESS: no official config; copied from mc-lan/ClearCLIP@ad68a40: configs/cfg_ade20k.py (ADE20K-150)",
        "clearclip_framework": {"model_type": "ClearCLIP", "ignore_residual": True}, "guess": True,
    },
    "context459": {
        "short_side": 448, "max_long_side": 2048, "crop": 448, "stride": 224, "logit_scale": 50,
        "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
        "class_file": "context459.txt",
        "source": "GUESS: no official config; copied from mc-lan/ClearCLIP@ad68a40: configs/cfg_ade20k.py (ADE20K-150)",
        "clearclip_framework": {"model_type": "ClearCLIP", "ignore_residual": True}, "guess": True,
    },
}


def clearclip_framework_datasets(model_type: str) -> dict:
    """:data:`CLEARCLIP_DATASETS` for ClearCLIP's framework run with another ``model_type``: the
    baselines it re-implements (MaskCLIP) were run with the same cfg files."""
    datasets = copy.deepcopy(CLEARCLIP_DATASETS)
    for settings in datasets.values():
        settings["clearclip_framework"]["model_type"] = model_type
    return datasets


CARD = MethodCard(
    method=ClearCLIP,
    text_independent=True,
    display_name="ClearCLIP",
    repo="mc-lan/ClearCLIP", commit="ad68a40",
    aliases=("clear_clip",),
    protocol=CLEARCLIP_PROTOCOL,
    datasets=CLEARCLIP_DATASETS,
)
register_method(CARD)
