"""ClearCLIP (Lan et al., ECCV 2024): self-self attention, no residual, no FFN in the last block."""
from __future__ import annotations

from dataclasses import dataclass

from tfovss_core.methods import LastBlockMethod, MethodInfo, option, register_method
from tfovss_core.methods.clip import CLEARCLIP_PROTOCOL


@register_method
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

    default_settings = CLEARCLIP_PROTOCOL

    def attention(self, q, k, v, grid):
        a, b = {"qq": (q, q), "kk": (k, k), "vv": (v, v), "qk": (q, k)}[self.options.attention]
        return self.backbone.similarity_attention(a, b)

    def keep_residual(self):
        return self.options.residual

    def keep_ffn(self):
        return self.options.ffn
