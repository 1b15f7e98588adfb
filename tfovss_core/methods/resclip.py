"""ResCLIP (Yang, Deng, Li, Duan, CVPR 2025): residual cross-correlation self-attention (RCS) and
semantic feedback refinement (SFR) on top of a NACLIP-style last block.

RCS mixes the head-wise q-k attention maps of middle blocks (5..8 for every backbone in the
official code) into the last block's attention after its softmax. SFR first segments the window
with the RCS-only last block (temporary cosine logits, PAMR, softmax over queries, an adaptive
threshold, one label per patch by majority), turns the patch labels into a same-label affinity
map (decayed with distance when the straight path between two patches leaves the label, blurred
along rows, row-normalised) and mixes it into the last block's attention logits before the
softmax. Numerics follow ``yvhangyang/ResCLIP`` (``clip/model.py``: ``forward``,
``create_logit_temp``, ``create_patch_matrix``, ``check_path``, ``generate_attention_sfr``,
``custom_attn``) on any device; only the SFR map is kept in the model's precision (the official
code casts it to float16, ``sfr_fp16`` reproduces that).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tfovss_core.methods import Method, MethodCard, MethodInfo, option, register_method
from tfovss_core.clip.backbone import Trunk, TrunkRequest
from tfovss_core.errors import ConfigError
from tfovss_core.ops.pamr import pamr
from tfovss_core.methods.base import WindowContext
from tfovss_core.methods.naclip import gaussian_attention_bias

# ResCLIPSegmentation's constructor defaults (slide 224 / 112, logit scale 40, final PAMR off).
RESCLIP_PROTOCOL = dict(short_side=336, crop=224, stride=112, logit_scale=40.0, pamr_steps=0)


# ----------------------------------------------------------------------------------- SFR pieces
def sfr_patch_labels(query_probs: torch.Tensor, grid: tuple[int, int], patch: int,
                     temp_thd: float) -> torch.Tensor:
    """One query label per patch from temporary per-pixel query probabilities.

    ``query_probs`` ``(B, Q, H, W)``. Per pixel the argmax query, set to query 0 where its
    probability is below ``temp_thd`` (ResCLIP's "AdaThr", also on datasets where 0 is a real
    class); per ``patch x patch`` cell the most frequent label, ties to the smallest query index
    (``torch.mode`` on CPU); rows / columns past the last full patch are ignored. ``(B, gh, gw)``.
    """
    b, q = query_probs.shape[:2]
    gh, gw = grid
    top, label = query_probs.max(dim=1)
    label = torch.where(top < temp_thd, torch.zeros_like(label), label)
    label = label[:, :gh * patch, :gw * patch]
    cells = label.reshape(b, gh, patch, gw, patch).permute(0, 1, 3, 2, 4).reshape(b * gh * gw, patch * patch)
    counts = torch.zeros(b * gh * gw, q, dtype=torch.int32, device=label.device)
    counts.scatter_add_(1, cells, torch.ones_like(cells, dtype=torch.int32))
    return counts.argmax(dim=1).view(b, gh, gw)   # first maximum = smallest query on ties


def _straight_paths_stay(labels: torch.Tensor, start: torch.Tensor, end: torch.Tensor, max_steps: int,
                         chunk_elems: int = 1 << 22) -> torch.Tensor:
    """ResCLIP's ``check_path`` for pairs of patch coordinates ``(P, 2)``: True where every sampled
    point of the path keeps the start's label.

    Points are ``round(start * (1 - t) + end * t)`` for ``t = linspace(0, 1, max_steps + 1)`` with
    the *global* ``max_steps``, counted only up to the pair's own Chebyshev distance; so a short
    pair checks only the first part of its segment. Reproduced as is (it defines the goldens).
    """
    t = torch.linspace(0, 1, steps=max_steps + 1, device=labels.device).view(1, -1, 1)
    steps = (end - start).abs().max(dim=1).values
    positions = torch.arange(max_steps + 1, device=labels.device)
    start_label = labels[start[:, 0], start[:, 1]]
    out = torch.empty(start.shape[0], dtype=torch.bool, device=labels.device)
    rows = max(1, chunk_elems // (2 * (max_steps + 1)))
    for s in range(0, start.shape[0], rows):
        a, e = start[s:s + rows], end[s:s + rows]
        points = (a.unsqueeze(1) * (1 - t) + e.unsqueeze(1) * t).round().long()
        same = labels[points[..., 0], points[..., 1]] == start_label[s:s + rows, None]
        out[s:s + rows] = (same | (positions[None] > steps[s:s + rows, None])).all(dim=1)
    return out


def sfr_affinity(labels: torch.Tensor, gaussian_std: float = 5.0, delete_same_entity: bool = True) -> torch.Tensor:
    """The SFR attention map ``(1 + N, 1 + N)`` of one patch-label grid ``(gh, gw)``, max 1.

    ``M[i, j] = 1`` where patches i and j share a label (and on the diagonal). With
    ``delete_same_entity`` a pair whose straight path leaves the label (see
    :func:`_straight_paths_stay`) is decayed by ``exp(-chebyshev(i, j) / max chebyshev)``. Each row
    is blurred with a 1-D Gaussian (std ``gaussian_std``, size ``min(N, int(6 std + 1))`` made odd,
    zero padding, flattened row-major order), ReLU'd and normalised to sum 1; CLS row and column
    are 0; finally divided by the global maximum.
    """
    gh, gw = labels.shape
    n = gh * gw
    device = labels.device
    flat = labels.reshape(-1)
    same = flat[:, None] == flat[None, :]
    affinity = same.float()
    affinity.fill_diagonal_(1.0)
    max_steps = max(gh, gw) - 1
    if delete_same_entity and max_steps > 0:
        off_diagonal = same & ~torch.eye(n, dtype=torch.bool, device=device)
        pi, pj = off_diagonal.nonzero(as_tuple=True)
        coords = torch.stack((torch.arange(n, device=device) // gw, torch.arange(n, device=device) % gw), dim=1)
        start, end = coords[pi], coords[pj]
        stays = _straight_paths_stay(labels, start, end, max_steps)
        steps = (end - start).abs().max(dim=1).values
        decay = torch.exp(-steps / max_steps)
        affinity[pi, pj] = torch.where(stays, affinity[pi, pj], affinity[pi, pj] * decay)
    size = min(n, int(6 * gaussian_std + 1))
    size = size if size % 2 == 1 else size + 1
    x = torch.arange(size, device=device) - size // 2
    kernel = torch.exp(-(x ** 2) / (2 * gaussian_std ** 2))
    kernel = kernel / kernel.sum()
    blurred = F.relu(F.conv1d(affinity.unsqueeze(1), kernel.view(1, 1, -1), padding=size // 2).squeeze(1))
    blurred = blurred / (blurred.sum(dim=1, keepdim=True) + 1e-8)
    out = torch.zeros(n + 1, n + 1, device=device)
    out[1:, 1:] = blurred
    return out / out.max()


def _mix(logits: torch.Tensor, extra: torch.Tensor, weights) -> torch.Tensor:
    """``tau * ((1 - lambda) * logits + lambda * extra)`` (ResCLIP's form for both mixes)."""
    tau, lam = weights
    return tau * ((1 - lam) * logits + lam * extra)


class ResCLIP(Method):
    name = "resclip"
    info = MethodInfo(
        title="ResCLIP",
        paper="Yang, Deng, Li, Duan. ResCLIP: Residual Attention for Training-free Dense "
              "Vision-language Inference. CVPR 2025 (arXiv 2411.15851)",
        official_code="yvhangyang/ResCLIP@0e085f7",
        summary="NACLIP's last block (k-k + Gaussian prior, no residual / FFN) whose attention gets "
                "RCS (the mean q-k attention of blocks 5-8, mixed after the softmax) and SFR (a "
                "same-label affinity from a temporary PAMR-refined segmentation of the window, mixed "
                "into the logits before the softmax).",
        reported="docs/methods/resclip.md",
    )
    renormalize_probs = True
    needs_context = True

    @dataclass
    class Options:
        attention: str = option("naclip", "Host attention of the last block: naclip (k-k + Gaussian "
                                          "prior; the default 'resclip' strategy), sclip (q-q + k-k), "
                                          "clearclip (q-q), vanilla (q-k).",
                                choices=("naclip", "sclip", "clearclip", "vanilla"))
        residual_ffn: bool = option(False, "Keep residual and FFN in the last block ('w_resi'; the "
                                           "official SCLIP + ResCLIP variant). False = 'wo_resi'.")
        gaussian_std: float = option(5.0, "Std (patches) of NACLIP's prior and of SFR's row blur.")
        use_rcs: bool = option(True, "Residual cross-correlation self-attention.")
        use_sfr: bool = option(True, "Semantic feedback refinement (a second last-block pass).")
        rcs_layers: tuple[int, ...] | None = option(None, "Blocks whose q-k attention RCS averages "
                                                          "(official: 5-8 for every backbone).",
                                                    source="backbone")
        rcs_weights: tuple[float, float] = option(
            (2.0, 0.3), "(tau, lambda) of the RCS mix; per dataset in the presets. Default: the "
                        "official ADE20K config (the constructor has none).", source="ours")
        sfr_weights: tuple[float, float] = option(
            (2.1, 0.7), "(tau, lambda) of the SFR mix; per dataset in the presets. Default: the "
                        "official ADE20K config.", source="ours")
        temp_thd: float = option(0.25, "SFR's adaptive threshold: pixels of the temporary map whose "
                                       "top query probability is lower get query 0. Default: the "
                                       "official ADE20K / Context59 value.", source="ours")
        delete_same_entity: bool = option(True, "Decay same-label pairs whose straight path leaves "
                                                "the label (every official config sets it).")
        sfr_pamr_steps: int = option(10, "PAMR iterations on the temporary map (hard-coded officially).")
        sfr_pamr_dilations: tuple[int, ...] = option((8, 16), "PAMR dilations on the temporary map.")
        sfr_fp16: bool = option(False, "Round the SFR map to float16 like the official fp16 GPU run "
                                       "(the goldens keep float32).", source="ours")

    def validate(self) -> None:
        o = self.options
        for i in o.rcs_layers:   # the last block's own q-k map is allowed (tiny depth-scaled models)
            self.check_block_index("rcs_layers", i, limit=self.backbone.depth)
        if len(o.rcs_weights) != 2 or len(o.sfr_weights) != 2:
            raise ConfigError(f"{self.name}: rcs_weights and sfr_weights are (tau, lambda) pairs")

    def trunk_request(self) -> TrunkRequest:
        keep = {i - 1 for i in self.options.rcs_layers if i > 0} if self.options.use_rcs else set()
        return TrunkRequest(depth=self.backbone.depth - 1, keep=frozenset(keep))

    # -- pieces ---------------------------------------------------------------------------------
    def rcs_attention(self, trunk: Trunk) -> torch.Tensor | None:
        """Mean of the stock head-wise q-k attention maps of ``rcs_layers`` ``(B, H, L, L)``."""
        if not self.options.use_rcs:
            return None
        bb = self.backbone
        maps = [bb.attention_probs(i, trunk.stream(i)) for i in self.options.rcs_layers]
        return torch.stack(maps).mean(dim=0)

    def _attention(self, q, k, grid, a_rcs, sfr):
        bb, o = self.backbone, self.options
        if o.attention == "naclip":
            logits = (k @ k.transpose(-1, -2)) * bb.scale
            if sfr is not None:
                logits = _mix(logits, sfr, o.sfr_weights)
            probs = torch.softmax(logits + gaussian_attention_bias(grid, o.gaussian_std, k.device, k.dtype), dim=-1)
        elif o.attention == "sclip":
            qq, kk = (q @ q.transpose(-1, -2)) * bb.scale, (k @ k.transpose(-1, -2)) * bb.scale
            if sfr is not None:
                qq, kk = _mix(qq, sfr, o.sfr_weights), _mix(kk, sfr, o.sfr_weights)
            probs = torch.softmax(qq, dim=-1) + torch.softmax(kk, dim=-1)
        else:
            a, b = (q, q) if o.attention == "clearclip" else (q, k)
            logits = (a @ b.transpose(-1, -2)) * bb.scale
            if sfr is not None:
                logits = _mix(logits, sfr, o.sfr_weights)
            probs = torch.softmax(logits, dim=-1)
        if a_rcs is not None:
            probs = _mix(probs, a_rcs, o.rcs_weights)
        return probs

    def _last_block(self, trunk: Trunk, a_rcs, sfr) -> torch.Tensor:
        bb = self.backbone
        sfr = sfr.unsqueeze(1) if sfr is not None else None   # shared by every head
        y = bb.last_block(trunk.x, lambda q, k, v: self._attention(q, k, trunk.grid, a_rcs, sfr),
                          residual=self.options.residual_ffn, ffn=self.options.residual_ffn)
        return bb.head(y[:, 1:])

    def temporary_probs(self, trunk: Trunk, context: WindowContext, a_rcs=None) -> torch.Tensor:
        """SFR's temporary map: per-pixel query probabilities ``(B, Q, H, W)`` of the RCS-only pass."""
        feats = F.normalize(self._last_block(trunk, a_rcs, None).float(), dim=-1)
        gh, gw = trunk.grid
        logits = (feats @ context.text.T).transpose(1, 2).reshape(feats.shape[0], -1, gh, gw)
        images = context.images.to(logits.dtype)
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        if self.options.sfr_pamr_steps > 0:
            logits = pamr(images, logits, self.options.sfr_pamr_steps, self.options.sfr_pamr_dilations)
        return torch.softmax(logits * context.logit_scale, dim=1)

    def patch_labels(self, trunk: Trunk, context: WindowContext, a_rcs=None) -> torch.Tensor:
        """SFR's patch label map ``(B, gh, gw)`` (the goldens' ``sfr_patch_matrix``)."""
        if a_rcs is None:
            a_rcs = self.rcs_attention(trunk)
        probs = self.temporary_probs(trunk, context, a_rcs)
        return sfr_patch_labels(probs, trunk.grid, self.backbone.patch, self.options.temp_thd)

    def sfr_maps(self, labels: torch.Tensor, dtype) -> torch.Tensor:
        o = self.options
        maps = torch.stack([sfr_affinity(lab, o.gaussian_std, o.delete_same_entity) for lab in labels])
        if o.sfr_fp16:
            maps = maps.half()
        return maps.to(dtype)

    def image_side_uses_text(self) -> bool:
        return bool(self.options.use_sfr)

    def features(self, trunk: Trunk, context: WindowContext | None = None) -> torch.Tensor:
        a_rcs = self.rcs_attention(trunk)
        sfr = None
        if self.options.use_sfr:
            if context is None:
                raise ConfigError("resclip: SFR needs the window context (run it through Segmenter)")
            labels = self.patch_labels(trunk, context, a_rcs)
            sfr = self.sfr_maps(labels, trunk.x.dtype)
        return self._last_block(trunk, a_rcs, sfr)


CARD = MethodCard(
    method=ResCLIP,
    # SFR segments each window with the text inside the forward pass; without SFR
    # (use_sfr=False, as under LHT-CLIP) the features ignore the text: image_side_uses_text.
    text_independent=False,
    display_name="ResCLIP",
    repo="yvhangyang/ResCLIP", commit="0e085f7",
    note=("Final PAMR is off; SFR runs its own hard-coded PAMR(10, dilations (8, 16)) on a temporary map "
        "(sfr_pamr_steps / sfr_pamr_dilations, informational)."),
    aliases=("res_clip",),
    protocol=RESCLIP_PROTOCOL,
    constants={
        # yvhangyang/ResCLIP clip/model.py VisionTransformer.forward: blocks 5..8 hard-coded [code]
        "ViT-B/16": dict(rcs_layers=(5, 6, 7, 8)),
        # ResCLIP's code keeps blocks 5..8 for every backbone; its reported ViT-L/14 numbers were
        # produced that way [code]. Not rescaled on purpose.
        "ViT-L/14": dict(rcs_layers=(5, 6, 7, 8)),
    },
    # The official per-dataset settings, each with its source (where every number comes from:
    # tfovss_core/spec/presets/README.md).
    datasets={
        "voc21": {
            "short_side": 336, "max_long_side": 2048, "crop": 0, "stride": 112, "logit_scale": 40, "prob_thd": 0.1,
            "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16], "class_file": "voc21.txt",
            "source": "yvhangyang/ResCLIP@0e085f7: configs/cfg_voc21.py", "temp_thd": 0.5,
            "rcs_weights": [2.0, 0.3], "sfr_weights": [2.2, 0.7], "delete_same_entity": True, "use_rcs": True,
            "use_sfr": True, "sfr_pamr_steps": 10, "sfr_pamr_dilations": [8, 16],
        },
        "voc20": {
            "short_side": 336, "max_long_side": 2048, "crop": 0, "stride": 112, "logit_scale": 40, "prob_thd": 0.0,
            "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16], "class_file": "voc20.txt",
            "source": "yvhangyang/ResCLIP@0e085f7: configs/cfg_voc20.py", "temp_thd": 0.1,
            "rcs_weights": [2.0, 0.6], "sfr_weights": [2.1, 0.6], "delete_same_entity": True, "use_rcs": True,
            "use_sfr": True, "sfr_pamr_steps": 10, "sfr_pamr_dilations": [8, 16],
        },
        "context60": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.1, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "context60.txt", "source": "yvhangyang/ResCLIP@0e085f7: configs/cfg_context60.py",
            "temp_thd": 0.3, "rcs_weights": [2.0, 0.3], "sfr_weights": [1.8, 0.7], "delete_same_entity": True,
            "use_rcs": True, "use_sfr": True, "sfr_pamr_steps": 10, "sfr_pamr_dilations": [8, 16],
        },
        "context59": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "context59.txt", "source": "yvhangyang/ResCLIP@0e085f7: configs/cfg_context59.py",
            "temp_thd": 0.25, "rcs_weights": [2.0, 0.4], "sfr_weights": [1.8, 0.7], "delete_same_entity": True,
            "use_rcs": True, "use_sfr": True, "sfr_pamr_steps": 10, "sfr_pamr_dilations": [8, 16],
        },
        "coco_object": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.1, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "coco_object.txt", "source": "yvhangyang/ResCLIP@0e085f7: configs/cfg_coco_object.py",
            "temp_thd": 0.11, "rcs_weights": [2.0, 0.4], "sfr_weights": [1.8, 0.7], "delete_same_entity": True,
            "use_rcs": True, "use_sfr": True, "sfr_pamr_steps": 10, "sfr_pamr_dilations": [8, 16],
        },
        "coco_stuff": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "coco_stuff.txt", "source": "yvhangyang/ResCLIP@0e085f7: configs/cfg_coco_stuff164k.py",
            "temp_thd": 0.11, "rcs_weights": [2.0, 0.4], "sfr_weights": [1.8, 0.7], "delete_same_entity": True,
            "use_rcs": True, "use_sfr": True, "sfr_pamr_steps": 10, "sfr_pamr_dilations": [8, 16],
        },
        "cityscapes": {
            "short_side": 560, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "cityscapes.txt", "source": "yvhangyang/ResCLIP@0e085f7: configs/cfg_city_scapes.py",
            "temp_thd": 0.1, "rcs_weights": [2.0, 0.2], "sfr_weights": [2.1, 0.6], "delete_same_entity": True,
            "use_rcs": True, "use_sfr": True, "sfr_pamr_steps": 10, "sfr_pamr_dilations": [8, 16],
        },
        "ade20k": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "ade20k.txt", "source": "yvhangyang/ResCLIP@0e085f7: configs/cfg_ade20k.py",
            "temp_thd": 0.25, "rcs_weights": [2.0, 0.3], "sfr_weights": [2.1, 0.7], "delete_same_entity": True,
            "use_rcs": True, "use_sfr": True, "sfr_pamr_steps": 10, "sfr_pamr_dilations": [8, 16],
        },
        "ade847": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "ade847.txt",
            "source": "GUESS: no official config; copied from yvhangyang/ResCLIP@0e085f7: configs/cfg_ade20k.py (ADE20K-150)",
            "temp_thd": 0.25, "rcs_weights": [2.0, 0.3], "sfr_weights": [2.1, 0.7], "delete_same_entity": True,
            "use_rcs": True, "use_sfr": True, "sfr_pamr_steps": 10, "sfr_pamr_dilations": [8, 16], "guess": True,
        },
        "context459": {
            "short_side": 336, "max_long_side": 2048, "crop": 224, "stride": 112, "logit_scale": 40,
            "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
            "class_file": "context459.txt",
            "source": "GUESS: no official config; copied from yvhangyang/ResCLIP@0e085f7: configs/cfg_ade20k.py (ADE20K-150)",
            "temp_thd": 0.25, "rcs_weights": [2.0, 0.3], "sfr_weights": [2.1, 0.7], "delete_same_entity": True,
            "use_rcs": True, "use_sfr": True, "sfr_pamr_steps": 10, "sfr_pamr_dilations": [8, 16], "guess": True,
        },
    },
)
register_method(CARD)
