"""What a method is: typed options, a trunk request, and the dense features it computes.

A method implements only what differs from CLIP: usually the last block, sometimes a hook on
intermediate outputs or a reversible weight edit. The trunk loop, windows, text and
post-processing live elsewhere and are never rewritten inside a method.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from tfovss_core.clip.backbone import Trunk, TrunkRequest, VisionBackbone
from tfovss_core.errors import ConfigError


# Where an option's default comes from. "authors": the official code or the published paper
# (for a paper-based method the option carries the paper's words as ``passage``); "draft": an
# unpublished version of the paper (not a public source: the value cannot be checked against a
# published text); "ours": our reading or guess where the authors give nothing; "backbone": looked
# up per backbone in the method card's ``constants`` when left at ``None`` (the card says where
# each constant comes from).
PROVENANCE = ("authors", "draft", "ours", "backbone")


def option(default: Any, doc: str, *, source: str = "authors", choices: tuple | None = None,
           reading: str | None = None, passage: str | None = None) -> Any:
    """A documented method option.

    ``source`` says where the default comes from (one of :data:`PROVENANCE`). ``reading`` labels a
    default that is one reading of an ambiguous text (what the text says, what we do instead or
    in addition); ``passage`` quotes the text the default rests on. Both are shown by
    ``describe_method``, ``tfovss methods NAME`` and the App's forms.
    """
    if source not in PROVENANCE:
        raise ValueError(f"option source {source!r} is not one of {PROVENANCE}")
    meta = {"doc": doc, "source": source}
    if choices is not None:
        meta["choices"] = choices
    if reading is not None:
        meta["reading"] = reading
    if passage is not None:
        meta["passage"] = passage
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class MethodInfo:
    title: str
    paper: str
    official_code: str | None      # "owner/repo@commit" or None
    summary: str
    paper_based: bool = False      # True: no public code; our reading of the paper
    reported: str = ""             # where the docs list the reported mIoU


@dataclass
class NoOptions:
    pass


@dataclass(frozen=True)
class WindowContext:
    """What the driver knows about a batch of windows, for methods that need more than the trunk.

    Given to :meth:`Method.features` only when the method sets ``needs_context`` (ResCLIP's SFR
    builds a temporary segmentation of the window inside the forward pass).
    """

    images: torch.Tensor    # (n, 3, H, W) the normalised windows exactly as fed to the model
    text: torch.Tensor      # (Q, D) unit query embeddings
    logit_scale: float      # the driver's softmax temperature on cosine logits


class Method:
    """Base class. Subclasses set ``name``, ``info``, ``Options`` and implement ``features``;
    their module registers them with their card (:mod:`tfovss_core.methods.card`)."""

    name: ClassVar[str]
    info: ClassVar[MethodInfo]
    Options: ClassVar[type] = NoOptions
    # Post-processing: NACLIP and ResCLIP divide the class probabilities by their sum per pixel
    # after the mask was taken (their ``postprocess_result``).
    renormalize_probs: ClassVar[bool] = False
    # The method's own protocol when no dataset preset is given (its repo's class defaults):
    # set from the card's ``protocol`` at registration.
    default_settings: ClassVar[dict] = {}
    # The method's card, set by ``register_method`` (a MethodCard; typed loosely to keep this
    # module free of the card's imports).
    card: ClassVar[Any] = None
    # True: ``features(trunk, context)`` receives a :class:`WindowContext` (see there).
    needs_context: ClassVar[bool] = False
    # Windows are zero-padded to this multiple whatever ``pad_to_patch`` says (ProxyCLIP: 56, so
    # that both its CLIP and its VFM patch grids tile the window); None: the driver's own rule.
    pad_multiple: ClassVar[int | None] = None

    def __init__(self, backbone: VisionBackbone, options=None):
        self.backbone = backbone
        self.options = options if options is not None else self.Options()
        self.resolve_backbone_options()
        self.validate()

    # -- options --------------------------------------------------------------------------------
    @classmethod
    def option_fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls.Options))

    @classmethod
    def make_options(cls, **values):
        names = {f.name for f in cls.option_fields()}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"method {cls.name!r} has no option(s) {unknown}; its options: {sorted(names) or 'none'}")
        hints = typing.get_type_hints(cls.Options)
        for f in cls.option_fields():
            if f.name in values:
                values[f.name] = _coerce(cls.name, f, hints.get(f.name), values[f.name])
        return cls.Options(**values)

    def resolve_backbone_options(self) -> None:
        """Fills options left at ``None`` whose source is ``"backbone"`` from the card's constants."""
        card = self.constants_card()
        constants = card.constants_for(self.backbone.profile) if card is not None else {}
        updates = {}
        for f in self.option_fields():
            if f.metadata.get("source") == "backbone" and getattr(self.options, f.name) is None:
                if f.name not in constants:
                    raise ConfigError(f"{self.name}: no value of {f.name!r} for backbone "
                                      f"{self.backbone.profile.name}; pass it explicitly")
                updates[f.name] = constants[f.name]
        if updates:
            self.options = dataclasses.replace(self.options, **updates)

    def validate(self) -> None:
        """Checks option values against the backbone (raise :class:`ConfigError`)."""

    def check_block_index(self, name: str, value: int, *, limit: int | None = None) -> None:
        """``value`` must index an intermediate block output (``< depth - 1`` unless ``limit``)."""
        limit = self.backbone.depth - 1 if limit is None else limit
        if not 0 <= value < limit:
            raise ConfigError(f"{self.name}: {name}={value} is out of range for a {self.backbone.depth}-block "
                              f"backbone (0 <= {name} < {limit})")

    @classmethod
    def constants_card(cls):
        """The card whose per-backbone constants fill this method's ``"backbone"`` options."""
        return cls.card

    def option_values(self) -> dict:
        return {f.name: _jsonable(getattr(self.options, f.name)) for f in self.option_fields()}

    # -- the computation -------------------------------------------------------------------------
    def trunk_request(self) -> TrunkRequest:
        """Default: every block but the last is stock; no intermediate outputs kept."""
        return TrunkRequest(depth=self.backbone.depth - 1)

    def weight_edits(self) -> list:
        """Reversible weight edits active while this method's trunk runs (GCLIP's CS)."""
        return []

    def features(self, trunk: Trunk) -> torch.Tensor:
        """Dense patch features ``(N, gh*gw, D)`` (not normalised; CLS excluded).

        Methods with ``needs_context`` take a second argument, the :class:`WindowContext`.
        """
        raise NotImplementedError

    def output_grid(self, trunk: Trunk, images: torch.Tensor) -> tuple[int, int]:
        """Patch grid of the features :meth:`features` returns for windows ``images``.

        Default: CLIP's grid. A method whose dense output lives on another grid (ProxyCLIP: the
        VFM's finer one) says so here.
        """
        return trunk.grid

    def image_side_uses_text(self) -> bool:
        """Whether :meth:`features` reads the text, so its features serve one vocabulary only.
        Default: unless the card (the host's, for a composed add-on) declares ``text_independent``."""
        card = type(self).card
        return not (card is not None and card.text_independent)

    def describe(self) -> dict:
        return {"method": self.name, "title": self.info.title, "paper_based": self.info.paper_based,
                "options": self.option_values()}


def _jsonable(v):
    if isinstance(v, tuple):
        return list(v)
    return v


def _coerce(method: str, f: dataclasses.Field, hint, value):
    """Light type checking of option values (CLI strings become numbers/bools)."""
    choices = f.metadata.get("choices")
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    target = hint if origin is None else (args[0] if len(args) == 1 and origin is not tuple else None)
    try:
        if value is None:
            pass
        elif target is bool and isinstance(value, str):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(value)
            value = value.lower() in ("1", "true", "yes", "on")
        elif target in (int, float) and not isinstance(value, bool):
            value = target(value)
        elif (origin is tuple or target is tuple or (args and typing.get_origin(args[0]) is tuple)) \
                and isinstance(value, (list, tuple, str)):
            items = value.split(",") if isinstance(value, str) else value
            value = tuple(float(x) if isinstance(x, str) and "." in x else (int(x) if isinstance(x, str) else x)
                          for x in items)
    except (TypeError, ValueError):
        raise ConfigError(f"option {f.name!r} of method {method!r} expects {hint}, got {value!r}") from None
    if choices is not None and value not in choices:
        raise ConfigError(f"option {f.name!r} of method {method!r} must be one of {list(choices)}, got {value!r}")
    return value


class LastBlockMethod(Method):
    """Methods that only replace the attention of the last block (and toggle residual / FFN)."""

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid) -> torch.Tensor:
        raise NotImplementedError

    def keep_residual(self) -> bool:
        return False

    def keep_ffn(self) -> bool:
        return False

    def features(self, trunk: Trunk) -> torch.Tensor:
        bb = self.backbone
        y = bb.last_block(trunk.x, lambda q, k, v: self.attention(q, k, v, trunk.grid),
                          residual=self.keep_residual(), ffn=self.keep_ffn())
        return bb.head(y[:, 1:])
