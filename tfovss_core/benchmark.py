"""``tfovss benchmark``: the papers' benchmarks with the papers' protocol, one command.

Each method runs with its own official per-dataset settings (:mod:`tfovss_core.presets`); the model
is loaded once (and only if something needs computing); images stream one at a time; every image's
confusion matrix is appended to a per-run JSON-lines file as soon as it is computed, so an
interrupted run resumes where it stopped and a repeated run recomputes nothing. The methods of a
dataset run together image by image, sharing the frozen trunk where their windows coincide
(:mod:`tfovss_core.multi`; ``--no-shared-trunk`` runs them one by one). A run is keyed by
(method, dataset, split, settings hash); the hash covers the architecture, the weights, the preset
settings, the method defaults, explicit overrides, the label source and the tfovss version.

mIoU is MMSegmentation's ``IoUMetric`` (:mod:`tfovss_core.metrics`): intersections and unions summed
over the dataset, ignore index dropped, classes absent from both prediction and ground truth
skipped. Outputs (``--out``): ``results.md`` / ``results.csv`` / ``results.json`` in the papers'
layout (methods as rows, datasets as columns, Avg), ``settings.json`` (every setting used), and
``runs/`` (the resumable per-image records, plus predicted masks with ``--save-masks`` or
``--fiftyone``).

    tfovss benchmark --methods sclip naclip --datasets voc21 ade20k --arch ViT-B/16 \\
        --pretrained openai --root /data --limit 100
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .datasets import (BENCHMARK_ORDER, SHORT_NAMES, DatasetLayoutError, canonical_name,
                       get_importer)
from .errors import TfovssError, WeightsError
from .weights import ENV_SYNTHETIC_SCRIPT, Weights
from .weights import resolve_weights as _resolve_weights
from .metrics import image_confusion, metrics_from_confusion

RUN_FORMAT = 1
PAPER_BENCHMARKS = ("voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff",
                    "cityscapes", "ade20k")
SYNTHETIC_BANNER = ("SYNTHETIC WEIGHTS: random test weights, not a pretrained CLIP; these numbers "
                    "only check the pipeline and must not be compared with published results.")


class BenchmarkError(TfovssError):
    """A benchmark run that cannot start (bad arguments, missing data or weights)."""


# ---------------------------------------------------------------------------------------------
# weights (the spec parser lives in tfovss_core.weights, shared with the CLI and the plugin)

def resolve_weights(arch: str, pretrained: str, synthetic_script: str | None = None) -> Weights:
    """:func:`tfovss_core.weights.resolve_weights`, with its errors as :class:`BenchmarkError`."""
    try:
        return _resolve_weights(arch, pretrained, synthetic_script)
    except WeightsError as exc:
        raise BenchmarkError(str(exc)) from exc


def _vision_depth(arch: str) -> int | None:
    if arch == "tiny":
        from .testing import TINY_VISION
        return int(TINY_VISION["layers"])
    try:
        from ._openclip import open_clip
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


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, Path):
        return str(x)
    return x


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _method_defaults(method: str) -> dict:
    try:
        from .methods import get_method_class
        return dict(get_method_class(method).default_settings)
    except Exception:  # noqa: BLE001 - an unknown method fails later, with the core's message
        return {}


def run_settings(method: str, importer, weights: Weights, overrides: dict) -> dict:
    """Everything that determines a run's numbers (the settings-hash input)."""
    from . import __version__, presets

    preset = getattr(importer, "preset_name", importer.name)
    official = (presets.method_settings(method, preset, _vision_depth(weights.arch))
                if preset else None)
    info = importer.info()
    return _jsonable({
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


def settings_key(settings: dict) -> str:
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def read_records(path: Path) -> dict[str, dict]:
    """Per-image records of a run; a line cut short by an interruption is dropped."""
    out: dict[str, dict] = {}
    if not path.is_file():
        return out
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    for line in data.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "id" in rec and "cm" in rec:
            out[rec["id"]] = rec
    return out


def confusion_from_records(records: Sequence[dict], num_classes: int) -> np.ndarray:
    flat = np.zeros(num_classes * num_classes, dtype=np.int64)
    for rec in records:
        if rec["cm"]:
            idx, cnt = np.asarray(rec["cm"], dtype=np.int64).T
            np.add.at(flat, idx, cnt)
    return flat.reshape(num_classes, num_classes)


def _mask_path(run_dir: Path, sid: str) -> Path:
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

    ``importers`` maps a dataset name to an importer (:func:`tfovss_core.datasets.get_importer` or
    the plugin's FiftyOne importer). ``model``: an already loaded :class:`ClipModel` (then
    ``weights`` only labels the output); otherwise ``weights.load(device)`` runs once, lazily.
    ``segmenter_factory(spec)`` replaces building a :class:`Segmenter` (tests, custom pipelines):
    it returns an object with ``predict(path).mask``, ``num_classes`` and ``describe()``.

    ``shared_trunk`` (default): the methods of a dataset run together, image by image: each image
    is read once, and methods with the same windows and no weight edits share one pass of the
    frozen blocks per window batch (:class:`~tfovss_core.multi.MultiSegmenter`; outputs equal each
    method alone). Records, masks and resuming stay per run. ``False``: each run on its own.
    """

    def __init__(self, methods: Sequence[str], importers: dict, weights: Weights, out: str | Path,
                 *, limit: int | None = None, device=None, overrides: dict | None = None,
                 save_masks: bool = False, recompute: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print, model=None,
                 segmenter_factory: Callable[[RunSpec], Any] | None = None,
                 shared_trunk: bool = True):
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
        from .inference import Segmenter

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
        per image by :class:`~tfovss_core.multi.MultiSegmenter`."""
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
        meta.setdefault("created", _now())
        meta_path.write_text(json.dumps(_jsonable(meta), indent=1))

        ids = imp.ids()
        selected = ids if self.limit is None else ids[: self.limit]
        records = read_records(spec.records_path)
        done = {i for i in selected if i in records
                and (not self.save_masks or _mask_path(spec.dir, i).is_file())}
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
        r.res.describe = r.meta["describe"] = _jsonable(r.seg.describe())
        (r.spec.dir / "run.json").write_text(json.dumps(_jsonable(r.meta), indent=1))

    def _compute(self, runs: list[_Run]) -> None:
        """Streams the images any of ``runs`` (one dataset) still lacks, each image once for all."""
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
        multis: dict = {}
        t0 = time.time()
        with ExitStack() as stack:
            files = [stack.enter_context(open(r.spec.records_path, "a", encoding="utf-8"))
                     for r in runs]
            for sample in imp.samples(limit=self.limit, skip=skip):
                need = [(r, f) for r, f in zip(runs, files) if sample.id in r.todo]
                t = time.time()
                gt = None
                try:
                    gt = sample.load_gt()
                    preds = self._predict([r for r, _ in need], str(sample.image_path), multis)
                except _SAMPLE_ERRORS as exc:
                    preds = {r.spec.method: exc for r, _ in need}
                sec = round(time.time() - t, 3)
                for r, f in need:
                    self._record(r, f, sample.id, gt, preds[r.spec.method], sec)
                if bar:
                    bar.update(1)
                    bar.set_postfix_str(" ".join(
                        f"{'mIoU' if len(runs) == 1 else r.spec.method} "
                        f"{100 * metrics_from_confusion(r.running)['mIoU']:.2f}" for r in runs))
        if bar:
            bar.close()
        seconds = time.time() - t0
        batches = sum(m.trunk_runs for m in multis.values())
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

    def _predict(self, runs: list[_Run], path: str, multis: dict) -> dict[str, Any]:
        """``{method: mask or error}`` for one image.

        Several real :class:`Segmenter` s go through one :class:`~tfovss_core.multi.MultiSegmenter`
        (its grouping decides which share the frozen trunk; outputs equal each method alone). If
        that pass fails, each method runs alone, so an error is charged only to the method that
        raises it."""
        from .inference import Segmenter
        from .multi import MultiSegmenter

        model = getattr(runs[0].seg, "model", None)
        if len(runs) > 1 and all(isinstance(r.seg, Segmenter) and r.seg.model is model
                                 for r in runs):
            labels = tuple(r.spec.method for r in runs)
            if labels not in multis:
                multis[labels] = MultiSegmenter(model, [(r.spec.method, r.seg) for r in runs])
            multi = multis[labels]
            try:
                out = multi.predict(path)
            except _SAMPLE_ERRORS:
                pass
            else:
                by = {r.spec.method: r for r in runs}
                for group in multi.last_groups:
                    for m in group:
                        by[m].res.shared_with.extend(o for o in group
                                                     if o != m and o not in by[m].res.shared_with)
                return {m: res.mask for m, res in out.items()}
        preds: dict[str, Any] = {}
        for r in runs:
            try:
                preds[r.spec.method] = r.seg.predict(path).mask
            except _SAMPLE_ERRORS as exc:
                preds[r.spec.method] = exc
        return preds

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
            _write_mask(_mask_path(spec.dir, sid), pred)
        nz = np.flatnonzero(cm)
        rec = {"id": sid, "shape": list(gt.shape), "cm": [[int(i), int(cm.flat[i])] for i in nz],
               "sec": sec}
        f.write(json.dumps(rec, separators=(",", ":")) + "\n")
        f.flush()
        r.records[sid] = rec
        r.running += cm
        r.res.computed += 1


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# tables

def method_title(method: str) -> str:
    try:
        from .methods import describe_method
        return describe_method(method).get("title") or method
    except Exception:  # noqa: BLE001
        return method


def _column(name: str) -> str:
    return SHORT_NAMES.get(name, name)


def _ordered(names):
    known = [n for n in BENCHMARK_ORDER if n in names]
    return known + [n for n in names if n not in known]


def _fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.2f}"


def build_tables(results: Sequence[RunResult], weights: Weights, *, limit=None, overrides=None,
                 command: str = "", shared_trunk: bool | None = None) -> dict:
    """The papers' layout: ``rows`` (one per method) with mIoU per dataset column and Avg.

    ``shared_trunk``: whether the runner shared the frozen trunk (:class:`BenchmarkRunner`);
    recorded, never changes a number."""
    methods = list(dict.fromkeys(r.spec.method for r in results))
    datasets = _ordered(list(dict.fromkeys(r.spec.dataset for r in results)))
    by = {(r.spec.method, r.spec.dataset): r for r in results}
    rows = []
    for m in methods:
        vals = {}
        for d in datasets:
            r = by.get((m, d))
            vals[d] = None if r is None or r.metrics is None else \
                round(100 * r.metrics["mIoU"], 2)
        full = [v for v in vals.values() if v is not None and np.isfinite(v)]
        avg = round(float(np.mean(full)), 2) if len(full) == len(datasets) and full else None
        rows.append({"method": m, "title": method_title(m), "mIoU": vals, "avg": avg})
    details = {}
    settings = {}
    for r in results:
        imp = r.spec.importer
        entry = {
            "num_images": r.num_images, "total_images": r.total_images,
            "evaluated": r.evaluated, "computed": r.computed, "resumed": r.resumed,
            "failed": r.failed, "settings_key": r.spec.key,
            "run_dir": str(r.spec.dir), "seconds": round(r.seconds, 2),
            "shared_trunk_with": list(r.shared_with),
        }
        if r.metrics is not None:
            names = imp.class_names()
            entry.update({
                "mIoU": _num(100 * r.metrics["mIoU"]), "mAcc": _num(100 * r.metrics["mAcc"]),
                "aAcc": _num(100 * r.metrics["aAcc"]),
                "IoU": {n: _num(100 * v) for n, v in zip(names, r.metrics["IoU"])},
                "Acc": {n: _num(100 * v) for n, v in zip(names, r.metrics["Acc"])},
            })
        details.setdefault(r.spec.method, {})[r.spec.dataset] = entry
        settings.setdefault(r.spec.method, {})[r.spec.dataset] = {
            "settings_key": r.spec.key, "inputs": r.spec.hash_inputs,
            "segmenter": r.describe, "dataset": imp.info()}
    return {
        "title": "tfovss benchmark",
        "synthetic_weights": weights.synthetic,
        "banner": SYNTHETIC_BANNER if weights.synthetic else None,
        "arch": weights.arch, "weights": weights.label, "created": _now(),
        "limit": limit, "overrides": overrides or {}, "command": command,
        "shared_trunk": shared_trunk,
        "metric": "mIoU (%), MMSegmentation IoUMetric: intersections and unions summed over the "
                  "dataset, ignore index dropped, classes absent from prediction and ground "
                  "truth skipped",
        "datasets": datasets, "columns": [_column(d) for d in datasets],
        "rows": rows, "details": details, "settings": settings,
    }


def _num(v):
    v = float(v)
    return round(v, 4) if np.isfinite(v) else None


def render_markdown(t: dict) -> str:
    out = io.StringIO()
    w = out.write
    w(f"# {t['title']}: {t['arch']}, weights {t['weights']}\n\n")
    if t["synthetic_weights"]:
        w(f"> **{t['banner']}**\n\n")
    w(f"{t['metric']}. Generated {t['created']}.\n\n")
    cols = t["columns"] + ["Avg"]
    w("| Method | " + " | ".join(cols) + " |\n")
    w("|---|" + "---:|" * len(cols) + "\n")
    for row in t["rows"]:
        cells = [_fmt(row["mIoU"][d]) for d in t["datasets"]] + [_fmt(row["avg"])]
        label = row["title"] + (" (SYNTHETIC WEIGHTS)" if t["synthetic_weights"] else "")
        w(f"| {label} | " + " | ".join(cells) + " |\n")
    w("\n")
    w(f"Avg: mean over the {len(t['datasets'])} datasets of this table (the papers average "
      "their 8 benchmarks: VOC21, Context60, Object, VOC20, Context59, Stuff, City, ADE).\n\n")
    # images per dataset
    w("Images evaluated:\n\n")
    first = next(iter(t["details"].values()))
    for d in t["datasets"]:
        e = first.get(d) or next((v[d] for v in t["details"].values() if d in v), None)
        if e is None:
            continue
        part = "" if e["num_images"] == e["total_images"] else \
            f" (first {e['num_images']} of {e['total_images']}: --limit)"
        n = e["evaluated"]
        w(f"- {_column(d)}: {n} image{'' if n == 1 else 's'}{part}\n")
    failed = [(m, d, e["failed"]) for m, v in t["details"].items() for d, e in v.items()
              if e["failed"]]
    for m, d, f in failed:
        w(f"- {m} / {_column(d)}: {len(f)} images failed and are not counted\n")
    if t["overrides"]:
        w("\nSettings overridden for every run (not the official presets): " +
          ", ".join(f"`{k}={json.dumps(v)}`" for k, v in t["overrides"].items()) + "\n")
    if t.get("shared_trunk") is not None:
        w("\nFrozen trunk: " + ("shared by the methods with the same windows (each image's "
                               "frozen blocks run once for them; outputs identical to separate "
                               "runs)" if t["shared_trunk"] else
                               "not shared (`--no-shared-trunk`)") + ".\n")
    w("\n## Settings used\n\n")
    w("| Method | Dataset | short side | crop / stride | logit scale | prob_thd | area_thd | "
      "PAMR | templates | source |\n|---|---|---:|---|---:|---:|---:|---:|---|---|\n")
    for m, per in t["settings"].items():
        for d in t["datasets"]:
            s = per.get(d)
            if s is None:
                continue
            seg = (s.get("segmenter") or {}).get("settings")
            pre = s["inputs"].get("preset_settings") or {}
            src = (pre.get("source") or "method defaults").replace("|", "/")
            if seg is None:  # model never built in this output: show the preset + overrides
                seg = {**(s["inputs"].get("method_defaults") or {}), **pre,
                       **s["inputs"].get("overrides", {})}
            crop = "whole" if not seg.get("crop") else f"{seg.get('crop')} / {seg.get('stride')}"
            tpl = seg.get("templates", "openai_imagenet")
            tpl = tpl if isinstance(tpl, str) else f"{len(tpl)} custom"
            w(f"| {method_title(m)} | {_column(d)} | {seg.get('short_side')} | {crop} | "
              f"{seg.get('logit_scale')} | {seg.get('prob_thd')} | {seg.get('area_thd')} | "
              f"{seg.get('pamr_steps') or 'off'} | {tpl} | {src} |\n")
    w("\nEvery setting (and per-class IoU): `results.json`, `settings.json`.\n")
    if t.get("command"):
        w(f"\nCommand: `{t['command']}`\n")
    return out.getvalue()


def render_csv(t: dict) -> str:
    out = io.StringIO()
    wr = csv.writer(out, lineterminator="\n")
    wr.writerow(["method"] + t["columns"] + ["Avg", "arch", "weights"])
    for row in t["rows"]:
        wr.writerow([row["title"]] + ["" if row["mIoU"][d] is None else f"{row['mIoU'][d]:.2f}"
                                      for d in t["datasets"]] +
                    ["" if row["avg"] is None else f"{row['avg']:.2f}", t["arch"],
                     t["weights"] + (" (SYNTHETIC WEIGHTS)" if t["synthetic_weights"] else "")])
    return out.getvalue()


def write_outputs(t: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "results.md", "csv": out / "results.csv", "json": out / "results.json",
             "settings": out / "settings.json"}
    paths["md"].write_text(render_markdown(t), encoding="utf-8")
    paths["csv"].write_text(render_csv(t), encoding="utf-8")
    body = {k: v for k, v in t.items() if k != "settings"}
    paths["json"].write_text(json.dumps(_jsonable(body), indent=1), encoding="utf-8")
    settings = {"synthetic_weights": t["synthetic_weights"], "banner": t["banner"],
                "arch": t["arch"], "weights": t["weights"], "shared_trunk": t.get("shared_trunk"),
                "runs": t["settings"]}
    paths["settings"].write_text(json.dumps(_jsonable(settings), indent=1), encoding="utf-8")
    return paths


# ---------------------------------------------------------------------------------------------
# CLI

def _split_list(values: Sequence[str] | None) -> list[str]:
    out = []
    for v in values or []:
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return out


def _parse_set(items: Sequence[str] | None) -> dict:
    """``--set KEY=VALUE`` as the other subcommands parse it (JSON values where they parse)."""
    from .cli import parse_sets
    try:
        return parse_sets(items)
    except TfovssError as exc:
        raise BenchmarkError(str(exc)) from exc


def _parse_data(items: Sequence[str] | None) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise BenchmarkError(f"--data expects NAME=DIR, got {item!r}")
        k, v = item.split("=", 1)
        out[canonical_name(k)] = v
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", nargs="+", required=True, metavar="METHOD",
                   help="methods (space or comma separated), e.g. sclip naclip clearclip")
    p.add_argument("--datasets", nargs="+", required=True, metavar="DATASET",
                   help="benchmarks: voc21 context60 coco_object voc20 context59 coco_stuff "
                        "cityscapes ade20k ade847 context459, 'all' (the papers' 8), or "
                        "fiftyone:NAME for a FiftyOne dataset with ground truth (see --gt-field)")
    p.add_argument("--arch", default="ViT-B/16", help="CLIP architecture (default ViT-B/16)")
    p.add_argument("--pretrained", default="openai",
                   help="open_clip tag, local weights file, 'synthetic:seedN' (with "
                        "--synthetic-weights-script) or 'tiny:seedN' (tiny random CLIP)")
    p.add_argument("--root", help="folder holding the datasets in their standard layouts")
    p.add_argument("--data", action="append", metavar="NAME=DIR",
                   help="folder of one dataset (overrides --root for it); repeatable")
    p.add_argument("--split", default="val", help="split (default val)")
    p.add_argument("--limit", type=int, help="evaluate only the first N images of each dataset")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--out", default="tfovss-benchmark", help="output folder (default ./tfovss-benchmark)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                   help="override a setting for every run (e.g. templates=single); repeatable")
    p.add_argument("--coco-object-source", choices=("auto", "stuffthingmaps", "instances"),
                   default="auto", help="COCO-Object ground truth route (default auto)")
    p.add_argument("--coco-crowd", choices=("background", "ignore", "thing"), default=None,
                   help="instances route: crowd regions (default background, as the official maps)")
    p.add_argument("--coco-overlap", choices=("order", "area"), default=None,
                   help="instances route: overlapping instances (default order)")
    p.add_argument("--synthetic-weights-script", metavar="PATH",
                   help=f"make_weights.py for --pretrained synthetic:seedN (or ${ENV_SYNTHETIC_SCRIPT})")
    p.add_argument("--gt-field", default="ground_truth",
                   help="ground-truth field of fiftyone:NAME datasets (default ground_truth)")
    p.add_argument("--fiftyone", action="store_true",
                   help="also store every run as an evaluation in a FiftyOne dataset")
    p.add_argument("--save-masks", action="store_true", help="keep predicted masks under runs/")
    p.add_argument("--recompute", action="store_true", help="ignore stored per-image results")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--no-shared-trunk", action="store_true",
                   help="run each (method, dataset) on its own; by default the methods of a "
                        "dataset run together and those with the same windows share one pass of "
                        "the frozen blocks per window batch (identical outputs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers ``tfovss benchmark`` on a subparsers object of the main CLI."""
    p = subparsers.add_parser(
        "benchmark", help="evaluate methods on the standard benchmarks (papers' protocol and tables)",
        description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run_from_args)
    return p


def _importers(args) -> dict:
    names = _split_list(args.datasets)
    if "all" in names:
        names = [n for n in names if n != "all"] + [n for n in PAPER_BENCHMARKS if n not in names]
    data = _parse_data(args.data)
    importers = {}
    errors = []
    for raw in dict.fromkeys(names):
        if raw.startswith("fiftyone:"):
            fob = _plugin_benchmarks()
            imp = fob.FiftyOneImporter(raw.split(":", 1)[1], gt_field=args.gt_field)
            importers[imp.name] = imp
            continue
        try:
            name = canonical_name(raw)
            root = data.get(name, args.root)
            if root is None:
                raise DatasetLayoutError(f"{name}: no --root and no --data {name}=DIR given")
            opts = {}
            if name == "coco_object":
                opts["coco_object_source"] = args.coco_object_source
                if args.coco_crowd:
                    opts["crowd"] = args.coco_crowd
                if args.coco_overlap:
                    opts["overlap"] = args.coco_overlap
            imp = get_importer(name, root, args.split, **opts)
            imp.check(limit=args.limit)
            importers[name] = imp
        except DatasetLayoutError as e:
            errors.append(str(e))
    if errors:
        raise DatasetLayoutError("\n\n".join(errors))
    return importers


def _plugin_benchmarks():
    """``plugin.benchmarks`` (the FiftyOne side), from the repo checkout or FiftyOne's plugins dir."""
    try:
        import plugin.benchmarks as pb  # noqa: F401
        return pb
    except ImportError:
        pass
    candidates = [Path(__file__).resolve().parent.parent]
    for d in filter(None, os.environ.get("FIFTYONE_PLUGINS_DIR", "").split(os.pathsep)):
        candidates += [Path(d)] + [p.parent for p in Path(d).glob("*/fiftyone.yml")]
    for c in candidates:
        if (c / "plugin" / "benchmarks.py").is_file():
            sys.path.insert(0, str(c))
            import plugin.benchmarks as pb
            return pb
    raise BenchmarkError("--fiftyone needs the tfovss FiftyOne plugin (plugin/benchmarks.py): "
                         "run from the repository or set FIFTYONE_PLUGINS_DIR to the folder "
                         "that holds it, and install fiftyone")


def run_from_args(args) -> int:
    log = print
    try:
        if args.threads:
            import torch
            torch.set_num_threads(max(1, args.threads))
        methods = _split_list(args.methods)
        from .methods import list_methods
        known = set(list_methods(include_composed=True))
        unknown = [m for m in methods if m.split("+")[0] not in known and m not in known]
        if unknown:
            raise BenchmarkError(f"unknown method(s) {unknown}; available: {sorted(known)}")
        overrides = _parse_set(args.overrides)
        weights = resolve_weights(args.arch, args.pretrained, args.synthetic_weights_script)
        importers = _importers(args)
        out = Path(args.out)
        runner = BenchmarkRunner(methods, importers, weights, out, limit=args.limit,
                                 device=args.device, overrides=overrides,
                                 save_masks=args.save_masks or args.fiftyone,
                                 recompute=args.recompute, progress=not args.no_progress, log=log,
                                 shared_trunk=not args.no_shared_trunk)
        if weights.synthetic:
            log(f"NOTE: {SYNTHETIC_BANNER}")
        results = runner.run()
    except (TfovssError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"tfovss benchmark: error: {msg}", file=sys.stderr)
        return 2
    command = "tfovss benchmark " + " ".join(_quote(a) for a in (getattr(args, "_argv", None) or []))
    tables = build_tables(results, weights, limit=args.limit, overrides=overrides,
                          command=command.strip() if getattr(args, "_argv", None) else "",
                          shared_trunk=runner.shared_trunk)
    paths = write_outputs(tables, out)
    computed = sum(r.computed for r in results)
    resumed = sum(r.resumed for r in results)
    log("")
    log(render_markdown(tables).split("\n## Settings used")[0].rstrip())
    log("")
    if computed == 0:
        log(f"Nothing recomputed: all {resumed} image results were resumed from {out / 'runs'}"
            + ("" if runner.model_loaded else "; the model was not loaded") + ".")
    else:
        log(f"Computed {computed} images, resumed {resumed}.")
    log("Wrote " + ", ".join(str(p) for p in paths.values()))
    if args.fiftyone:
        try:
            pb = _plugin_benchmarks()
            for line in pb.store_runs(results, tables, progress=not args.no_progress):
                log(line)
        except (TfovssError, ImportError, ValueError) as e:
            print(f"tfovss benchmark: error: --fiftyone: {e}", file=sys.stderr)
            return 2
    failed = sum(len(r.failed) for r in results)
    return 1 if failed else 0


def _quote(a: str) -> str:
    return a if re.match(r"^[A-Za-z0-9_./:=+,@-]+$", a) else json.dumps(a)


_DESCRIPTION = """\
Evaluate methods on the standard OVSS benchmarks with each method's official settings
and MMSegmentation's mIoU; writes the papers' table (Markdown, CSV, JSON) and the
settings used. Resumable: finished images are never recomputed."""
_EPILOG = """example:
  tfovss benchmark --methods sclip naclip --datasets voc21 ade20k --arch ViT-B/16 \\
      --pretrained openai --root /data --limit 100 --out bench"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tfovss benchmark", description=_DESCRIPTION, epilog=_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args._argv = argv
    return run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
