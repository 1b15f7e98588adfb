"""SC-CLIP (Bai et al., arXiv 2411.15869 / IEEE TIP 2025): self-calibrated CLIP.

Anomalous tokens of the penultimate output are found with SC-CLIP's own LOF variant and replaced
by the mean of their normal 3x3 neighbours; mid-layer similarities adjust the features before and
after the last block's attention; a second pass of the last block over the sum of middle-layer
outputs (multi-level fusion) is added; the penultimate CLS token is re-injected.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tfovss_core.methods import Method, MethodCard, MethodInfo, option, register_method
from tfovss_core.errors import ConfigError
from tfovss_core.clip.backbone import TrunkRequest
from tfovss_core.methods.sclip import SCLIP_PROTOCOL
from tfovss_core.ops.outliers import lof_outliers, replace_with_neighbour_mean
from tfovss_core.ops.similarity import cosine_similarity, row_normalised


class SCCLIP(Method):
    name = "scclip"
    info = MethodInfo(
        title="SC-CLIP",
        paper="Bai et al. Self-Calibrated CLIP for Training-Free Open-Vocabulary Segmentation. "
              "arXiv 2411.15869 (IEEE TIP 2025)",
        official_code="SuleBai/SC-CLIP@0417ba9",
        summary="LOF anomaly repair of the penultimate tokens, mid-layer similarity adjustment "
                "before and after a k-k + sharpened-similarity attention (no residual, no FFN), "
                "multi-level fusion (second pass over the sum of middle outputs), CLS re-injection.",
    )

    @dataclass
    class Options:
        pre_adjust_idx: int | None = option(None, "Block whose output gives the mid-layer similarity "
                                                  "(B/16: 8, L/14: 16).", source="backbone")
        post_adjust_idx: int | None = option(None, "Block whose output gives the post-attention "
                                                   "aggregation similarity (B/16: 3, L/14: 6).", source="backbone")
        multi_start_idx: int | None = option(None, "First block summed by multi-level fusion (B/16: 3, L/14: 8).",
                                             source="backbone")
        multi_end_idx: int | None = option(None, "End (exclusive) of the fused blocks (B/16: 10, L/14: 19).",
                                           source="backbone")
        res_cls: float | None = option(None, "Weight of the re-injected CLS token (B/16: 0.3, L/14: 0.1).",
                                       source="backbone")
        beta: float = option(0.4, "Similarity threshold of the aggregation matrices.")
        lof_neighbors: int = option(30, "k of the LOF anomaly detector.")
        contamination: float = option(0.05, "Fraction of tokens flagged by LOF.")
        sharpen: float = option(3.0, "Factor of the mean-centred mid-layer similarity in the attention.")

    def validate(self) -> None:
        o = self.options
        for name in ("pre_adjust_idx", "post_adjust_idx", "multi_start_idx"):
            self.check_block_index(name, getattr(o, name))
        self.check_block_index("multi_end_idx", o.multi_end_idx, limit=self.backbone.depth)
        if o.multi_end_idx <= o.multi_start_idx:
            raise ConfigError(f"scclip: multi_end_idx ({o.multi_end_idx}) must exceed multi_start_idx ({o.multi_start_idx})")

    def trunk_request(self) -> TrunkRequest:
        o = self.options
        keep = {o.pre_adjust_idx, o.post_adjust_idx, *range(o.multi_start_idx, o.multi_end_idx)}
        return TrunkRequest(depth=self.backbone.depth - 1, keep=frozenset(keep))

    def detect_anomalies(self, trunk) -> tuple[torch.Tensor, torch.Tensor]:
        """LOF outlier mask and scores of the penultimate patch tokens, ``(B, N)`` each."""
        return lof_outliers(trunk.x[:, 1:], self.options.lof_neighbors, self.options.contamination)

    def _attention(self, block, h: torch.Tensor, s_mid: torch.Tensor) -> torch.Tensor:
        bb = self.backbone
        _, k, v = bb.qkv(block, h)
        g = (s_mid - s_mid.mean(dim=(-2, -1), keepdim=True)) * self.options.sharpen
        g = torch.softmax(g.masked_fill(g < 0, float("-inf")), dim=-1)
        probs = (g.unsqueeze(1) + bb.similarity_attention(k, k)) / 2
        return bb.attend(block, probs, v)

    def features(self, trunk):
        bb, o, grid = self.backbone, self.options, trunk.grid
        x = trunk.x
        cls_pen, patches = x[:, :1], x[:, 1:]
        abnormal, _ = self.detect_anomalies(trunk)
        patches = replace_with_neighbour_mean(patches, abnormal, grid)

        mid = replace_with_neighbour_mean(trunk.outputs[o.pre_adjust_idx][:, 1:], abnormal, grid)
        s_mid = cosine_similarity(mid)
        patches = row_normalised(torch.where(s_mid < o.beta, 0.0, s_mid)) @ patches

        block = bb.block(bb.depth - 1)
        s_post = cosine_similarity(trunk.outputs[o.post_adjust_idx][:, 1:])
        w_post = row_normalised(torch.where(s_post < o.beta, 0.0, s_post))

        y = self._attention(block, block.ln_1(patches), s_mid) + o.res_cls * cls_pen
        y = w_post @ y

        fused = sum(trunk.outputs[i] for i in range(o.multi_start_idx, o.multi_end_idx))
        y2 = self._attention(block, block.ln_1(fused[:, 1:]), s_mid) + o.res_cls * fused[:, :1]
        y = y + w_post @ y2
        return bb.head(y)


CARD = MethodCard(
    method=SCCLIP,
    text_independent=True,
    display_name="SC-CLIP",
    repo="SuleBai/SC-CLIP", commit="0417ba9",
    aliases=("sc_clip",),
    protocol=SCLIP_PROTOCOL,
    constants={
        # SuleBai/SC-CLIP configs/base_config.py (0417ba9)
        "ViT-B/16": dict(pre_adjust_idx=8, post_adjust_idx=3, multi_start_idx=3, multi_end_idx=10, res_cls=0.3),
        # SC-CLIP first commit 74471da, commented "# for ViT-L/14" block of configs/base_config.py
        "ViT-L/14": dict(pre_adjust_idx=16, post_adjust_idx=6, multi_start_idx=8, multi_end_idx=19, res_cls=0.1),
    },
    # The official per-dataset settings, each with its source (where every number comes from:
    # tfovss_core/spec/presets/README.md).
    datasets={
        "voc21": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 50,
            "prob_thd": 0.15, "area_thd": 0.1, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "voc21.txt", "source": "SuleBai/SC-CLIP@0417ba9: configs/cfg_voc21.py",
            "overrides_by_depth": {
                "24": {
                    "logit_scale": 40, "prob_thd": 0.2,
                    "source": "SuleBai/SC-CLIP@74471da: configs/cfg_voc21.py ('# for ViT-L/14' line: prob_thd=0.2; no logit_scale line, so the default 40)",
                },
            },
        },
        "voc20": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "voc20.txt", "source": "SuleBai/SC-CLIP@0417ba9: configs/cfg_voc20.py",
        },
        "context60": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.15, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "context60.txt", "source": "SuleBai/SC-CLIP@0417ba9: configs/cfg_context60.py",
        },
        "context59": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "context59.txt", "source": "SuleBai/SC-CLIP@0417ba9: configs/cfg_context59.py",
        },
        "coco_object": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 55,
            "prob_thd": 0.35, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "coco_object.txt", "source": "SuleBai/SC-CLIP@0417ba9: configs/cfg_coco_object.py",
            "overrides_by_depth": {
                "24": {
                    "logit_scale": 40, "prob_thd": 0.25,
                    "source": "SuleBai/SC-CLIP@74471da: configs/cfg_coco_object.py ('# for ViT-L/14' line: prob_thd=0.25; no logit_scale line, so the default 40)",
                },
            },
        },
        "coco_stuff": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "coco_stuff.txt", "source": "SuleBai/SC-CLIP@0417ba9: configs/cfg_coco_stuff164k.py",
        },
        "cityscapes": {
            "short_side": 560, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "cityscapes.txt", "source": "SuleBai/SC-CLIP@0417ba9: configs/cfg_city_scapes.py",
        },
        "ade20k": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "ade20k.txt", "source": "SuleBai/SC-CLIP@0417ba9: configs/cfg_ade20k.py",
        },
        "ade847": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "ade847.txt",
            "source": "GUESS: no official config; copied from SuleBai/SC-CLIP@0417ba9: configs/cfg_ade20k.py (ADE20K-150)",
            "guess": True,
        },
        "context459": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "context459.txt",
            "source": "GUESS: no official config; copied from SuleBai/SC-CLIP@0417ba9: configs/cfg_ade20k.py (ADE20K-150)",
            "guess": True,
        },
    },
)
register_method(CARD)
