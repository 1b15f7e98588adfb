"""GCLIP (Wang, Yan, Kang, arXiv 2502.06818): global knowledge of CLIP for training-free OVSS.

Paper-based re-implementation: no code has been published, and only the abstract, the TL;DR and
the figure captions are available. Two modules on the last block, by default a ClearCLIP-style one
(q-q attention, no residual, no FFN: our guess, the options ``last_residual`` / ``last_ffn``):

* AMF (attention map fusion): "we fuse the attention from the global-token emerging blocks with
  the Query-Query attention". How they are fused is not given: by default an equal mean of the
  q-q map and each fused block's map (ours; ``amf_weight`` sets another weight).
* CS (channel suppression): in the FFN's second linear layer (``mlp.c_proj``, weight ``(D, 4D)``)
  the output channel with an abnormal weight norm is re-normalised ("a re-nomalizing operation
  phi"); our reading of phi rescales its row to the mean (``cs_target``) norm of the other rows.
  A reversible weight edit that is active only while this method runs, for the whole trunk, so
  it also changes the attention maps AMF fuses (our reading).

Both are detected from the model itself: the emerging blocks from attention-mass statistics of
the window being segmented (ours), the abnormal channels from weight-norm statistics: a max /
median ratio (ours) or the entropy of the row norms (``cs_detector="entropy"``, after the caption
"the entropy of weight norms decreases abnormally from block 7"). The per-backbone fallbacks of
the card come from an unofficial re-implementation and coincide with the text's block numbers;
whether those count from 0 or 1 is not settled (``block_numbering``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

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


def norm_entropy_deficit(weight: torch.Tensor) -> float:
    """``log(D) - H(p)`` for ``p`` the row L2 norms of ``weight`` ``(D, ...)`` divided by their sum:
    0 when all rows have the same norm, larger the more one row dominates (the entropy "decreases")."""
    norms = weight.detach().double().norm(dim=1)
    p = norms / norms.sum().clamp_min(1e-300)
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum()
    return float(torch.log(torch.tensor(float(norms.numel()), dtype=torch.float64)) - entropy)


def entropy_abnormal_channels(backbone, ratio_thd: float = 3.0) -> dict[int, int]:
    """The entropy rule: ``{block: largest-norm channel}`` of every block whose ``mlp.c_proj`` row-norm
    entropy deficit (:func:`norm_entropy_deficit`) is at least ``ratio_thd`` times the median
    deficit over all blocks. Our rule after GCLIP's caption "the entropy of weight norms decreases
    abnormally from block 7"; the text gives no threshold."""
    weights = [backbone.block(i).mlp.c_proj.weight for i in range(backbone.depth)]
    deficits = torch.tensor([norm_entropy_deficit(w) for w in weights], dtype=torch.float64)
    median = float(deficits.median())
    return {i: channel_norm_outliers(w, 0.0)[0] for i, w in enumerate(weights)
            if float(deficits[i]) >= ratio_thd * median and float(deficits[i]) > 0}


def suppress_channel(weight: torch.Tensor, channel: int, target: str = "mean") -> torch.Tensor:
    """``weight`` with row ``channel`` rescaled to the mean (or median) L2 norm of the other rows."""
    norms = weight.norm(dim=1)
    rest = torch.cat([norms[:channel], norms[channel + 1:]])
    if target == "mean":
        others = rest.mean()
    elif target == "median":
        others = rest.median()
    else:
        raise ValueError(f"unknown CS target {target!r}; use mean or median")
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

    # Provenance: "authors" = the abstract / TL;DR / captions (the only text; its words in
    # ``passage``); "ours" = our reading; "backbone" = the card's per-backbone fallbacks.
    @dataclass
    class Options:
        use_amf: bool = option(True, "Attention map fusion.",
                               passage="we fuse the attention from the global-token emerging blocks with the "
                                       "Query-Query attention")
        use_cs: bool = option(True, "Channel suppression.", passage="we design a novel channel suppression strategy",
                              reading="CS is a weight edit active for the whole forward pass, so it also changes "
                                      "the blocks whose attention AMF fuses (ours; the text does not say).")
        last_residual: bool = option(
            False, "Keep the last block's residual connection.", source="ours",
            reading="The text says only that the last-block attention and Value embeddings are reshaped; "
                    "the ClearCLIP-style last block without residual and FFN is our guess (GCLIP is compared "
                    "with ClearCLIP).")
        last_ffn: bool = option(False, "Keep the last block's FFN.", source="ours",
                                reading="See last_residual: without FFN is our guess.")
        global_blocks: tuple[int, ...] | None = option(
            None, "Fallback / fixed global-token emerging blocks, 0-based (B/16: 6, 7 from an unofficial "
                  "re-implementation; L/14 our guess). See block_numbering.", source="backbone")
        block_numbering: str = option(
            "0-based", "How the card's fallback blocks (global_blocks, cs_blocks; they coincide with the "
                       "text's 'block 6' / 'block 7') are read: '0-based' as given, '1-based' = the text's "
                       "numbers counted from 1, i.e. one block earlier. Explicit values are always 0-based.",
            source="ours", choices=("0-based", "1-based"),
            reading="The captions quote 'block 5', 'block 6', 'block 7' without saying whether they count "
                    "from 0 or 1; read as 0-based the fallbacks may be one block late.")
        detect_global_blocks: bool = option(
            True, "Detect the emerging blocks on each window from the attention mass of its top "
                  "tokens (falls back to global_blocks when no block qualifies).", source="ours")
        global_mass_thd: float = option(0.5, "Top-token attention share that marks a global-token block.",
                                        source="ours")
        global_top_tokens: int = option(5, "How many tokens count as global tokens.", source="ours")
        num_global_blocks: int = option(2, "Fused blocks from the first detected one on (the text fuses "
                                           "'L_g, L_g+1, ...'; 2 as in the re-implementation).", source="ours")
        amf_per_head: bool = option(False, "Fuse head by head instead of the head-averaged maps of the "
                                           "global blocks (the re-implementation averages).", source="ours")
        amf_weight: float | None = option(
            None, "Total weight of the fused global blocks' attention against the last block's q-q "
                  "attention: A = (1 - w) A_qq + w mean_b A_b. None = an equal mean of the 1 + |blocks| maps.",
            source="ours", reading="The text gives no fusion weights; the equal mean is ours.")
        cs_blocks: tuple[int, ...] | None = option(
            None, "Fallback CS blocks when no abnormal channel is detected, 0-based (B/16: 7-11 from the "
                  "unofficial re-implementation). See block_numbering.", source="backbone")
        detect_cs: bool = option(True, "Detect the abnormal channel per block from the weight norms.",
                                 source="ours")
        cs_detector: str = option(
            "ratio", "How a block's abnormal channel is detected: 'ratio' = its largest row norm is at least "
                     "cs_ratio_thd x the median row norm; 'entropy' = the entropy of its row norms falls "
                     "short of the maximum by at least cs_ratio_thd x the median shortfall over blocks.",
            source="ours", choices=("ratio", "entropy"),
            reading="The text's hint is entropy: 'the entropy of weight norms decreases abnormally from block "
                    "7' and a norm 'unexpectedly larger than the weight norm of other channels'; the "
                    "max/median ratio is ours, the entropy rule's threshold too.")
        cs_ratio_thd: float = option(3.0, "Threshold of cs_detector (norm ratio, or entropy-shortfall ratio).",
                                     source="ours")
        cs_target: str = option(
            "mean", "The norm the abnormal row is rescaled to: the mean or the median norm of the other rows.",
            source="ours", choices=("mean", "median"),
            reading="The re-normalising operation phi is defined in an equation we do not have; rescaling "
                    "the row to the other rows' mean norm is our reading.")

    def __init__(self, backbone, options=None):
        super().__init__(backbone, options)
        o = self.options
        self.global_fallback = tuple(dict.fromkeys(int(b) for b in o.global_blocks))
        detect = entropy_abnormal_channels if o.cs_detector == "entropy" else abnormal_ffn_channels
        detected = detect(backbone, o.cs_ratio_thd) if o.detect_cs else {}
        if not detected:   # the fallback: argmax channel of each default block
            detected = {b: channel_norm_outliers(backbone.block(b).mlp.c_proj.weight, 0.0)[0] for b in o.cs_blocks}
        self.cs_channels: dict[int, int] = dict(sorted(detected.items())) if o.use_cs else {}

    def resolve_backbone_options(self) -> None:
        """The card's fallbacks, shifted one block earlier when read as the text's 1-based numbers."""
        from_card = [name for name in ("global_blocks", "cs_blocks") if getattr(self.options, name) is None]
        super().resolve_backbone_options()
        if self.options.block_numbering == "1-based" and from_card:
            self.options = replace(self.options, **{name: tuple(int(b) - 1 for b in getattr(self.options, name))
                                                    for name in from_card})

    def validate(self) -> None:
        o = self.options
        if o.amf_weight is not None and not 0 <= o.amf_weight <= 1:
            raise ConfigError(f"gclip: amf_weight must be in [0, 1] or None, got {o.amf_weight}")
        for b in o.global_blocks:
            self.check_block_index("global_blocks", b)
        for b in o.cs_blocks:
            self.check_block_index("cs_blocks", b, limit=self.backbone.depth)
        if o.num_global_blocks < 1 or o.global_top_tokens < 1:
            raise ConfigError("gclip: num_global_blocks and global_top_tokens must be >= 1")

    def weight_edits(self) -> list:
        bb = self.backbone
        target = self.options.cs_target
        return [(bb.block(b).mlp.c_proj.weight, lambda w, c=c: suppress_channel(w, c, target))
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
        bb, o = self.backbone, self.options
        fused = self.global_attention(trunk)[:2] if o.use_amf else None

        def attention(q, k, v):
            qq = bb.similarity_attention(q, q)
            if fused is None:
                return qq
            total, counts = fused
            if o.amf_weight is None:   # equal mean of the q-q map and each fused block's map (ours)
                return (qq + total) / (1 + counts).view(-1, 1, 1, 1)
            return (1 - o.amf_weight) * qq + o.amf_weight * total / counts.view(-1, 1, 1, 1)

        y = bb.last_block(trunk.x, attention, residual=o.last_residual, ffn=o.last_ffn)
        return bb.head(y[:, 1:])


CARD = MethodCard(
    method=GCLIP,
    text_independent=True,
    display_name="GCLIP",
    note=("No official code. ClearCLIP-style protocol: OUR GUESS (the text compares with ClearCLIP and reports "
          "'five standard benchmarks' without naming them or a protocol). Class names: the SCLIP-family files."),
    aliases=("g_clip",),
    protocol=CLEARCLIP_PROTOCOL,
    constants={
        # GCLIP (no code). Global-token blocks {6, 7} and CS on blocks 7-11 (0-based) are the
        # defaults of an unofficial open_clip re-implementation [3rd]; used when detection fails. They
        # coincide with the captions' "block 6" / "block 7"; `block_numbering="1-based"` shifts them.
        "ViT-B/16": dict(global_blocks=(6, 7), cs_blocks=(7, 8, 9, 10, 11)),
        # Not published for L/14; the B/16 values depth-scaled: GUESS.
        "ViT-L/14": dict(global_blocks=(12, 13), cs_blocks=tuple(range(14, 24))),
    },
    # No official code: the settings of 'clearclip' (see the note).
    inherit="clearclip",
    class_family="sclip_family",
)
register_method(CARD)
