"""GCLIP (Wang, Yan, Kang, arXiv 2502.06818): global knowledge of CLIP for training-free OVSS.

Paper-based re-implementation: no code has been published. Two modules on a ClearCLIP-style last
block (q-q attention, no residual, no FFN):

* AMF (attention map fusion): the q-k attention of the "global-token emerging" blocks (where a few
  tokens start to receive most of the attention, vertical stripes in the maps) is averaged with
  the last block's q-q attention.
* CS (channel suppression): in the FFN's second linear layer (``mlp.c_proj``, weight ``(D, 4D)``)
  the output channel whose weight norm is abnormally large is rescaled to the mean norm of the
  other channels; a reversible weight edit that is active only while this method runs.

Both are detected from the model itself: the emerging blocks from attention-mass statistics of
the window being segmented, the abnormal channels from weight-norm statistics; the per-backbone
defaults of :mod:`tfovss_core.clip.profiles` are the fallback.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tfovss_core.methods import Method, MethodCard, MethodInfo, option, register_method
from tfovss_core.clip.backbone import Trunk, TrunkRequest
from tfovss_core.errors import ConfigError
from tfovss_core.methods.clip import CLEARCLIP_PROTOCOL


# ----------------------------------------------------------------------------------- detectors
def channel_norm_outliers(weight: torch.Tensor, ratio_thd: float = 3.0) -> tuple[int, float]:
    """The output channel (row) of ``weight`` with the largest L2 norm and its norm / median norm.

    Returns ``(channel, ratio)``; ``channel`` is -1 when the ratio is below ``ratio_thd``.
    """
    norms = weight.detach().float().norm(dim=1)
    channel = int(norms.argmax())
    ratio = float(norms[channel] / norms.median().clamp_min(1e-12))
    return (channel if ratio >= ratio_thd else -1), ratio


def abnormal_ffn_channels(backbone, ratio_thd: float = 3.0) -> dict[int, int]:
    """``{block: channel}`` of every block whose ``mlp.c_proj`` has an abnormal output channel."""
    found = {}
    for i in range(backbone.depth):
        channel, _ = channel_norm_outliers(backbone.block(i).mlp.c_proj.weight, ratio_thd)
        if channel >= 0:
            found[i] = channel
    return found


def suppress_channel(weight: torch.Tensor, channel: int) -> torch.Tensor:
    """``weight`` with row ``channel`` rescaled to the mean L2 norm of the other rows."""
    norms = weight.norm(dim=1)
    others = torch.cat([norms[:channel], norms[channel + 1:]]).mean()
    out = weight.clone()
    out[channel] = weight[channel] * (others / norms[channel])
    return out


def top_token_mass(probs: torch.Tensor, top: int = 5) -> torch.Tensor:
    """Share of the attention that goes to the ``top`` most attended patch tokens.

    ``probs`` ``(B, H, L, L)`` row-stochastic attention incl. CLS at index 0. The attention each
    patch key receives is averaged over heads and queries; the result ``(B,)`` is the sum of the
    ``top`` largest (CLS as a key is left out: global tokens are patch tokens).
    """
    received = probs.mean(dim=(1, 2))[:, 1:]
    return received.topk(min(top, received.shape[-1]), dim=-1).values.sum(dim=-1)


def emerging_blocks(mass: torch.Tensor, threshold: float, count: int, last: int) -> list[int] | None:
    """First block whose top-token mass reaches ``threshold`` and the ``count - 1`` after it
    (capped at ``last``); ``mass`` ``(num_blocks,)``. None when no block reaches it."""
    hits = (mass >= threshold).nonzero()
    if hits.numel() == 0:
        return None
    first = int(hits[0])
    return list(range(first, min(first + count, last + 1)))


class GCLIP(Method):
    name = "gclip"
    info = MethodInfo(
        title="GCLIP",
        paper="Wang, Yan, Kang. Rethinking the Global Knowledge of CLIP in Training-Free "
              "Open-Vocabulary Semantic Segmentation. arXiv 2502.06818",
        official_code=None,
        summary="ClearCLIP's last block (q-q attention, no residual / FFN) with AMF (the attention of "
                "the global-token emerging blocks averaged in) and CS (the abnormal FFN output channel "
                "rescaled, as a reversible weight edit). Paper-based re-implementation: no public code.",
        paper_based=True,
        reported="docs/methods/gclip.md",
    )

    @dataclass
    class Options:
        use_amf: bool = option(True, "Attention map fusion.")
        use_cs: bool = option(True, "Channel suppression.")
        global_blocks: tuple[int, ...] | None = option(
            None, "Fallback / fixed global-token emerging blocks (B/16: 6, 7 from an unofficial "
                  "re-implementation [3rd]; L/14 GUESS).", source="backbone")
        detect_global_blocks: bool = option(
            True, "Detect the emerging blocks on each window from the attention mass of its top "
                  "tokens (falls back to global_blocks when no block qualifies).", source="ours")
        global_mass_thd: float = option(0.5, "Top-token attention share that marks a global-token block.",
                                        source="ours")
        global_top_tokens: int = option(5, "How many tokens count as global tokens.", source="ours")
        num_global_blocks: int = option(2, "Fused blocks from the first detected one on (the paper fuses "
                                           "L_g, L_g+1, ...; 2 as in the re-implementation).", source="ours")
        amf_per_head: bool = option(False, "Fuse head by head instead of the head-averaged maps of the "
                                           "global blocks (the re-implementation averages).", source="ours")
        cs_blocks: tuple[int, ...] | None = option(
            None, "Fallback CS blocks when no abnormal channel is detected (B/16: 7-11 [3rd]).",
            source="backbone")
        detect_cs: bool = option(True, "Detect the abnormal channel per block from the weight norms.",
                                 source="ours")
        cs_ratio_thd: float = option(3.0, "Row norm / median row norm that marks the abnormal channel.",
                                     source="ours")

    def __init__(self, backbone, options=None):
        super().__init__(backbone, options)
        o = self.options
        self.global_fallback = tuple(dict.fromkeys(int(b) for b in o.global_blocks))
        detected = abnormal_ffn_channels(backbone, o.cs_ratio_thd) if o.detect_cs else {}
        if not detected:   # the fallback: argmax channel of each default block
            detected = {b: channel_norm_outliers(backbone.block(b).mlp.c_proj.weight, 0.0)[0] for b in o.cs_blocks}
        self.cs_channels: dict[int, int] = dict(sorted(detected.items())) if o.use_cs else {}

    def validate(self) -> None:
        o = self.options
        for b in o.global_blocks:
            self.check_block_index("global_blocks", b)
        for b in o.cs_blocks:
            self.check_block_index("cs_blocks", b, limit=self.backbone.depth)
        if o.num_global_blocks < 1 or o.global_top_tokens < 1:
            raise ConfigError("gclip: num_global_blocks and global_top_tokens must be >= 1")

    def weight_edits(self) -> list:
        bb = self.backbone
        return [(bb.block(b).mlp.c_proj.weight, lambda w, c=c: suppress_channel(w, c))
                for b, c in self.cs_channels.items()]

    def trunk_request(self) -> TrunkRequest:
        o, depth = self.options, self.backbone.depth
        if not o.use_amf:
            return TrunkRequest(depth=depth - 1)
        if o.detect_global_blocks:
            keep = set(range(depth - 1))
        else:
            keep = {b - 1 for b in self.global_fallback if b > 0}
        return TrunkRequest(depth=depth - 1, keep=frozenset(keep))

    def global_attention(self, trunk: Trunk) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
        """Per sample: the sum of its global blocks' q-k attention ``(B, H or 1, L, L)``, how many
        blocks were summed ``(B,)``, and which."""
        bb, o = self.backbone, self.options
        if not o.detect_global_blocks:
            chosen = [list(self.global_fallback)] * trunk.x.shape[0]
            total = sum(bb.attention_probs(b, trunk.stream(b)) for b in self.global_fallback)
        else:
            maps = [bb.attention_probs(b, trunk.stream(b)) for b in range(bb.depth - 1)]
            mass = torch.stack([top_token_mass(m, o.global_top_tokens) for m in maps], dim=1)   # (B, blocks)
            chosen = [emerging_blocks(mass[s], o.global_mass_thd, o.num_global_blocks, bb.depth - 2)
                      or list(self.global_fallback) for s in range(mass.shape[0])]
            total = torch.stack([sum(maps[b][s] for b in blocks) for s, blocks in enumerate(chosen)])
        if not o.amf_per_head:
            total = total.mean(dim=1, keepdim=True)
        counts = torch.tensor([len(c) for c in chosen], dtype=total.dtype, device=total.device)
        return total, counts, chosen

    def features(self, trunk: Trunk) -> torch.Tensor:
        bb = self.backbone
        fused = self.global_attention(trunk)[:2] if self.options.use_amf else None

        def attention(q, k, v):
            qq = bb.similarity_attention(q, q)
            if fused is None:
                return qq
            total, counts = fused
            return (qq + total) / (1 + counts).view(-1, 1, 1, 1)

        y = bb.last_block(trunk.x, attention, residual=False, ffn=False)
        return bb.head(y[:, 1:])


CARD = MethodCard(
    method=GCLIP,
    text_independent=True,
    display_name="GCLIP",
    note=("No official code. ClearCLIP-style protocol assumed (reported as an improvement over ClearCLIP, evaluated "
        "on five datasets without background). GUESS. Class names: the SCLIP-family files (identical to "
        "ClearCLIP's on the datasets without background)."),
    aliases=("g_clip",),
    protocol=CLEARCLIP_PROTOCOL,
    constants={
        # GCLIP (no code). Global-token blocks {6, 7} and CS on blocks 7-11 (0-based) are the
        # defaults of an unofficial open_clip re-implementation [3rd]; used when detection fails.
        "ViT-B/16": dict(global_blocks=(6, 7), cs_blocks=(7, 8, 9, 10, 11)),
        # Not published for L/14; the B/16 values depth-scaled: GUESS.
        "ViT-L/14": dict(global_blocks=(12, 13), cs_blocks=tuple(range(14, 24))),
    },
    # No official code: the settings of 'clearclip' (see the note).
    inherit="clearclip",
    class_family="sclip_family",
)
register_method(CARD)
