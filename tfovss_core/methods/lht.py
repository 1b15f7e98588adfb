"""LHT-CLIP (Zhou, Jiang, Zhu, arXiv 2510.23894, TMLR 2026) as add-ons for a host method.

Paper-based re-implementation: no code has been published. Three components act on the blocks
before the final one and leave the host's last block in charge:

* SSR (spatial-semantic reweighting), in ``ssr_layers``:
  ``h = (1 + a) x + (1 - a) MSA(LN1(x))``, ``x' = (1 + a) h + (1 - a) FFN(LN2(h))``.
* ATR (abnormal token replacement), on the penultimate output: patch tokens whose Hoyer sparsity
  exceeds ``atr_tau`` are replaced by a weighted mean of their normal 3x3 neighbours.
* SHE (selective head enhancement): the mean per-head contribution ``A_h V_h W_o[h]`` (ATR
  applied) of selected heads gives a cosine affinity; thresholded at ``she_beta`` and normalised
  per row, it refines the penultimate patch tokens (or the final features).

Registry names: ``<host>+lht`` (all three) or any subset, e.g. ``clearclip+atr+ssr``; hosts are
``sclip``, ``clearclip``, ``resclip``, ``naclip``. Plain ``lht`` is ``sclip+lht``. The host's last
block runs without residual and FFN (the paper's baseline), and ResCLIP hosts run without SFR, as
in the paper's comparison; both are options.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from tfovss_core.methods import AddonCard, MethodCard, MethodInfo, option, register_method
from tfovss_core.clip.backbone import Trunk, TrunkRequest
from tfovss_core.errors import ConfigError
from tfovss_core.ops.outliers import replace_with_neighbour_mean
from tfovss_core.ops.similarity import cosine_similarity, row_normalised
from tfovss_core.methods.sclip import SCLIP, SCLIP_PROTOCOL

COMPONENTS = ("ssr", "atr", "she")
HOSTS = ("sclip", "clearclip", "resclip", "naclip")
# Host options whose default differs under LHT-CLIP: the final block without residual / FFN (the
# paper's baseline) and ResCLIP without SFR (the paper compares against ResCLIP w/o SFR).
_HOST_DEFAULTS = {"sclip": {"residual_ffn": False}, "resclip": {"use_sfr": False}}


# ----------------------------------------------------------------------------------- primitives
def hoyer_sparsity(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``(sqrt(D) - |x|_1 / |x|_2) / (sqrt(D) - 1)`` along ``dim``: 0 for a flat, 1 for a one-hot
    vector (Hoyer 2004). A zero vector gets 0."""
    d = x.shape[dim]
    if d < 2:
        raise ValueError("Hoyer sparsity needs at least 2 components")
    l1 = x.abs().sum(dim)
    l2 = x.norm(dim=dim)
    ratio = torch.where(l2 > 0, l1 / l2.clamp_min(torch.finfo(x.dtype).tiny), torch.full_like(l1, math.sqrt(d)))
    return (math.sqrt(d) - ratio) / (math.sqrt(d) - 1)


def neighbour_fill(tokens: torch.Tensor, abnormal: torch.Tensor, grid, sigma: float | None = 1.0) -> torch.Tensor:
    """Replaces flagged patch tokens ``(B, N, C)`` by a weighted mean of their normal 3x3 neighbours.

    Weight of the neighbour at offset ``(dy, dx)``: ``exp(-(dy^2 + dx^2) / (2 sigma^2))`` (the
    draft's Gaussian, normalised by the weights present); ``sigma=None`` is the plain mean, i.e.
    SC-CLIP's :func:`replace_with_neighbour_mean`. Out-of-grid and flagged neighbours do not
    count; a token without a normal neighbour stays unchanged.
    """
    if sigma is None:
        return replace_with_neighbour_mean(tokens, abnormal, grid)
    b, n, c = tokens.shape
    gh, gw = grid
    offsets = torch.arange(-1, 2, dtype=tokens.dtype, device=tokens.device)
    weights = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma * sigma))
    weights[1, 1] = 0
    normal = (~abnormal).to(tokens.dtype).view(b, 1, gh, gw)
    fmap = tokens.transpose(1, 2).reshape(b, c, gh, gw) * normal
    total = torch.zeros_like(fmap)
    mass = torch.zeros_like(normal)
    padded, padded_normal = F.pad(fmap, (1, 1, 1, 1)), F.pad(normal, (1, 1, 1, 1))
    for dy in range(3):
        for dx in range(3):
            if weights[dy, dx] > 0:
                total += weights[dy, dx] * padded[..., dy:dy + gh, dx:dx + gw]
                mass += weights[dy, dx] * padded_normal[..., dy:dy + gh, dx:dx + gw]
    update = abnormal.view(b, 1, gh, gw) & (mass > 0)
    filled = torch.where(update, total / mass.clamp_min(1e-12), tokens.transpose(1, 2).reshape(b, c, gh, gw))
    return filled.reshape(b, c, n).transpose(1, 2)


def ssr_block(backbone, index: int, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Block ``index`` with its residual path up-weighted by ``1 + alpha`` and its attention and
    FFN branches down-weighted by ``1 - alpha`` (``alpha = 0`` is the stock block)."""
    block = backbone.block(index)
    q, k, v = backbone.qkv(block, block.ln_1(x))
    msa = block.ls_1(backbone.attend(block, backbone.similarity_attention(q, k), v))
    h = (1 + alpha) * x + (1 - alpha) * msa
    return (1 + alpha) * h + (1 - alpha) * backbone.mlp(block, h)


def head_contributions(backbone, index: int, stream: torch.Tensor, heads) -> torch.Tensor:
    """Per-head outputs ``A_h V_h W_o[:, h]`` of block ``index`` (no bias), ``(B, len(heads), L, D)``.

    ``stream`` is the block's input; ``A_h`` its stock q-k attention. The sum over all heads plus
    ``out_proj``'s bias is the attention branch of the block (Gandelsman-style decomposition).
    """
    block = backbone.block(index)
    q, k, v = backbone.qkv(block, block.ln_1(stream))
    heads = list(heads)
    o = backbone.similarity_attention(q[:, heads], k[:, heads]) @ v[:, heads]       # (B, h, L, Dh)
    w = block.attn.out_proj.weight.view(backbone.width, backbone.heads, backbone.head_dim)
    return torch.einsum("bhld,ehd->bhle", o, w[:, heads])


def abnormal_tokens(patches: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """ATR's detector: Hoyer sparsity of each raw patch token ``(B, N, C)`` above ``tau``."""
    return hoyer_sparsity(patches) > tau


# ----------------------------------------------------------------------------------- the add-on
@dataclass
class LHTOptions:
    use_ssr: bool = option(True, "Spatial-semantic reweighting in ssr_layers.")
    use_atr: bool = option(True, "Abnormal token replacement on the penultimate output.")
    use_she: bool = option(True, "Selective head enhancement of the penultimate patch tokens.")
    ssr_layers: tuple[int, ...] | None = option(
        None, "Blocks reweighted by SSR (B/16: 9, 10 = layers 10-11 [paper draft]; L/14: 19-22 "
              "= 'layers 20-23' [draft], the final version may use more).", source="backbone")
    ssr_alpha: float | None = option(None, "SSR's alpha (B/16: 0.1 [draft, Table 3]; L/14: GUESS 0.1).",
                                     source="backbone")
    atr_tau: float = option(0.5, "Hoyer-sparsity threshold of abnormal tokens [draft; stable 0.4-0.8].")
    atr_sigma: float | None = option(
        1.0, "Std (patches) of the neighbour weights; None = plain mean. The draft says 'unnormalised "
             "2-D Gaussian', the final version 'weighted aggregation of its 8 nearest normal "
             "neighbours': sigma and the normalisation are GUESSES.", source="ours")
    atr_input: str = option("raw", "Where Hoyer sparsity is measured: the raw residual stream (our reading) "
                                   "or after the final block's ln_1.", source="ours", choices=("raw", "ln"))
    she_heads: tuple[tuple[int, int], ...] | None = option(
        None, "(block, head) pairs, 0-based. None: the calibration profile's top-k heads if "
              "`profile` is given, else every head of she_layer_idx.", source="ours")
    she_layer_idx: int | None = option(
        None, "Fallback SHE layer when no head list is given (B/16: block 7 = layer 8, the paper's "
              "best single layer, Table 4; the published top-10 list does not exist).", source="backbone")
    she_beta: float = option(0.4, "Affinity threshold of SHE (not found in the paper; SC-CLIP's "
                                  "value, GUESS).", source="ours")
    she_norm: str = option("row", "Normalisation of the thresholded affinity: rows sum to 1 (as SC-CLIP's "
                                  "aggregation; our reading) or columns sum to 1 (the paper's literal "
                                  "'column-wise').", source="ours", choices=("row", "column"))
    she_position: str = option("before", "Refine the penultimate tokens ('before' the final block, as the "
                                         "equation reads) or the final features ('after', as the project "
                                         "page words it).", source="ours", choices=("before", "after"))
    profile: str | None = option(None, "Name or path of a calibration profile (tfovss_core.analysis."
                                       "calibrate) whose LHT head list is used.", source="ours")


_LHT_BACKBONE_FIELDS = tuple(f.name for f in dataclasses.fields(LHTOptions) if f.metadata.get("source") == "backbone")


def _copy_field(f: dataclasses.Field, default=dataclasses.MISSING) -> dataclasses.Field:
    if default is dataclasses.MISSING:
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            return dataclasses.field(default_factory=f.default_factory, metadata=f.metadata)
        default = f.default
    return dataclasses.field(default=default, metadata=f.metadata)


def _compose_options(host_cls, enabled: frozenset[str]):
    host_hints = typing.get_type_hints(host_cls.Options)
    lht_hints = typing.get_type_hints(LHTOptions)
    overrides = dict(_HOST_DEFAULTS.get(host_cls.name, {}))
    overrides.update({f"use_{c}": c in enabled for c in COMPONENTS})
    spec = []
    for f in dataclasses.fields(host_cls.Options):
        spec.append((f.name, host_hints[f.name], _copy_field(f, overrides.get(f.name, dataclasses.MISSING))))
    host_names = {f.name for f in dataclasses.fields(host_cls.Options)}
    for f in dataclasses.fields(LHTOptions):
        if f.name in host_names:
            raise TypeError(f"option {f.name!r} of {host_cls.name} clashes with LHT-CLIP's")
        spec.append((f.name, lht_hints[f.name], _copy_field(f, overrides.get(f.name, dataclasses.MISSING))))
    return dataclasses.make_dataclass(f"{host_cls.__name__}LHTOptions", spec)


class _LHTMixin:
    """SSR / ATR / SHE around any host whose ``features`` reads the penultimate stream."""

    host_cls: typing.ClassVar[type]
    components: typing.ClassVar[tuple[str, ...]]

    @classmethod
    def constants_card(cls):
        return cls.host_cls.constants_card()

    def resolve_backbone_options(self) -> None:
        bb, o = self.backbone, self.options
        constants = CARD.constants_for(bb.profile)
        updates = {}
        for name in _LHT_BACKBONE_FIELDS:
            if getattr(o, name) is None:
                if name not in constants:
                    raise ConfigError(f"{self.name}: no value of {name!r} for backbone {bb.profile.name}; pass it")
                updates[name] = constants[name]
        heads = o.she_heads
        if heads is None and o.profile:
            from tfovss_core.clip.calibration import load_profile
            heads = load_profile(o.profile, backbone=bb).get("lht", {}).get("she_heads")
            if not heads:
                raise ConfigError(f"{self.name}: profile {o.profile!r} has no LHT head list")
        if heads is None:   # the paper's best single layer: all its heads
            heads = [(updates.get("she_layer_idx", o.she_layer_idx), h) for h in range(bb.heads)]
        updates["she_heads"] = tuple((int(a), int(b)) for a, b in heads)
        self.options = dataclasses.replace(o, **updates)
        super().resolve_backbone_options()

    def validate(self) -> None:
        super().validate()
        o, bb = self.options, self.backbone
        for i in o.ssr_layers:
            self.check_block_index("ssr_layers", i)
        bad = [p for p in o.she_heads if not (0 <= p[0] < bb.depth - 1 and 0 <= p[1] < bb.heads)]
        if bad or not o.she_heads:
            raise ConfigError(f"{self.name}: SHE heads {bad or '()'} must be (block < {bb.depth - 1}, "
                              f"head < {bb.heads}) pairs")

    # -- trunk ------------------------------------------------------------------------------------
    def _first_modified(self) -> int:
        o, depth = self.options, self.backbone.depth
        return min(o.ssr_layers) if o.use_ssr and o.ssr_layers else depth - 1

    def trunk_request(self) -> TrunkRequest:
        host = super().trunk_request()
        start = min(self._first_modified(), host.depth)
        needed = set(host.keep)
        if self.options.use_she:
            needed |= {layer - 1 for layer, _ in self.options.she_heads if layer > 0}
        return TrunkRequest(depth=start, keep=frozenset(i for i in needed if i < start))

    def lht_trunk(self, trunk: Trunk) -> Trunk:
        """The host's trunk with SSR in its blocks (every later output kept)."""
        bb, o = self.backbone, self.options
        end = bb.depth - 1
        outputs = dict(trunk.outputs)
        x = trunk.x
        ssr = set(o.ssr_layers) if o.use_ssr else set()
        for i in range(trunk.depth, end):
            x = ssr_block(bb, i, x, o.ssr_alpha) if i in ssr else bb.forward_block(i, x)
            outputs[i] = x
        return Trunk(embedded=trunk.embedded, depth=end, outputs=outputs, grid=trunk.grid)

    def she_affinity(self, trunk: Trunk, abnormal: torch.Tensor | None) -> torch.Tensor:
        """Row-normalised thresholded cosine affinity ``(B, N, N)`` of the selected heads."""
        bb, o = self.backbone, self.options
        by_layer: dict[int, list[int]] = {}
        for layer, head in o.she_heads:
            by_layer.setdefault(layer, []).append(head)
        total = None
        for layer, heads in sorted(by_layer.items()):
            contrib = head_contributions(bb, layer, trunk.stream(layer), heads)[:, :, 1:]   # patches
            if abnormal is not None:
                b, h, n, c = contrib.shape
                flags = abnormal.repeat_interleave(h, dim=0)
                contrib = neighbour_fill(contrib.reshape(b * h, n, c), flags, trunk.grid,
                                         o.atr_sigma).view(b, h, n, c)
            s = contrib.sum(dim=1)
            total = s if total is None else total + s
        similarity = cosine_similarity(total / len(o.she_heads))
        kept = torch.where(similarity < o.she_beta, 0.0, similarity)
        if o.she_norm == "column":
            return row_normalised(kept.transpose(-1, -2)).transpose(-1, -2)
        return row_normalised(kept)

    def features(self, trunk: Trunk, context=None) -> torch.Tensor:
        bb, o = self.backbone, self.options
        full = self.lht_trunk(trunk)
        x = full.x
        patches = x[:, 1:]
        abnormal = self._abnormal(x) if o.use_atr else None
        if abnormal is not None:
            patches = neighbour_fill(patches, abnormal, full.grid, o.atr_sigma)
        affinity = self.she_affinity(full, abnormal) if o.use_she else None
        if affinity is not None and o.she_position == "before":
            patches = affinity @ patches
        outputs = dict(full.outputs)
        outputs[bb.depth - 2] = torch.cat([x[:, :1], patches], dim=1)
        modified = Trunk(embedded=full.embedded, depth=full.depth, outputs=outputs, grid=full.grid)
        feats = super().features(modified, context) if self.needs_context else super().features(modified)
        if affinity is not None and o.she_position == "after":
            feats = affinity @ feats
        return feats

    def _abnormal(self, x: torch.Tensor) -> torch.Tensor:
        if self.options.atr_input == "ln":
            x = self.backbone.block(self.backbone.depth - 1).ln_1(x)
        return abnormal_tokens(x[:, 1:], self.options.atr_tau)

    def detect_abnormal(self, trunk: Trunk) -> torch.Tensor:
        """ATR's flags ``(B, N)`` on the penultimate output of this method's forward (SSR applied)."""
        return self._abnormal(self.lht_trunk(trunk).x)


def _parse_components(components) -> tuple[str, ...]:
    parts = []
    for c in components:
        c = c.strip().lower()
        if c == "lht":
            parts.extend(COMPONENTS)
        elif c in COMPONENTS:
            parts.append(c)
        else:
            raise ConfigError(f"unknown LHT-CLIP component {c!r}; use lht, {', '.join(COMPONENTS)}")
    return tuple(dict.fromkeys(parts))


@lru_cache(maxsize=None)
def _lht_class(host_cls, components: tuple[str, ...], name: str):
    enabled = frozenset(_parse_components(components))
    if host_cls.name not in HOSTS:
        raise ConfigError(f"LHT-CLIP add-ons work on {', '.join(HOSTS)}, not {host_cls.name!r}")
    label = "+".join(c.upper() for c in COMPONENTS if c in enabled)
    info = MethodInfo(
        title=f"{host_cls.info.title} + LHT-CLIP ({label})",
        paper="Zhou, Jiang, Zhu. Improving Visual Discriminability of CLIP for Training-Free "
              "Open-Vocabulary Semantic Segmentation. arXiv 2510.23894 (TMLR 2026)",
        official_code=None,
        summary=f"LHT-CLIP's {label} on the {host_cls.info.title} last block (residual and FFN "
                "off). Paper-based re-implementation: no public code.",
        paper_based=True, reported="docs/methods/lht.md")
    attrs = dict(name=name, info=info, host_cls=host_cls, components=tuple(sorted(enabled)),
                 Options=_compose_options(host_cls, enabled),
                 default_settings={**host_cls.default_settings, "pamr_steps": 0},
                 __module__=__name__, __doc__=f"{host_cls.name} with LHT-CLIP's {label} (paper-based).")
    return type(f"{host_cls.__name__}LHT", (_LHTMixin, host_cls), attrs)


def compose_lht(host_cls, components) -> type:
    """The add-on's composer: ``host+lht`` or ``host+<component>[+<component>...]``."""
    name = f"{host_cls.name}+{'+'.join(c.strip().lower() for c in components)}"
    return _lht_class(host_cls, tuple(c.strip().lower() for c in components), name)


def host_settings_under_lht(entry: dict) -> dict:
    """A host's dataset settings under LHT-CLIP: PAMR off, as the paper states; ResCLIP's SFR off
    (SFR depends on PAMR; LHT-CLIP's ResCLIP rows are without SFR)."""
    entry = dict(entry)
    entry["pamr_steps"] = 0
    entry["official"] = False
    entry["paper_based"] = True
    entry["note"] = ("LHT-CLIP add-on (no public code): host settings with PAMR off, as the paper "
                     "states. With a ResCLIP host the paper compares against ResCLIP without SFR.")
    entry["source"] = f"{entry['source']}; LHT-CLIP add-on: PAMR off [paper]"
    if "use_sfr" in entry:
        entry["use_sfr"] = False
        entry["source"] += ", ResCLIP's SFR off [paper]"
    return entry


LHT = _lht_class(SCLIP, ("lht",), "lht")

CARD = MethodCard(
    method=LHT,
    text_independent=True,
    display_name="LHT-CLIP",
    note=("LHT-CLIP (no public code) is an add-on: 'host+lht' (e.g. 'clearclip+lht', 'resclip+lht', "
          "'sclip+atr+ssr') uses the host's settings with PAMR off. Plain 'lht' uses the SCLIP host (the "
          "paper's ablation baseline is SCLIP attention without residual/FFN). GUESS beyond 'follows the "
          "SCLIP / ClearCLIP / NACLIP protocol with MMSegmentation, no PAMR' [paper]."),
    aliases=("lht_clip", "lhtclip"),
    protocol={**SCLIP_PROTOCOL, "pamr_steps": 0},
    constants={
        # LHT-CLIP (no code). SSR in layers 10-11 (1-based), alpha 0.1 [paper draft, Table 3].
        # SHE: the top-10 head list is unpublished; without a calibration profile all heads of
        # layer 8 (1-based) are used, the paper's best single layer (Table 4: 35.8) [paper draft].
        "ViT-B/16": dict(ssr_layers=(9, 10), ssr_alpha=0.1, she_layer_idx=7),
        # SSR "layers 20-23" (1-based) [paper draft]; alpha for L/14 not found: GUESS 0.1; SHE
        # fallback layer depth-scaled from B/16 (layer 16, 1-based): GUESS.
        "ViT-L/14": dict(ssr_layers=(19, 20, 21, 22), ssr_alpha=0.1, she_layer_idx=15),
    },
    # No official code: plain 'lht' takes SCLIP's settings with PAMR off.
    inherit="sclip",
    overrides={"pamr_steps": 0},
    addon=AddonCard(name="lht", title="LHT-CLIP", components=COMPONENTS, hosts=HOSTS,
                    compose=compose_lht, adjust_settings=host_settings_under_lht),
)
register_method(CARD)
