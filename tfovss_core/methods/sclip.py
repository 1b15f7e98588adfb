"""SCLIP (Wang, Mei, Yuille, ECCV 2024): correlative self-attention in the last block."""
from __future__ import annotations

from dataclasses import dataclass

from tfovss_core.methods import LastBlockMethod, MethodInfo, option, register_method

SCLIP_PROTOCOL = dict(short_side=336, crop=224, stride=112, logit_scale=40.0)


@register_method
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

    default_settings = SCLIP_PROTOCOL

    def attention(self, q, k, v, grid):
        bb = self.backbone
        return bb.similarity_attention(q, q) + bb.similarity_attention(k, k)

    def keep_residual(self):
        return self.options.residual_ffn

    def keep_ffn(self):
        return self.options.residual_ffn
