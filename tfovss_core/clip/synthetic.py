"""Small synthetic CLIPs for tests, demos and benchmarks without pretrained weights.

Every model made here is random: its segmentations mean nothing. Outputs produced with them must
be labelled as synthetic (the CLI and the plugin do so).
"""
from __future__ import annotations

import numpy as np
import torch

from tfovss_core.clip.loading import ClipModel, load_clip

TINY_VISION = dict(image_size=64, patch_size=16, width=128, layers=3)  # 2 heads (width // 64)
TINY_TEXT = dict(width=64, layers=2, context_length=77, vocab_size=49408)  # 1 head
TINY_EMBED = 32


def tiny_state_dict(seed: int = 0, layers: int = 3) -> dict[str, torch.Tensor]:
    """An OpenAI-format state dict of a tiny ViT CLIP (patch 16, width 128, ``layers`` blocks).

    The OpenAI builder infers heads as width // 64, so widths are multiples of 64."""
    rng = np.random.default_rng(seed)
    v, t, e = dict(TINY_VISION, layers=layers), TINY_TEXT, TINY_EMBED
    W, P, G = v["width"], v["patch_size"], v["image_size"] // v["patch_size"]
    TW = t["width"]
    shapes = {
        "visual.conv1.weight": (W, 3, P, P), "visual.class_embedding": (W,),
        "visual.positional_embedding": (G * G + 1, W), "visual.ln_pre.weight": (W,), "visual.ln_pre.bias": (W,),
        "visual.ln_post.weight": (W,), "visual.ln_post.bias": (W,), "visual.proj": (W, e),
        "token_embedding.weight": (t["vocab_size"], TW), "positional_embedding": (t["context_length"], TW),
        "ln_final.weight": (TW,), "ln_final.bias": (TW,), "text_projection": (TW, e), "logit_scale": (),
    }
    for prefix, width, n in (("visual.transformer", W, layers), ("transformer", TW, t["layers"])):
        for i in range(n):
            b = f"{prefix}.resblocks.{i}"
            shapes.update({f"{b}.attn.in_proj_weight": (3 * width, width), f"{b}.attn.in_proj_bias": (3 * width,),
                           f"{b}.attn.out_proj.weight": (width, width), f"{b}.attn.out_proj.bias": (width,),
                           f"{b}.ln_1.weight": (width,), f"{b}.ln_1.bias": (width,),
                           f"{b}.ln_2.weight": (width,), f"{b}.ln_2.bias": (width,),
                           f"{b}.mlp.c_fc.weight": (4 * width, width), f"{b}.mlp.c_fc.bias": (4 * width,),
                           f"{b}.mlp.c_proj.weight": (width, 4 * width), f"{b}.mlp.c_proj.bias": (width,)})
    sd = {}
    for key in sorted(shapes):
        shape = shapes[key]
        if key == "logit_scale":
            sd[key] = torch.tensor(float(np.log(100.0)))
            continue
        z = rng.standard_normal(shape)
        if "ln_" in key and key.endswith("weight"):
            val = 1 + 0.02 * z
        elif key.endswith("bias"):
            val = 0.02 * z if "ln_" in key else 0.01 * z
        elif key in ("visual.class_embedding", "visual.positional_embedding", "visual.proj"):
            val = W ** -0.5 * z
        elif key == "text_projection":
            val = TW ** -0.5 * z
        elif key == "positional_embedding":
            val = 0.01 * z
        else:
            val = 0.02 * z
        sd[key] = torch.from_numpy(val.astype(np.float32))
    return sd


def tiny_clip(seed: int = 0, device=None, layers: int = 3, **kwargs) -> ClipModel:
    """A tiny random CLIP (3 ViT blocks of width 128, 2 heads) loaded through :func:`load_clip`,
    labelled with its synthetic spec (``tiny:seedN``) so that every output made with it is
    flagged synthetic (:func:`tfovss_core.spec.weights.is_synthetic`)."""
    model = load_clip("tiny", tiny_state_dict(seed, layers), device=device, **kwargs)
    model.pretrained = f"tiny:seed{seed}"
    return model
