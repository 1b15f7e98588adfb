"""Vanilla dense CLIP: the unchanged last block on every token, CLS dropped."""
from __future__ import annotations

from tfovss_core.methods import LastBlockMethod, MethodInfo, register_method

# ClearCLIP's framework (the baselines' golden protocol): short side 448, windows 448 / 224,
# logit scale 50, crops padded to a multiple of the patch size.
CLEARCLIP_PROTOCOL = dict(short_side=448, crop=448, stride=224, logit_scale=50.0, pad_to_patch=True)


@register_method
class VanillaCLIP(LastBlockMethod):
    name = "clip"
    info = MethodInfo(
        title="CLIP (dense baseline)",
        paper="Radford et al., ICML 2021; dense use as in ClearCLIP's baselines",
        official_code="mc-lan/ClearCLIP@ad68a40 (model_type='vanilla', ignore_residual=False)",
        summary="softmax(q k^T) attention, residual and FFN kept in the last block; ln_post and the "
                "visual projection applied to every patch token.",
    )
    default_settings = CLEARCLIP_PROTOCOL

    def attention(self, q, k, v, grid):
        return self.backbone.similarity_attention(q, k)

    def keep_residual(self):
        return True

    def keep_ffn(self):
        return True
