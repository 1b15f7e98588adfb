"""``tfovss benchmark``: the papers' benchmarks with the papers' protocol, one command.

Each method runs with its own official per-dataset settings (:mod:`tfovss_core.spec.presets`); the model
is loaded once (and only if something needs computing); images stream one at a time; every image's
confusion matrix is appended to a per-run JSON-lines file as soon as it is computed, so an
interrupted run resumes where it stopped and a repeated run recomputes nothing. The methods of a
dataset run together image by image, sharing the frozen trunk where their windows coincide
(:mod:`tfovss_core.engine.multi`; ``--no-shared-trunk`` runs them one by one). A run is keyed by
(method, dataset, split, settings hash); the hash covers the architecture, the weights, the preset
settings, the method defaults, explicit overrides, the label source and the tfovss version.

mIoU is MMSegmentation's ``IoUMetric`` (:mod:`tfovss_core.eval.metrics`): intersections and unions summed
over the dataset, ignore index dropped, classes absent from both prediction and ground truth
skipped. Outputs (``--out``): ``results.md`` / ``results.csv`` / ``results.json`` in the papers'
layout (methods as rows, datasets as columns, Avg), ``settings.json`` (every setting used), and
``runs/`` (the resumable per-image records, plus predicted masks with ``--save-masks`` or
``--fiftyone``).

    tfovss benchmark --methods sclip naclip --datasets voc21 ade20k --arch ViT-B/16 \\
        --pretrained openai --root /data --limit 100
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tfovss_core.eval.datasets import (BENCHMARK_ORDER, SHORT_NAMES, DatasetLayoutError, canonical_name,
                       get_importer)
from tfovss_core.errors import TfovssError, WeightsError
from tfovss_core.clip.weights import ENV_SYNTHETIC_SCRIPT, Weights
from tfovss_core.spec.weights import SYNTHETIC_BANNER  # noqa: F401  (the one banner, re-exported)
from tfovss_core.clip.weights import resolve_weights as _resolve_weights
from tfovss_core.eval.metrics import image_confusion, metrics_from_confusion
from tfovss_core.spec.records import jsonable, read_records, settings_key, utc_now

RUN_FORMAT = 1
PAPER_BENCHMARKS = ("voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff",
                    "cityscapes", "ade20k")


class BenchmarkError(TfovssError):
    """A benchmark run that cannot start (bad arguments, missing data or weights)."""


# ---------------------------------------------------------------------------------------------
# weights (the spec parser lives in tfovss_core.clip.weights, shared with the CLI and the plugin)

def resolve_weights(arch: str, pretrained: str, synthetic_script: str | None = None) -> Weights:
    """:func:`tfovss_core.clip.weights.resolve_weights`, with its errors as :class:`BenchmarkError`."""
    try:
        return _resolve_weights(arch, pretrained, synthetic_script)
    except WeightsError as exc:
        raise BenchmarkError(str(exc)) from exc


def _vision_depth(arch: str) -> int | None:
    if arch == "tiny":
        from tfovss_core.clip.synthetic import TINY_VISION
        return int(TINY_VISION["layers"])
    try:
        from tfovss_core.clip.openclip import open_clip
        cfg = open_clip.get_model_config(arch)
        return int(cfg["vision_cfg"]["layers"]) if cfg else None
    except Exception:  # noqa: BLE001 - depth only refines the preset; unknown is fine
        return None


# ---------------------------------------------------------------------------------------------
# runs

@dataclass
class RunSpec:
    method: str
    dataset: str                 # importer name (preset name, or "fiftyone:<name>")
    importer: Any
    hash_inputs: dict
    key: str
    dir: Path

    @property
    def records_path(self) -> Path:
        return self.dir / "images.jsonl"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _method_defaults(method: str) -> dict:
    try:
        from tfovss_core.methods import get_method_class
        return dict(get_method_class(method).default_settings)
    except Exception:  # noqa: BLE001 - an unknown method fails later, with the core's message
        return {}


def run_settings(method: str, importer, weights: Weights, overrides: dict) -> dict:
    """Everything that determines a run's numbers (the settings-hash input)."""
    from tfovss_core import __version__
    from tfovss_core.methods import method_settings

    preset = getattr(importer, "preset_name", importer.name)
    official = (method_settings(method, preset, _vision_depth(weights.arch))
                if preset else None)
    info = importer.info()
    return jsonable({
        "format": RUN_FORMAT,
        "tfovss": __version__,
        "method": method,
        "dataset": importer.name,
        "split": importer.split,
        "labels": info.get("labels", ""),
        "label_options": {k: info[k] for k in ("crowd", "overlap") if k in info},
        "arch": weights.arch,
        "weights": weights.identity,
        "preset_settings": official,
        "method_defaults": _method_defaults(method),
        "overrides": dict(sorted(overrides.items())),
        "classes": None if preset else importer.class_names(),
    })


def confusion_from_records(records: Sequence[dict], num_classes: int) -> np.ndarray:
    flat = np.zeros(num_classes * num_classes, dtype=np.int64)
    for rec in records:
        if rec["cm"]:
            idx, cnt = np.asarray(rec["cm"], dtype=np.int64).T
            np.add.at(flat, idx, cnt)
    return flat.reshape(num_classes, num_classes)


def predicted_mask_path(run_dir: Path, sid: str) -> Path:
    """Where a run saves the predicted mask of image ``sid`` (``--save-masks``, ``--fiftyone``)."""
    return run_dir / "masks" / f"{sid}.png"




def _write_mask(path: Path, mask: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = mask.astype(np.uint8 if int(mask.max(initial=0)) < 256 else np.uint16)
    tmp = path.with_name(path.stem + ".tmp.png")
    if not cv2.imwrite(str(tmp), arr):
        raise OSError(f"cannot write {path}")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# the runner

@dataclass
class RunResult:
    spec: RunSpec
    num_images: int              # images of the split within --limit
    total_images: int            # images of the split
    evaluated: int               # images with a record (counted in the metric)
    computed: int                # computed in this invocation
    resumed: int                 # taken from earlier invocations
    failed: dict = field(default_factory=dict)
    metrics: dict | None = None
    describe: dict | None = None
    seconds: float = 0.0         # wall time of the pass that computed it (shared pass: common)
    shared_with: list = field(default_factory=list)  # methods whose frozen-trunk pass it shared


@dataclass
class _Run:
    """One (method, dataset) run while the runner works on it."""
    spec: RunSpec
    res: RunResult
    records: dict                # id -> stored record (grows as images are computed)
    selected: list[str]          # ids within --limit
    todo: set[str]               # ids still to compute
    meta: dict                   # run.json
    running: np.ndarray          # confusion matrix so far (progress bar)
    seg: Any = None


_SAMPLE_ERRORS = (TfovssError, OSError, ValueError)  # per-image failures: recorded, the rest goes on


class BenchmarkRunner:
    """Runs methods x benchmarks; see the module docstring.

    ``importers`` maps a dataset name to an importer (:func:`tfovss_core.eval.datasets.get_importer` or
    the plugin's FiftyOne importer). ``model``: an already loaded :class:`ClipModel` (then
    ``weights`` only labels the output); otherwise ``weights.load(device)`` runs once, lazily.
    ``segmenter_factory(spec)`` replaces building a :class:`Segmenter` (tests, custom pipelines):
    it returns an object with ``predict(path).mask``, ``num_classes`` and ``describe()``.

    ``shared_trunk`` (default): the methods of a dataset run together, image by image: each image
    is read once, and methods with the same windows and no weight edits share one pass of the
    frozen blocks per window batch (:class:`~tfovss_core.engine.multi.MultiSegmenter`; outputs equal each
    method alone). Records, masks and resuming stay per run. ``False``: each run on its own.
    """

    def __init__(self, methods: Sequence[str], importers: dict, weights: Weights, out: str | Path,
                 *, limit: int | None = None, device=None, overrides: dict | None = None,
                 save_masks: bool = False, recompute: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print, model=None,
                 segmenter_factory: Callable[[RunSpec], Any] | None = None,
                 shared_trunk: bool = True, executor=None, images_per_batch: int = 1):
        if not methods:
            raise BenchmarkError("no methods given")
        if not importers:
            raise BenchmarkError("no datasets given")
        self.methods = list(dict.fromkeys(methods))
        self.importers = dict(importers)
        self.weights = weights
        self.out = Path(out)
        self.limit = limit
        self.device = device
        self.overrides = dict(overrides or {})
        self.save_masks = save_masks
        self.recompute = recompute
        self.progress = progress
        self.log = log
        self._model = model
        self.segmenter_factory = segmenter_factory
        self.shared_trunk = shared_trunk
        self.executor = executor  # the job runner's executor (None: this process; or Ray)
        self.images_per_batch = images_per_batch  # images whose windows share forward passes
        self.trunk_batches = 0   # frozen-trunk window batches computed through shared passes
        self.model_loaded = False
        self.results: list[RunResult] = []

    # -- planning -----------------------------------------------------------------------------
    def plan(self) -> list[RunSpec]:
        specs = []
        for method in self.methods:
            for name, imp in self.importers.items():
                st = run_settings(method, imp, self.weights, self.overrides)
                key = settings_key(st)
                d = self.out / "runs" / f"{_safe(method)}__{_safe(name)}__{key}"
                specs.append(RunSpec(method, name, imp, st, key, d))
        return specs

    def model(self):
        if self._model is None:
            self.log(f"loading {self.weights.arch} ({self.weights.label}) ...")
            t = time.time()
            self._model = self.weights.load(self.device)
            self.model_loaded = True
            self.log(f"model loaded in {time.time() - t:.1f}s on {self._model.device}")
        return self._model

    def _segmenter(self, spec: RunSpec):
        if self.segmenter_factory is not None:
            return self.segmenter_factory(spec)
        from tfovss_core.engine.segmenter import Segmenter

        imp = spec.importer
        preset = getattr(imp, "preset_name", imp.name)
        classes = preset if preset else imp.class_names()
        return Segmenter(self.model(), method=spec.method, classes=classes, **self.overrides)

    # -- running ------------------------------------------------------------------------------
    def run(self) -> list[RunResult]:
        specs = self.plan()
        results: dict[int, RunResult] = {}
        for group in self._groups(specs):
            for spec, res in zip(group, self._run_group(group)):
                results[id(spec)] = res
        self.results = [results[id(s)] for s in specs]
        return self.results

    def _groups(self, specs: list[RunSpec]) -> list[list[RunSpec]]:
        """Runs computed together: every method of a dataset (shared trunk), else one by one.

        Which of them really share the frozen blocks (same windows, no weight edits) is decided
        per image by :class:`~tfovss_core.engine.multi.MultiSegmenter`."""
        if not self.shared_trunk:
            return [[s] for s in specs]
        by: dict[str, list[RunSpec]] = {}
        for s in specs:
            by.setdefault(s.dataset, []).append(s)
        return list(by.values())

    def _run_group(self, group: list[RunSpec]) -> list[RunResult]:
        runs = [self._open(spec) for spec in group]
        pending = [r for r in runs if r.todo]
        if pending:
            pending[0].spec.importer.check(limit=self.limit)
            for r in pending:
                self._start(r)
            self._compute(pending)
        for r in runs:
            res, records = r.res, r.records
            res.evaluated = sum(1 for i in r.selected if i in records)
            cm = confusion_from_records([records[i] for i in r.selected if i in records],
                                        r.spec.importer.num_classes)
            res.metrics = metrics_from_confusion(cm) if res.evaluated else None
            if res.describe is None:
                res.describe = r.meta.get("describe")
        return [r.res for r in runs]

    def _open(self, spec: RunSpec) -> _Run:
        """Writes the run's ``run.json`` and reads its stored records: what is done, what is not."""
        imp = spec.importer
        spec.dir.mkdir(parents=True, exist_ok=True)
        meta_path = spec.dir / "run.json"
        if self.recompute and spec.records_path.exists():
            spec.records_path.unlink()
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        meta.update({"key": spec.key, "settings": spec.hash_inputs, "dataset_info": imp.info()})
        meta.setdefault("created", utc_now())
        meta_path.write_text(json.dumps(jsonable(meta), indent=1))

        ids = imp.ids()
        selected = ids if self.limit is None else ids[: self.limit]
        records = read_records(spec.records_path)
        done = {i for i in selected if i in records
                and (not self.save_masks or predicted_mask_path(spec.dir, i).is_file())}
        todo = {i for i in selected if i not in done}
        label = f"{spec.method} / {spec.dataset}"
        if not todo:
            self.log(f"{label}: all {len(selected)} images already evaluated in "
                     f"{spec.dir.relative_to(self.out)}; nothing recomputed")
        elif done:
            self.log(f"{label}: resuming, {len(done)} of {len(selected)} images already "
                     f"evaluated, {len(todo)} to compute")
        res = RunResult(spec, len(selected), len(ids), 0, 0, len(done))
        running = confusion_from_records([records[i] for i in done], imp.num_classes)
        return _Run(spec, res, records, selected, todo, meta, running)

    def _start(self, r: _Run) -> None:
        """Builds the run's segmenter (loading the model on first use)."""
        imp = r.spec.importer
        r.seg = self._segmenter(r.spec)
        if r.seg.num_classes != imp.num_classes:
            raise BenchmarkError(f"{r.spec.method} / {r.spec.dataset}: the method has "
                                 f"{r.seg.num_classes} classes, the dataset {imp.num_classes}")
        r.res.describe = r.meta["describe"] = jsonable(r.seg.describe())
        (r.spec.dir / "run.json").write_text(json.dumps(jsonable(r.meta), indent=1))

    def _compute(self, runs: list[_Run]) -> None:
        """Streams the images any of ``runs`` (one dataset) still lacks through the job runner,
        each image once for all of them (:mod:`tfovss_core.engine.runner`)."""
        from tfovss_core.engine.runner import Item, JobRunner, ModelPass, ModelSpec, RunRef

        imp = runs[0].spec.importer
        names = [r.spec.method for r in runs]
        selected = runs[0].selected
        todo = [i for i in selected if any(i in r.todo for r in runs)]
        skip = set(selected).difference(todo)
        if len(runs) > 1:
            self.log(f"{imp.name}: {', '.join(names)} together, image by image (each image read "
                     "once; the frozen blocks run once per window batch for methods with the same "
                     "windows)")
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover
            tqdm = None
        bar = tqdm(total=len(todo), desc=f"{'+'.join(names)} {imp.name}", unit="img",
                   disable=not self.progress, file=sys.stderr, dynamic_ncols=True) if tqdm else None

        def progress(done: int, total: int) -> None:
            if bar:
                bar.update(1)
                bar.set_postfix_str(" ".join(
                    f"{'mIoU' if len(runs) == 1 else r.spec.method} "
                    f"{100 * metrics_from_confusion(r.running)['mIoU']:.2f}" for r in runs))

        model = ModelPass(ModelSpec({r.spec.method: r.seg for r in runs}), _SAMPLE_ERRORS,
                          images_per_batch=self.images_per_batch)
        t0 = time.time()
        with RecordsSink(self, runs) as sink:
            items = (Item(sample.id, str(sample.image_path), sample)
                     for sample in imp.samples(limit=self.limit, skip=skip))
            JobRunner(model, [RunRef(r.spec.method, r.spec.key) for r in runs], sink,
                      item_errors=_SAMPLE_ERRORS, progress=progress,
                      executor=self.executor).run(items)
        if bar:
            bar.close()
        seconds = time.time() - t0
        batches = model.trunk_runs if len(runs) > 1 else 0
        self.trunk_batches += batches
        groups = dict.fromkeys("+".join(n for n in names if n == r.spec.method
                                        or n in r.res.shared_with)
                               for r in runs if r.res.shared_with)
        if groups:
            self.log(f"{imp.name}: frozen trunk shared by {', '.join(groups)} ({batches} window "
                     f"batches of the frozen blocks for {len(runs)} methods)")
        for r in runs:
            r.res.seconds = seconds
            self.log(f"{r.spec.method} / {r.spec.dataset}: computed {r.res.computed} images in "
                     f"{seconds:.1f}s" + (f", {len(r.res.failed)} failed" if r.res.failed else "")
                     + (f" (together with {', '.join(n for n in names if n != r.spec.method)})"
                        if len(runs) > 1 else ""))

    def _record(self, r: _Run, f, sid: str, gt, pred, sec: float) -> None:
        """Appends one image's confusion record to the run (or its error to ``failed``)."""
        spec, imp = r.spec, r.spec.importer
        if not isinstance(pred, Exception) and pred.shape != gt.shape:
            pred = BenchmarkError(f"prediction {pred.shape[1]}x{pred.shape[0]} differs from the "
                                  f"ground truth {gt.shape[1]}x{gt.shape[0]}")
        if isinstance(pred, Exception):
            r.res.failed[sid] = f"{type(pred).__name__}: {pred}"
            self.log(f"{spec.method} / {spec.dataset}: {sid}: {pred}")
            return
        cm = image_confusion(pred, gt, imp.num_classes, imp.ignore_index)
        if self.save_masks:
            _write_mask(predicted_mask_path(spec.dir, sid), pred)
        nz = np.flatnonzero(cm)
        rec = {"id": sid, "shape": list(gt.shape), "cm": [[int(i), int(cm.flat[i])] for i in nz],
               "sec": sec}
        f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        f.flush()
        r.records[sid] = rec
        r.running += cm
        r.res.computed += 1


class RecordsSink:
    """The benchmark's sink: per run, one JSON-lines confusion record per image (appended and
    flushed as soon as it is computed: the resume state), and the mask with ``--save-masks``.

    ``done(run)``: the images of the run's split (within ``--limit``) that already have a record
    (and their mask when masks are saved). The ground truth is read when an image's results
    arrive; an image whose ground truth cannot be read fails for every run that computed it.
    """

    def __init__(self, runner: BenchmarkRunner, runs: list[_Run]):
        self.runner = runner
        self.runs = {r.spec.method: r for r in runs}
        self.files = {m: open(r.spec.records_path, "a", encoding="utf-8")
                      for m, r in self.runs.items()}

    def __enter__(self) -> "RecordsSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def done(self, run) -> set[str]:
        r = self.runs[run.label]
        return set(r.selected) - r.todo

    def write(self, outcome) -> None:
        sample, sid = outcome.item.context, outcome.item.id
        sec = round(outcome.seconds, 3)
        try:
            gt = sample.load_gt()
        except _SAMPLE_ERRORS as exc:
            self.failure(outcome.item, exc, list(outcome.results), sec)
            return
        for group in outcome.groups:  # which methods shared the frozen trunk on this image
            for m in group:
                shared = self.runs[m].res.shared_with
                shared.extend(o for o in group if o != m and o not in shared)
        for m, res in outcome.results.items():
            self.runner._record(self.runs[m], self.files[m], sid, gt, res.mask, sec)

    def failure(self, item, error, labels, sec: float = 0.0) -> None:
        for m in labels:
            self.runner._record(self.runs[m], self.files[m], item.id, None, error, sec)

    def close(self) -> None:
        for f in self.files.values():
            if not f.closed:
                f.close()
