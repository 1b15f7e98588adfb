"""The inference driver shared by every method.

image -> short-side resize -> CLIP normalisation -> sliding windows (batched through the model)
-> method features -> cosine with the cached text embeddings -> per-window bilinear upsampling and
averaging -> resize to the input resolution -> optional PAMR -> softmax with the logit scale,
synonym max, area / probability thresholds -> probabilities + mask.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tfovss_core.spec import presets as _presets
from tfovss_core.errors import ConfigError, InputError, TfovssError
from tfovss_core.spec.settings import SETTING_NAMES, Settings, coerce_setting
from tfovss_core.engine.scratch import Scratch
from tfovss_core.engine.features import (DenseFeatures, FeatureCache, WindowBatch, feature_key,
                                         image_digest)
from tfovss_core.engine.windows import pad_to_multiple, sliding_windows
from tfovss_core.ops.flops import auto_batch_size, autocast
from tfovss_core.io.images import CLIP_MEAN, CLIP_STD, image_label, load_image, resize_short_side
from tfovss_core.methods import Method, get_method_class, method_settings
from tfovss_core.methods.base import WindowContext
from tfovss_core.clip.loading import ClipModel
from tfovss_core.ops.pamr import pamr
from tfovss_core.ops.postprocess import mask_and_confidence, probabilities_and_mask
from tfovss_core.clip.text import resolve_templates
from tfovss_core.spec.classes import resolve_classes


@dataclass
class SegmentationResult:
    """One image's output: class probabilities and the mask, at the input image's resolution."""

    probs: np.ndarray            # float32 (C, H, W): what is argmaxed (after synonym max / area_thd)
    mask: np.ndarray             # (H, W) class indices after thresholds (uint8 when C <= 256)
    class_names: list[str]
    name: str = ""

    @property
    def confidence(self) -> np.ndarray:
        """Per-pixel top class probability ``(H, W)``."""
        return self.probs.max(axis=0)


@dataclass
class MaskResult:
    """The pre-label output of one image: the protocol's mask and top probability, no probability maps."""

    mask: np.ndarray                   # (H, W) class indices (uint8 when C <= 256, else uint16)
    confidence: np.ndarray | None      # (H, W) top class probability (float32 or float16), or None
    class_names: list[str]
    name: str = ""
    stats: dict = dataclasses.field(default_factory=dict)   # passes over the class chunks, fallback pixels


@dataclass
class FeatureResult(SegmentationResult):
    """:meth:`Segmenter.segment`'s output. ``from_features``: True when it was computed from the
    cached dense features; False when the method's image side reads the text, so a full
    prediction ran instead."""

    from_features: bool = True


@dataclass
class MaskFeatureResult(MaskResult):
    """:meth:`Segmenter.segment`'s output with ``output="mask"`` (``from_features`` as for
    :class:`FeatureResult`)."""

    from_features: bool = True


def check_output(output: str) -> None:
    """Refuses an unknown ``output`` choice of :meth:`Segmenter.predict` / :meth:`Segmenter.segment`."""
    if output not in ("probs", "mask"):
        raise ConfigError(f"output={output!r}: expected 'probs' (probability maps and mask) or 'mask' "
                          "(mask and confidence only)")


@dataclass
class WindowOutput:
    """Dense outputs of a batch of windows of one image (for inspection and conformance tests)."""

    boxes: list[tuple[int, int, int, int]]     # (y1, y2, x1, x2) in the resized input
    grid: tuple[int, int]
    features: torch.Tensor                     # (n, gh*gw, D) L2-normalised patch features
    logits: torch.Tensor                       # (n, Q, gh, gw) cosine logits


class Segmenter:
    """Open-vocabulary segmentation of images with one method.

    ``classes`` is a preset name (``"voc21"``, ``"ade20k"``, ... : its class file and the method's
    official settings for that dataset are applied), a path to a class file (one class per line,
    synonyms separated by ``", "``), a list whose items are a name or a list of synonyms, or
    ``{value: name}`` mask targets (:func:`tfovss_core.spec.classes.resolve_classes`). ``settings`` are driver settings (:class:`Settings`) and method options, by name; explicit
    values override the preset's and the method's defaults.

    ``feature_cache``: a :class:`FeatureCache`; with it, :meth:`encode` and :meth:`predict` reuse an
    image's dense features when the method's image side does not read the text (a new vocabulary
    then runs no model on a cached image; results are unchanged).
    """

    def __init__(self, model: ClipModel, method: str | Method = "sclip", classes=None, *,
                 feature_cache: FeatureCache | None = None, **settings):
        self.model = model
        self.feature_cache = feature_cache
        method_name = method if isinstance(method, str) else method.name
        method_cls = get_method_class(method_name) if isinstance(method, str) else type(method)
        source = resolve_classes(classes, inline_text=False)
        self.preset = _presets.get_preset(source.preset) if source.preset else None
        preset_settings: dict = {}
        if self.preset is not None:
            preset_settings = method_settings(method_name, self.preset.name, model.visual.depth)
        self.vocabulary = source.vocabulary(method_name)
        self.class_names = source.class_names(method_name)

        option_names = {f.name for f in method_cls.option_fields()}
        merged: dict = dict(method_cls.default_settings)
        merged.update({k: v for k, v in preset_settings.items() if k in SETTING_NAMES or k in option_names})
        unknown = sorted(k for k in settings if k not in SETTING_NAMES and k not in option_names)
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown} for method {method_name!r}; driver settings: "
                              f"{list(SETTING_NAMES)}; method options: {sorted(option_names) or 'none'}")
        merged.update(settings)
        self.settings = Settings(**{k: coerce_setting(k, v) for k, v in merged.items() if k in SETTING_NAMES})
        self.settings.validate()
        options = {k: v for k, v in merged.items() if k in option_names}
        if isinstance(method, Method):
            if options:
                raise ConfigError("pass options when creating the method instance, not to Segmenter")
            self.method = method
        else:
            self.method = method_cls(model.visual, method_cls.make_options(**options))
        self.templates = resolve_templates(self.settings.templates)
        self._text: torch.Tensor | None = None
        self._query_class = torch.tensor(self.vocabulary.query_class, dtype=torch.long)
        #: the maps window averaging and the pre-label path fill for each image, reused from image
        #: to image (per thread; shared with :meth:`with_classes` copies); ``scratch.release()``
        #: frees them
        self.scratch = Scratch()

    # -- text --------------------------------------------------------------------------------------
    @property
    def text_features(self) -> torch.Tensor:
        """``(Q, D)`` unit query embeddings on the model's device (computed once, cached on disk)."""
        if self._text is None:
            feats = self.model.text.encode_queries(self.vocabulary.queries, self.templates)
            self._text = feats.to(self.model.device, torch.float32)
        return self._text

    @property
    def num_classes(self) -> int:
        return len(self.vocabulary)

    # -- images ------------------------------------------------------------------------------------
    def prepare(self, image, name: str | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """The original RGB array and the normalised, resized network input ``(1, 3, h, w)``."""
        rgb, resized = self.load_resized(image, name)
        return rgb, self.network_input(resized)

    def load_resized(self, image, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The original RGB array and its resized copy (uint8 ``(h, w, 3)``) the windows are cut from."""
        label = image_label(image, name)
        rgb = load_image(image, label)
        s = self.settings
        patch = self.model.visual.patch
        if min(rgb.shape[:2]) < 1 or (s.short_side is None and min(rgb.shape[:2]) < patch):
            raise InputError(f"{label}: image of size {rgb.shape[1]}x{rgb.shape[0]} is smaller than one "
                             f"{patch}x{patch} patch")
        resized = resize_short_side(rgb, s.short_side, s.max_long_side)
        if min(resized.shape[:2]) < patch:
            raise InputError(f"{label}: image of size {rgb.shape[1]}x{rgb.shape[0]} becomes "
                             f"{resized.shape[1]}x{resized.shape[0]} after resizing, smaller than one patch")
        return rgb, resized

    def network_input(self, resized: np.ndarray) -> torch.Tensor:
        """The CLIP-normalised network input ``(1, 3, h, w)`` of a resized uint8 image."""
        x = torch.from_numpy(resized)
        if self.model.device.type == "cuda":  # pinned host memory: an asynchronous copy to the GPU
            x = x.pin_memory()
        x = x.to(self.model.device, non_blocking=True).permute(2, 0, 1).float()
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(3, 1, 1)
        return ((x - mean) / std).unsqueeze(0)

    # -- dense logits --------------------------------------------------------------------------------
    def windows(self, x: torch.Tensor, trunk_fn=None) -> Iterator[WindowOutput]:
        """Runs the method over the windows of one prepared input, ``batch_size`` at a time.

        ``trunk_fn(crops, request) -> Trunk`` replaces ``run_trunk`` (the shared trunk of
        :mod:`tfovss_core.engine.multi` hands every method the same frozen-block outputs).
        """
        text = self.text_features
        for chunk, grid, feats in self.window_features(x, trunk_fn, text=text):
            yield WindowOutput(boxes=chunk, grid=grid, features=feats, logits=window_logits(feats, text, grid))

    def window_features(self, x: torch.Tensor, trunk_fn=None, text: torch.Tensor | None = None
                        ) -> Iterator[tuple[list[tuple[int, int, int, int]], tuple[int, int], torch.Tensor]]:
        """``(boxes, grid, features)`` per batch of windows: the image side, before the text product.

        ``text`` reaches only methods with ``needs_context`` (:class:`WindowContext`); :meth:`encode`
        passes None, so a method that wrongly declares its image side text-independent fails there.
        """
        s = self.settings
        _, _, h, w = x.shape
        boxes = sliding_windows(h, w, s.crop, s.stride)
        batch = self.window_batch_size(x, len(boxes))
        for start in range(0, len(boxes), batch):
            chunk = boxes[start:start + batch]
            grid, feats = self.crop_features(torch.cat([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk]),
                                             trunk_fn, text)
            yield chunk, grid, feats

    def crop_features(self, crops: torch.Tensor, trunk_fn=None, text: torch.Tensor | None = None
                      ) -> tuple[tuple[int, int], torch.Tensor]:
        """``(grid, unit features (n, gh*gw, D))`` of a batch of same-sized windows ``(n, 3, ch, cw)``:
        padding, the trunk (or ``trunk_fn``) and the method, in the settings' precision."""
        s = self.settings
        pad = self.window_padding(crops.shape[-2], crops.shape[-1])
        if any(pad):
            crops = F.pad(crops, pad)
        with self.model.visual.weight_edit(self.method.weight_edits()), autocast(crops.device, s.precision):
            trunk = (trunk_fn or self.model.visual.run_trunk)(crops, self.method.trunk_request())
            if self.method.needs_context:
                context = WindowContext(images=crops, text=text, logit_scale=float(s.logit_scale))
                feats = self.method.features(trunk, context)
            else:
                feats = self.method.features(trunk)
        return self.method.output_grid(trunk, crops), F.normalize(feats.float(), dim=-1)

    def windows_of_images(self, xs: Sequence[torch.Tensor], trunk_fn=None
                          ) -> Iterator[list[tuple[int, WindowOutput]]]:
        """The windows of several prepared inputs of one shape, batched across the images: per
        forward pass, ``[(image index, WindowOutput of that image's windows in the batch)]``.

        The windows are those of :meth:`windows` on each input, in the same order, cut into batches
        of :meth:`window_batch_size` of all the images' windows; feeding each image's outputs to
        :meth:`input_logits` gives its logits. Bit-for-bit :meth:`windows` where the trunk and the
        method compute each window independently of its batch neighbours: the CPU kernels do at
        the protocols' window sizes (``tests/engine/test_images_per_batch.py`` checks every method
        at 224); far smaller windows (a few patches) and GPU kernels may pick other kernels for
        other batch sizes and round differently in the last bit, as the ``batch_size`` setting can.
        """
        shapes = {tuple(x.shape) for x in xs}
        if len(shapes) != 1 or next(iter(shapes))[0] != 1:
            raise ConfigError(f"windows_of_images needs inputs of one shape (1, 3, h, w), got {sorted(shapes)}")
        s = self.settings
        text = self.text_features
        _, _, h, w = xs[0].shape
        boxes = sliding_windows(h, w, s.crop, s.stride)
        pairs = [(i, box) for i in range(len(xs)) for box in boxes]
        batch = self.window_batch_size(xs[0], len(pairs))
        for start in range(0, len(pairs), batch):
            part = pairs[start:start + batch]
            grid, feats = self.crop_features(
                torch.cat([xs[i][:, :, y1:y2, x1:x2] for i, (y1, y2, x1, x2) in part]), trunk_fn, text)
            per_image: list[tuple[int, WindowOutput]] = []
            row = 0
            for i in dict.fromkeys(i for i, _ in part):
                own = [box for j, box in part if j == i]
                f = feats[row:row + len(own)]
                per_image.append((i, WindowOutput(boxes=own, grid=grid, features=f,
                                                  logits=window_logits(f, text, grid))))
                row += len(own)
            yield per_image

    def window_padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Zero padding (left, right, top, bottom) of a window: to the method's ``pad_multiple``
        if it has one, else to a CLIP patch multiple when ``pad_to_patch``, else none."""
        if self.method.pad_multiple:
            return pad_to_multiple(height, width, self.method.pad_multiple)
        if self.settings.pad_to_patch:
            return pad_to_multiple(height, width, self.model.visual.patch)
        return (0, 0, 0, 0)

    def window_batch_size(self, x: torch.Tensor, n_windows: int) -> int:
        """Windows per forward pass: ``batch_size``, or with 0 as many as fit the memory budget."""
        s = self.settings
        if s.batch_size:
            return s.batch_size
        _, _, h, w = x.shape
        crop = (min(s.crop, h), min(s.crop, w)) if s.crop else (h, w)
        return auto_batch_size(self.model.visual, crop, n_windows, x.device, s.precision)

    def input_logits(self, x: torch.Tensor, outputs=None, scratch_result: bool = False) -> torch.Tensor:
        """Cosine logits ``(Q, h, w)`` averaged over windows, at the resolution of the network input ``x``.

        ``outputs``: the :class:`WindowOutput` s of ``x`` when already computed (default: run them).
        ``scratch_result``: return this Segmenter's :attr:`scratch` memory, which its next call on
        this thread overwrites (for callers that consume the logits at once).
        """
        _, _, h, w = x.shape
        q = self.text_features.shape[0]
        canvas = count = None
        for out in (self.windows(x) if outputs is None else outputs):
            y1, y2, x1, x2 = out.boxes[0]
            ch, cw = y2 - y1, x2 - x1
            left, right, top, bottom = self.window_padding(ch, cw)
            size = (ch + top + bottom, cw + left + right)
            if canvas is None:
                # The text product leaves the logits channels-last, and so the upsampled maps: the
                # canvas takes their layout, (h, w, Q), so that the sums run over contiguous memory
                # (summing them into a (Q, h, w) canvas is a strided transposing add, several times
                # slower), unless it is over transposed_canvas_bytes: going back to (Q, h, w) holds
                # a second copy. The same additions in the same order: the same values.
                maps_channels_last = out.logits[:1].is_contiguous(memory_format=torch.channels_last)
                hwq = maps_channels_last and q * h * w * x.element_size() <= self.transposed_canvas_bytes
                canvas = self.scratch.zeros("canvas", (h, w, q) if hwq else (q, h, w), x.dtype, x.device)
                count = self.scratch.zeros("count", (h, w, 1) if hwq else (1, h, w), x.dtype, x.device)
            # One window at a time into one scratch buffer (in the layout the kernel writes): the same
            # kernel on the same values as upsampling the batch at once, without a fresh (n, Q, ...)
            # block per image (its page faults cost more than the interpolation itself).
            up = self.scratch.get("window", (1, q, *size), out.logits.dtype, x.device,
                                  torch.channels_last if maps_channels_last else torch.contiguous_format)
            for i, (y1, y2, x1, x2) in enumerate(out.boxes):
                torch.ops.aten.upsample_bilinear2d.out(out.logits[i:i + 1], list(size), False, None, None, out=up)
                window = up[0, :, top:top + ch, left:left + cw]
                if hwq:
                    canvas[y1:y2, x1:x2] += window.permute(1, 2, 0)
                    count[y1:y2, x1:x2] += 1
                else:
                    canvas[:, y1:y2, x1:x2] += window
                    count[:, y1:y2, x1:x2] += 1
        canvas.div_(count)
        if not hwq:
            return canvas if scratch_result or not self.scratch.holds(canvas) else canvas.clone()
        # back to (Q, h, w) as one 2-D transpose, which torch copies in cache-sized blocks
        logits = (self.scratch.get("logits", (q, h, w), canvas.dtype, canvas.device) if scratch_result
                  else canvas.new_empty((q, h, w)))
        logits.view(q, h * w).copy_(canvas.view(h * w, q).t())
        return logits

    def dense_logits(self, x: torch.Tensor, out_size: tuple[int, int], outputs=None) -> torch.Tensor:
        """Cosine logits ``(Q, H, W)`` averaged over windows and resized to ``out_size``.

        ``outputs``: the :class:`WindowOutput` s of ``x`` when already computed (default: run them).
        """
        logits = self.input_logits(x, outputs, scratch_result=True)
        return F.interpolate(logits[None], size=out_size, mode="bilinear", align_corners=False)[0]

    # -- prediction ------------------------------------------------------------------------------
    #: bytes the protocol path's full-resolution maps may take (None: half the memory available now)
    output_memory_limit: int | None = None
    #: classes per chunk on the pre-label path (its memory is ~ this x queries per class x H x W x 4 x 4)
    classes_per_chunk: int = 16
    #: bytes a chunk's maps may take: fewer classes per chunk on large images (never under one class)
    chunk_bytes: int = 512 * 2**20
    #: bytes of the window-averaging canvas up to which it is summed as (h, w, Q) (faster; going
    #: back to (Q, h, w) holds a second copy); larger ones are summed in place as (Q, h, w)
    transposed_canvas_bytes: int = 256 * 2**20
    #: bytes of one ``(Q, H, W)`` float32 map under which the pre-label path upsamples every query
    #: at once and runs the protocol's operations on blocks of pixels (one map, no probability maps,
    #: faster than the protocol path); larger vocabularies or images go class chunk by class chunk
    #: in bounded memory, unless that map is no larger than a chunk's own maps (small vocabularies
    #: on large images: one map of every query is then the smaller peak); 0: always class chunks
    whole_vocabulary_bytes: int = 256 * 2**20

    @torch.inference_mode()
    def predict(self, image, name: str | None = None, output: str = "probs") -> SegmentationResult | MaskResult:
        """Segments one image (HxWx3 uint8 array, PIL image or path).

        ``output="probs"`` (the protocol path) returns every class's probability map and the mask;
        it refuses up front, with an :class:`InputError` naming the sizes, an image whose maps would
        not fit :meth:`output_memory_budget`. ``output="mask"`` is :meth:`predict_mask`.
        With a ``feature_cache`` (and a text-independent method) both go through :meth:`encode` and
        :meth:`segment`, so a cached image runs no model.
        """
        check_output(output)
        label = image_label(image, name)
        if self.feature_cache is not None and self.text_independent:
            return self.segment(self.encode(image, label), output=output)
        if output == "mask":
            return self.predict_mask(image, name)
        rgb, x = self.prepare(image, label)
        size = rgb.shape[:2]
        self.check_output_memory(size, x.device, label)
        return self.finish(self.dense_logits(x, size), x, label)

    # -- features: the image side, then any vocabulary -----------------------------------------
    @property
    def text_independent(self) -> bool:
        """Whether the method's image side ignores the text (its features can serve any vocabulary)."""
        return not self.method.image_side_uses_text()

    def feature_key(self, image_hash: str) -> str:
        """The cache key of the features of the image of content hash ``image_hash`` under this
        Segmenter's weights, method, options and image-side settings."""
        return feature_key(image_hash, self.model.weights_digest, self.method.describe(),
                           dataclasses.asdict(self.settings), self.model.device.type)

    @torch.inference_mode()
    def encode(self, image, name: str | None = None) -> DenseFeatures:
        """The dense features of one image (:class:`DenseFeatures`): the windows through the model,
        up to the text product. Served from ``feature_cache`` when it holds them.

        For a method whose image side reads the text the features hold only the image
        (``text_independent`` False): :meth:`segment` then runs a full prediction.
        """
        label = image_label(image, name)
        rgb, resized = self.load_resized(image, label)
        digest = image_digest(rgb)
        key = self.feature_key(digest)
        size = (int(rgb.shape[0]), int(rgb.shape[1]))
        if not self.text_independent:
            return DenseFeatures([], resized, size, key, self.method.name, False, label, image_hash=digest,
                                 source=rgb)
        if self.feature_cache is not None:
            cached = self.feature_cache.get(key)
            if cached is not None:
                return dataclasses.replace(cached, name=label, image_hash=digest)
        x = self.network_input(resized)
        batches = []
        for boxes, grid, feats in self.window_features(x, text=None):
            y1, y2, x1, x2 = boxes[0]
            batches.append(WindowBatch(boxes, grid, self.window_padding(y2 - y1, x2 - x1), feats))
        features = DenseFeatures(batches, resized, size, key, self.method.name, True, label, image_hash=digest)
        if self.feature_cache is not None:
            self.feature_cache.put(features)
        return features

    @torch.inference_mode()
    def segment(self, features: DenseFeatures, classes=None,
                output: str = "probs") -> FeatureResult | MaskFeatureResult:
        """Mask and probabilities of encoded features for ``classes`` (default: this Segmenter's
        vocabulary), equal to :meth:`predict` of the same image with the same settings and
        ``output`` (``"mask"``: the mask and confidence of the pre-label path, no probability maps).

        ``classes`` is anything :func:`~tfovss_core.spec.classes.resolve_classes` takes; it replaces
        the vocabulary only (a preset's settings are not applied: the settings stay these).
        Raises :class:`ConfigError` when the features were made with other weights, method,
        options or image-side settings.
        """
        check_output(output)
        seg = self if classes is None else self.with_classes(classes)
        made = MaskFeatureResult if output == "mask" else FeatureResult
        if not features.text_independent:
            if features.source is None:
                raise ConfigError(f"{features.name or 'image'}: features of method {features.method!r} hold no image "
                                  "to predict from (its image side reads the text)")
            result = seg.predict_uncached(features.source, features.name, output=output)
            return made(**vars(result), from_features=False)
        if features.image_hash and seg.feature_key(features.image_hash) != features.key:
            raise ConfigError(f"{features.name or 'image'}: these features were encoded with other weights, method, "
                              f"options or image-side settings than this Segmenter's ({seg.method.name})")
        x = seg.network_input(features.resized)
        if output == "probs":
            seg.check_output_memory(features.image_size, x.device, features.name)
        text = seg.text_features
        outputs = []
        for batch in features.batches:
            feats = batch.features.to(x.device)
            outputs.append(WindowOutput(boxes=batch.boxes, grid=batch.grid, features=feats,
                                        logits=window_logits(feats, text, batch.grid)))
        if output == "mask":
            result = seg.finish_mask(seg.input_logits(x, outputs, scratch_result=True), x,
                                     tuple(features.image_size), features.name)
        else:
            result = seg.finish(seg.dense_logits(x, features.image_size, outputs=outputs), x, features.name)
        return made(**vars(result), from_features=True)

    @torch.inference_mode()
    def predict_uncached(self, image, name: str | None = None,
                         output: str = "probs") -> SegmentationResult | MaskResult:
        """:meth:`predict` without the feature cache."""
        cache, self.feature_cache = self.feature_cache, None
        try:
            return self.predict(image, name, output=output)
        finally:
            self.feature_cache = cache

    def with_classes(self, classes) -> Segmenter:
        """This Segmenter (same model, method instance, settings, cache) with another vocabulary."""
        source = resolve_classes(classes, inline_text=False)
        other = copy.copy(self)
        other.vocabulary = source.vocabulary(self.method.name)
        other.class_names = source.class_names(self.method.name)
        other.preset = None     # the preset's settings were not applied: it no longer describes the run
        other._text = None
        other._query_class = torch.tensor(other.vocabulary.query_class, dtype=torch.long)
        return other

    @torch.inference_mode()
    def predict_mask(self, image, name: str | None = None, confidence: str | None = "float32") -> MaskResult:
        """The pre-label path: the protocol's mask and top probability, computed a class chunk at a time.

        The mask is identical to :meth:`predict`'s and the confidence equal to its
        ``SegmentationResult.confidence`` within 1e-6, while memory stays bounded by
        ``classes_per_chunk`` instead of growing with the vocabulary (no ``(C, H, W)`` maps).
        ``confidence``: ``"float32"``, ``"float16"`` or None (not computed).
        """
        if confidence not in ("float32", "float16", None):
            raise ConfigError(f"confidence={confidence!r}: expected 'float32', 'float16' or None")
        label = image_label(image, name)
        rgb, x = self.prepare(image, label)
        return self.finish_mask(self.input_logits(x, scratch_result=True), x, tuple(rgb.shape[:2]), label, confidence)

    @torch.inference_mode()
    def finish_mask(self, logits: torch.Tensor, x: torch.Tensor, size: tuple[int, int], name: str = "",
                    confidence: str | None = "float32") -> MaskResult:
        """Mask and confidence from the input-resolution logits ``(Q, h, w)`` (see :meth:`input_logits`)."""
        s = self.settings
        guide = None
        if s.pamr_steps > 0:
            guide = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        queries_total = logits.shape[0]

        def full_res_logits(queries: torch.Tensor) -> torch.Tensor:
            # channel by channel the protocol's own operations, so each chunk is bit-identical to its
            # rows of the protocol's maps; a 3-channel input takes another CPU kernel, so 3 -> 2 + 1
            if len(queries) == queries_total:   # the whole vocabulary, asked for once: no gather, scratch maps
                up = self.scratch.get("full_res", (1, queries_total, *size), logits.dtype, logits.device)
                torch.ops.aten.upsample_bilinear2d.out(logits[None], list(size), False, None, None, out=up)
                up = up[0]
            else:
                sub = logits[queries]
                parts = [sub[:2], sub[2:]] if len(queries) == 3 and queries_total != 3 else [sub]
                ups = [F.interpolate(p[None], size=size, mode="bilinear", align_corners=False)[0] for p in parts]
                up = ups[0] if len(ups) == 1 else torch.cat(ups)
            if guide is not None:
                up = pamr(guide, up[None], s.pamr_steps, s.pamr_dilations)[0]
            return up

        pixels = size[0] * size[1]
        queries_per_class = torch.bincount(self._query_class, minlength=self.num_classes)

        def chunk_bytes(classes_per_chunk: int) -> int:    # the largest chunk's logits, scaled, softmax, merged
            per_chunk = queries_per_class.split(classes_per_chunk)   # the chunks of ops.postprocess.class_chunks
            return max(int(c.sum()) for c in per_chunk) * pixels * 4 * 4

        classes_per_chunk = max(1, min(self.classes_per_chunk, self.num_classes))
        while classes_per_chunk > 1 and chunk_bytes(classes_per_chunk) > self.chunk_bytes:
            classes_per_chunk = max(1, classes_per_chunk * 2 // 3)
        whole = self.whole_vocabulary_bytes > 0 and queries_total * pixels * 4 <= max(
            self.whole_vocabulary_bytes, chunk_bytes(classes_per_chunk))
        mask, conf, stats = mask_and_confidence(
            full_res_logits, self._query_class.to(logits.device), self.num_classes, size,
            logit_scale=s.logit_scale, prob_thd=s.prob_thd, area_thd=s.area_thd,
            renormalize=self.method.renormalize_probs,
            classes_per_chunk=self.num_classes if whole else classes_per_chunk,
            with_confidence=confidence is not None)
        # narrowed where it was computed (on a GPU: before it crosses to the host)
        if self.num_classes <= 256:
            mask = mask.to(torch.uint8).cpu().numpy()
        else:
            mask = mask.to(torch.int32).cpu().numpy().astype(np.uint16)
        if conf is not None:
            conf = conf.to(getattr(torch, confidence)).cpu().numpy()
        return MaskResult(mask=mask, confidence=conf, class_names=list(self.class_names), name=name, stats=stats)

    def output_bytes(self, size: tuple[int, int]) -> int:
        """Peak bytes of the protocol path's full-resolution maps for an image of ``size`` (H, W).

        Live at once: the upsampled logits, the scaled logits and the softmax (Q maps each), then
        the merged and thresholded probabilities (C maps each), PAMR's output beside its input.
        """
        q, c = self.text_features.shape[0], self.num_classes
        copies = 3 * q + 2 * c + (q if self.settings.pamr_steps > 0 else 0)
        return copies * size[0] * size[1] * 4

    def output_memory_budget(self, device) -> int:
        """:attr:`output_memory_limit`, or half the memory available now (free GPU memory on CUDA)."""
        if self.output_memory_limit is not None:
            return int(self.output_memory_limit)
        return output_memory_budget(device)

    def check_output_memory(self, size: tuple[int, int], device, label: str = "") -> None:
        """Refuses (before allocating) an image whose protocol-path maps would not fit the budget."""
        need, budget = self.output_bytes(size), self.output_memory_budget(device)
        if need > budget:
            vocab = f"preset {self.preset.name!r}" if self.preset else "the vocabulary"
            raise InputError(
                f"{label or 'image'}: {size[1]}x{size[0]} with {vocab} ({self.num_classes} classes, "
                f"{self.text_features.shape[0]} queries) needs {need / 2**30:.1f} GiB for the full probability "
                f"maps, over the {budget / 2**30:.1f} GiB budget; use predict(image, output='mask') "
                "(mask and confidence in bounded memory) or raise Segmenter.output_memory_limit")

    @torch.inference_mode()
    def finish(self, logits: torch.Tensor, x: torch.Tensor, name: str = "") -> SegmentationResult:
        """PAMR, probabilities and mask from the dense logits ``(Q, H, W)`` at the image's size."""
        label, size = name, tuple(logits.shape[-2:])
        s = self.settings
        if s.pamr_steps > 0:
            guide = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            logits = pamr(guide, logits[None], s.pamr_steps, s.pamr_dilations)[0]
        probs, mask = probabilities_and_mask(
            logits, self._query_class.to(logits.device), self.num_classes, logit_scale=s.logit_scale,
            prob_thd=s.prob_thd, area_thd=s.area_thd, renormalize=self.method.renormalize_probs)
        mask_dtype = np.uint8 if self.num_classes <= 256 else np.int32
        return SegmentationResult(probs=probs.float().cpu().numpy(), mask=mask.cpu().numpy().astype(mask_dtype),
                                  class_names=list(self.class_names), name=label)

    def predict_batch(self, images: Sequence) -> list[SegmentationResult]:
        """Segments several images; raises on the first bad one (see :meth:`iter_predict`)."""
        return [self.predict(im) for im in images]

    def iter_predict(self, images: Iterable) -> Iterator[tuple[Any, SegmentationResult | TfovssError]]:
        """Streams ``(image, result or error)``; a bad image yields its error, the rest go on."""
        return guarded(self.predict, images)

    # -- description -------------------------------------------------------------------------------
    def describe(self) -> dict:
        """Every setting that determines the output (JSON-able)."""
        s = dataclasses.asdict(self.settings)
        s["pamr_dilations"] = list(s["pamr_dilations"])
        if isinstance(s["templates"], tuple):
            s["templates"] = list(s["templates"])
        return {"method": self.method.describe(), "model": self.model.describe(),
                "classes": [list(c) for c in self.vocabulary.classes], "class_names": list(self.class_names),
                "preset": self.preset.name if self.preset else None, "settings": s,
                "num_templates": len(self.templates),
                "renormalize_probs": self.method.renormalize_probs}


def output_memory_budget(device) -> int:
    """Half the memory available now: host memory (MemAvailable) on a CPU, free memory on CUDA."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2


def window_logits(features: torch.Tensor, text: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The text product: cosine logits ``(n, Q, gh, gw)`` of unit window features ``(n, gh*gw, D)``
    with unit query embeddings ``(Q, D)``. The one place it is computed, so that logits from cached
    features (:meth:`Segmenter.segment`) are bit-identical to a prediction's."""
    gh, gw = grid
    return (features @ text.T).transpose(1, 2).reshape(len(features), -1, gh, gw)


def guarded(predict, images: Iterable) -> Iterator[tuple[Any, Any]]:
    """``(image, predict(image))`` for each image, or ``(image, InputError)`` for a bad one."""
    for im in images:
        try:
            yield im, predict(im)
        except InputError as exc:
            yield im, exc
