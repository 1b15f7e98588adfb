"""MaskCLIP (Zhou, Loy, Dai, ECCV 2022): value embeddings of the last block as dense features."""
from __future__ import annotations

from dataclasses import dataclass

from tfovss_core.methods import Method, MethodCard, MethodInfo, option, register_method
from tfovss_core.methods.clearclip import clearclip_framework_datasets
from tfovss_core.methods.clip import CLEARCLIP_PROTOCOL


class MaskCLIP(Method):
    name = "maskclip"
    info = MethodInfo(
        title="MaskCLIP",
        paper="Zhou, Loy, Dai. Extract Free Dense Labels from CLIP. ECCV 2022",
        official_code="chongzhou96/MaskCLIP@245d31f (own mmseg ViT); default here = ClearCLIP's "
                      "re-implementation, mc-lan/ClearCLIP@ad68a40 model_type='MaskCLIP'",
        summary="Identity attention in the last block: each token keeps only its own value, "
                "out_proj(v). By default (ClearCLIP's re-implementation, the goldens' variant) the "
                "residual and FFN are dropped: features = proj(ln_post(out_proj(v))). "
                "residual_ffn=True gives the original repository's structure (v + x, then + FFN).",
    )

    @dataclass
    class Options:
        residual_ffn: bool = option(
            False, "Keep the residual and FFN on the value path (the original MaskCLIP code). "
                   "False = ClearCLIP's re-implementation, which most papers' tables use.")

    def features(self, trunk):
        bb = self.backbone
        x = trunk.x
        block = bb.block(bb.depth - 1)
        v = bb.value(block, block.ln_1(x))
        y = block.ls_1(bb.merge_and_project(block, v))   # identity attention: A v = v
        if self.options.residual_ffn:
            y = x + y
            y = y + bb.mlp(block, y)
        return bb.head(y[:, 1:])


CARD = MethodCard(
    method=MaskCLIP,
    text_independent=True,
    display_name="MaskCLIP",
    repo="mc-lan/ClearCLIP", commit="ad68a40",
    note=("TCL/SCLIP-protocol numbers of MaskCLIP come from ClearCLIP's framework (model_type='MaskCLIP'); these are "
        "ClearCLIP's cfg values. Whether ClearCLIP tuned prob_thd for MaskCLIP separately is not documented "
        "(GUESS: the shipped cfg). The official MaskCLIP protocol (whole image, short side 512, no background) is "
        "different."),
    aliases=("mask_clip",),
    protocol=CLEARCLIP_PROTOCOL,
    # ClearCLIP's cfg files, run with model_type='MaskCLIP' (the note above)
    datasets=clearclip_framework_datasets("MaskCLIP"),
)
register_method(CARD)
