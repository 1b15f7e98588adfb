"""Several methods on the same images with one frozen trunk: :class:`MultiSegmenter` and :func:`compare`.

Every method here changes only the last block(s) of the same CLIP, so when methods see the same
windows the frozen blocks are the same computation. A :class:`MultiSegmenter` builds one ordinary
:class:`~tfovss_core.Segmenter` per method (same settings resolution, presets and defaults as a
single-method run), groups those whose windows coincide (same resize, crop, stride, padding and
batch size, and no weight edits), and per batch of windows runs the frozen blocks once, for the
union of the group's :class:`~tfovss_core.clip.backbone.TrunkRequest` s; each method then adds only its
own last-block work on those shared outputs. A method with weight edits (GCLIP-style) or with its
own window protocol gets a trunk of its own.

The result of every method is bit-for-bit the result of running that method alone: the shared
trunk is the same kernels on the same batch, and each method's windows, merging and
post-processing are its own Segmenter's code (``tests/test_speed_paths.py`` checks this exactly).
Methods must not modify trunk tensors in place (none does).

A second frozen backbone is shared the same way: a method that runs one per batch of windows
(ProxyCLIP's DINO) lists it in ``extra_backbones()``; the model itself is loaded once per process
(:func:`tfovss_core.clip.vfm.load_vfm` caches it), and while a group runs, each such model used by
two or more of its methods memoises its latest batch (``share_batches()``), so it runs once per
batch of windows, not once per method, with the same bits.

Text is shared too: the per-query embedding cache of the model's text encoder means a query that
several methods use (same templates) is encoded once, and only once across runs (disk cache).

Memory stays bounded: images are processed one at a time, the shared trunk of one batch of
windows is released before the next batch, and results are streamed by :meth:`iter_predict`.
"""
from __future__ import annotations

import dataclasses
from collections import deque
from contextlib import ExitStack
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch

from tfovss_core.clip.backbone import Trunk, TrunkRequest
from tfovss_core.errors import ConfigError, InputError, TfovssError
from tfovss_core.io.images import image_label
from tfovss_core.engine.segmenter import (MaskResult, SegmentationResult, Segmenter, WindowOutput, check_output,
                                          guarded)
from tfovss_core.engine.windows import sliding_windows
from tfovss_core.clip.loading import ClipModel


class SharedTrunk:
    """A ``trunk_fn`` for :meth:`Segmenter.windows` that computes each batch of windows once.

    Called with the same crops by several methods in turn (lock-step), it runs the frozen blocks
    for ``request`` (the union of the methods' requests) on the first call and hands every later
    caller a view with the depth that caller asked for. Only the latest batch is held.
    """

    def __init__(self, backbone, request: TrunkRequest):
        self.backbone = backbone
        self.request = request
        self._crops: torch.Tensor | None = None
        self._trunk: Trunk | None = None
        self.runs = 0      # frozen-trunk computations (for tests and the benchmark)
        self.hits = 0      # calls served from the shared batch

    def __call__(self, crops: torch.Tensor, request: TrunkRequest) -> Trunk:
        if request.depth > self.request.depth or not set(request.keep) <= set(self.request.keep) | {
                self.request.depth - 1}:
            raise ValueError(f"request {request} is not covered by the shared request {self.request}")
        if self._trunk is None or self._crops is None or self._crops.shape != crops.shape \
                or not torch.equal(self._crops, crops):
            self._trunk = None  # release the previous batch before computing the next one
            self._trunk = self.backbone.run_trunk(crops, self.request)
            self._crops = crops
            self.runs += 1
        else:
            self.hits += 1
        t = self._trunk
        if request.depth == t.depth:
            return t
        return Trunk(embedded=t.embedded, depth=request.depth, outputs=t.outputs, grid=t.grid)

    def clear(self) -> None:
        self._crops = self._trunk = None


def _window_key(seg: Segmenter, x: torch.Tensor):
    """Segmenters with equal keys see identical batches of windows of ``x`` in the same precision.

    Settings that differ but change nothing on this image (e.g. ``pad_to_patch`` when every window
    is already a patch multiple) do not split a group.
    """
    if seg.method.weight_edits():
        return ("own", id(seg))
    s = seg.settings
    _, _, h, w = x.shape
    boxes = tuple(sliding_windows(h, w, s.crop, s.stride))
    y1, y2, x1, x2 = boxes[0]
    pad = seg.window_padding(y2 - y1, x2 - x1)
    return boxes, tuple(pad), seg.window_batch_size(x, len(boxes)), s.precision


def _shared_extra_backbones(segs: Sequence[Segmenter]) -> list:
    """The second backbones (``method.extra_backbones()``) that two or more of ``segs`` use."""
    users: dict[int, list] = {}
    for seg in segs:
        extras = getattr(seg.method, "extra_backbones", None)
        for model in (extras() if extras is not None else ()):
            users.setdefault(id(model), []).append(model)
    return [models[0] for models in users.values() if len(models) > 1]


def _prepare_key(seg: Segmenter):
    s = seg.settings
    return s.short_side, s.max_long_side


def _light(out: WindowOutput) -> WindowOutput:
    """Keeps what merging needs (boxes and logits), drops the per-patch features."""
    return dataclasses.replace(out, features=out.features[:0])


def _finish(seg: Segmenter, x: torch.Tensor, size, label: str, output: str, outputs=None):
    """One method's result from its windows (run here when ``outputs`` is None): exactly the code
    of its own ``predict`` (``output="probs"``) or ``predict_mask`` (``output="mask"``)."""
    if output == "mask":
        return seg.finish_mask(seg.input_logits(x, outputs, scratch_result=True), x, tuple(size), label)
    seg.check_output_memory(tuple(size), x.device, label)   # refused up front, as predict does
    return seg.finish(seg.dense_logits(x, size, outputs=outputs), x, label)


class MultiSegmenter:
    """Several methods on one model, sharing the frozen trunk (and text) wherever they can.

    ``methods`` items: a method name (``"sclip"``), ``(label, method)``, ``(label, method, settings)``
    with per-method settings/options that override ``settings``, or a ready :class:`Segmenter`
    on the same model (alone, labelled by its method's name, or as ``(label, segmenter)``).
    ``classes`` and ``settings`` are as for :class:`Segmenter` and apply to every method; with a preset (``classes="voc21"``) each method gets its own official settings, so
    methods of different protocols (e.g. ClearCLIP's 448/224 windows vs SCLIP's 224/112) form
    separate trunk groups. Pass common window settings (``short_side``, ``crop``, ``stride``) to
    share one trunk across all of them.
    """

    def __init__(self, model: ClipModel, methods: Sequence, classes=None, **settings):
        if not methods:
            raise ConfigError("no methods given: pass a list such as ['sclip', 'clearclip']")
        self.model = model
        self.segmenters: dict[str, Segmenter] = {}
        for item in methods:
            label, seg = self._build(item, classes, settings)
            if label in self.segmenters:
                raise ConfigError(f"method label {label!r} given twice; use (label, method, settings) "
                                  "tuples to run one method with several option sets")
            self.segmenters[label] = seg
        for label, seg in self.segmenters.items():
            if seg.model is not model:
                raise ConfigError(f"{label}: its Segmenter uses another model; a MultiSegmenter shares one")
        self.image_groups: list[list[list[str]]] = []   # trunk groups of each image of the latest call
        self.trunk_runs = 0                       # frozen-trunk batches computed so far

    def _build(self, item, classes, settings) -> tuple[str, Segmenter]:
        if isinstance(item, Segmenter):
            return item.method.name, item
        if isinstance(item, str):
            return item, Segmenter(self.model, method=item, classes=classes, **settings)
        if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], Segmenter):
            return str(item[0]), item[1]
        if isinstance(item, (tuple, list)) and len(item) in (2, 3):
            label, method = item[0], item[1]
            extra = dict(item[2]) if len(item) == 3 else {}
            return str(label), Segmenter(self.model, method=method, classes=classes, **{**settings, **extra})
        raise ConfigError(f"cannot read method spec {item!r}: give a name, (label, method), "
                          "(label, method, settings) or (label, Segmenter)")

    @property
    def labels(self) -> list[str]:
        return list(self.segmenters)

    @property
    def last_groups(self) -> list[list[str]]:
        """Trunk groups (labels sharing a frozen trunk) of the latest image."""
        return self.image_groups[-1] if self.image_groups else []

    def shared_request(self, labels: Sequence[str]) -> TrunkRequest:
        request = None
        for label in labels:
            r = self.segmenters[label].method.trunk_request()
            request = r if request is None else request.merged(r)
        return request

    # -- prediction --------------------------------------------------------------------------------
    def prepare_all(self, image, name: str | None = None) -> dict:
        """Decodes ``image`` once and prepares one network input per distinct resize setting."""
        label = image_label(image, name)
        prepared: dict = {}
        for seg in self.segmenters.values():
            pkey = _prepare_key(seg)
            if pkey not in prepared:
                prepared[pkey] = seg.prepare(image if not prepared else next(iter(prepared.values()))[0], label)
        return prepared

    @torch.inference_mode()
    def predict(self, image, name: str | None = None, prepared: dict | None = None, output: str = "probs"
                ) -> dict[str, SegmentationResult] | dict[str, MaskResult]:
        """Every method on one image: ``{label: SegmentationResult}`` (in the order given).

        ``prepared``: the output of :meth:`prepare_all` for this image (the streaming path
        decodes images ahead in worker threads). ``output="mask"``: ``{label: MaskResult}``, each
        method's pre-label path (:meth:`Segmenter.predict_mask`) on the same shared trunk, so each
        mask is identical to that method's ``predict_mask`` alone.
        """
        label = image_label(image, name)
        return self.predict_many([image], None if prepared is None else [prepared], names=[label],
                                 output=output)[0]

    @torch.inference_mode()
    def predict_many(self, images: Sequence, prepared: Sequence[dict] | None = None,
                     names: Sequence[str] | None = None, output: str = "probs") -> list[dict]:
        """Every method on several images, ``[{label: result}]`` in their order, the windows of
        images of one shape batched across them (:meth:`Segmenter.windows_of_images`): fewer,
        larger forward passes, which is what keeps a GPU busy; each result is the image's own
        :meth:`predict` where the kernels compute each window independently of its batch (CPU).

        ``prepared``: :meth:`prepare_all` of each image (decoded ahead). Memory grows with the
        images (their inputs and window logits are held until the last batch); the job runner
        bounds them with ``images_per_batch``.
        """
        check_output(output)
        labels = list(names) if names is not None else [image_label(im, None) for im in images]
        if prepared is None:
            prepared = [self.prepare_all(im, lb) for im, lb in zip(images, labels)]
        results: list[dict] = [{} for _ in images]
        # images whose trunk groups and input shapes coincide run their windows together
        runs: dict[Any, list[int]] = {}
        self.image_groups = []
        for n, ready in enumerate(prepared):
            groups: dict[Any, list[str]] = {}
            for g, seg in self.segmenters.items():
                pkey = _prepare_key(seg)
                x = ready[pkey][1]
                groups.setdefault((pkey, tuple(x.shape), _window_key(seg, x)), []).append(g)
            self.image_groups.append(list(groups.values()))
            for key, group in groups.items():
                runs.setdefault((key, tuple(group)), []).append(n)
        for ((pkey, _, _), group), members in runs.items():
            xs = [prepared[n][pkey][1] for n in members]
            segs = [self.segmenters[g] for g in group]
            for seg in segs:
                seg.text_features  # noqa: B018  (encode the text before the window loop)
            shared = SharedTrunk(self.model.visual, self.shared_request(group)) if len(segs) > 1 else None
            outputs = [[[] for _ in members] for _ in segs]     # [method][image] -> window outputs
            batches = 0
            with ExitStack() as stack:
                for extra in _shared_extra_backbones(segs):
                    stack.enter_context(extra.share_batches())
                for per_method in zip(*(seg.windows_of_images(xs, trunk_fn=shared) for seg in segs), strict=True):
                    batches += 1
                    for kept, per_image in zip(outputs, per_method):
                        for i, out in per_image:
                            kept[i].append(_light(out))
            if shared is not None:
                self.trunk_runs += shared.runs
                shared.clear()      # release the last batch's trunk before the maps are made
            else:
                self.trunk_runs += batches
            for g, seg, per_image in zip(group, segs, outputs):
                for n, outs in zip(members, per_image):
                    rgb, x = prepared[n][pkey]
                    results[n][g] = _finish(seg, x, rgb.shape[:2], labels[n], output, outs)
        return [{g: r[g] for g in self.segmenters} for r in results]

    def predict_batch(self, images: Sequence) -> list[dict[str, SegmentationResult]]:
        return [self.predict(im) for im in images]

    def iter_predict(self, images: Iterable, workers: int = 0
                     ) -> Iterator[tuple[Any, dict[str, SegmentationResult] | TfovssError]]:
        """Streams ``(image, {label: result})`` or ``(image, error)``; nothing accumulates.

        ``workers > 0`` decodes and resizes the next images in that many threads while the current
        one is segmented (see :func:`stream`).
        """
        if workers > 0:
            yield from stream(self, images, workers=workers)
            return
        yield from guarded(self.predict, images)

    def describe(self) -> dict:
        return {"methods": {label: seg.describe() for label, seg in self.segmenters.items()},
                "trunk_groups_last_image": [list(g) for g in self.last_groups]}


def prefetch(items: Iterable, task: Callable[[Any], Callable[[], Any] | None], workers: int = 2,
             ahead: int | None = None) -> Iterator[tuple[Any, Future | None]]:
    """``(item, future)`` in order, the futures computing ahead in ``workers`` threads.

    ``task(item)`` runs on the caller's thread (so it may build or look up shared state) and
    returns the zero-argument job to run in a worker thread, or None for nothing to prepare. At
    most ``ahead`` (default ``2 * workers``) items are in flight, so memory stays bounded; a job's
    error comes out of ``future.result()``.
    """
    ahead = max(1, ahead if ahead is not None else 2 * max(1, workers))
    it = iter(items)
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="tfovss-decode") as pool:
        def submit() -> None:
            for item in it:
                job = task(item)
                pending.append((item, pool.submit(job) if job is not None else None))
                return

        for _ in range(ahead):
            submit()
        while pending:
            item, future = pending.popleft()
            submit()
            yield item, future


def stream(runner, images: Iterable, workers: int = 2, ahead: int | None = None) -> Iterator[tuple[Any, Any]]:
    """Segments ``images`` in order, decoding the next ones in worker threads meanwhile.

    ``runner`` is a :class:`~tfovss_core.Segmenter` (yields ``(image, result or error)``) or a
    :class:`MultiSegmenter` (yields ``(image, {label: result} or error)``). At most ``ahead``
    (default ``2 * workers``) prepared images wait in memory; on a CUDA model they are already on
    the GPU (copied from pinned host memory), so decoding, resizing and the copy overlap with the
    GPU's work on the current image. A bad image yields its :class:`InputError`, the rest go on.
    """
    single = isinstance(runner, Segmenter)
    multi = MultiSegmenter(runner.model, [runner]) if single else runner
    for im, future in prefetch(images, lambda im: partial(multi.prepare_all, im), workers, ahead):
        try:
            out = multi.predict(im, prepared=future.result())
        except InputError as exc:
            yield im, exc
            continue
        yield im, (next(iter(out.values())) if single else out)


# -- fast mode: departs from the papers' protocol -----------------------------------------------------
FAST_MODES = {
    # one pass over the whole resized image, positional embeddings interpolated to its patch grid
    "whole": {"crop": 0},
    # non-overlapping windows (stride = crop): about 1.5x fewer windows than stride = crop / 2
    "coarse": {"stride": None},
}


def fast_settings(mode: str = "whole", crop: int = 224) -> dict:
    """Settings of a fast mode for pre-labelling big datasets. NOT the papers' protocol.

    ``"whole"``: the whole image in one forward pass (``crop=0``); ``"coarse"``: windows of
    ``crop`` with stride ``crop``. Both change the outputs (bench/RESULTS.md gives the speed-up and
    the pixel agreement with the protocol path); benchmark numbers must use the protocol.
    """
    if mode not in FAST_MODES:
        raise ConfigError(f"unknown fast mode {mode!r}; choose one of {sorted(FAST_MODES)}")
    if mode == "coarse":
        return {"crop": crop, "stride": crop}
    return dict(FAST_MODES[mode])


def compare(model: ClipModel, image, methods: Sequence = ("clip", "maskclip", "sclip", "clearclip", "naclip",
                                                          "scclip"),
            classes=None, **settings) -> dict[str, SegmentationResult]:
    """Runs several methods on one image with a shared trunk: ``{label: SegmentationResult}``.

    ``compare(model, "photo.jpg", ["sclip", "clearclip"], classes=["cat", "dog"], short_side=336,
    crop=224, stride=112)``. For many images build a :class:`MultiSegmenter` once and stream with
    :meth:`MultiSegmenter.iter_predict`.
    """
    return MultiSegmenter(model, methods, classes=classes, **settings).predict(image)


__all__ = ["MultiSegmenter", "SharedTrunk", "compare", "prefetch", "stream", "FAST_MODES", "fast_settings"]
