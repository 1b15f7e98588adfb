"""FiftyOne side of the built-in benchmarks.

* :func:`load_benchmark_dataset`: a FiftyOne dataset of a benchmark read by the core importers
  (:mod:`tfovss_core.eval.datasets`): images, ground truth with the benchmark's label rule applied
  (``ground_truth``, ``mask_targets`` set, ignore value left out of the targets), one sample per
  benchmark image keyed by ``tfovss_id``. Created once, completed on later calls (``--limit``
  grows), never duplicated.
* :func:`store_runs`: what ``tfovss benchmark --fiftyone`` calls after the runs: for each
  (method, dataset) run, its predicted masks become an ``fo.Segmentation`` field and the run is
  stored as an MMSeg-exact evaluation (:func:`tfovss_fiftyone.evaluation.run_evaluation`), so the plugin's
  evaluations panel and the App's evaluation tools show it.
* :class:`FiftyOneImporter`: a user's own dataset already in FiftyOne, with ground-truth masks and
  ``mask_targets``, used as a benchmark (``tfovss benchmark --datasets fiftyone:NAME``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

import fiftyone as fo

__all__ = ["load_benchmark_dataset", "benchmark_dataset_name", "store_runs", "store_run",
           "FiftyOneImporter", "GT_FIELD", "ID_FIELD"]

GT_FIELD = "ground_truth"
ID_FIELD = "tfovss_id"


def benchmark_dataset_name(importer, prefix: str = "tfovss") -> str:
    return f"{prefix}-{importer.name}-{importer.split}"


def load_benchmark_dataset(importer, name: str | None = None, limit: int | None = None,
                           gt_field: str = GT_FIELD, persistent: bool = True,
                           batch_size: int = 32) -> "fo.Dataset":
    """The FiftyOne dataset of ``importer``'s first ``limit`` images (created or completed)."""
    name = name or benchmark_dataset_name(importer)
    if fo.dataset_exists(name):
        ds = fo.load_dataset(name)
    else:
        ds = fo.Dataset(name)
    ds.persistent = persistent
    have = set(ds.distinct(ID_FIELD)) if ds.has_sample_field(ID_FIELD) else set()
    batch = []
    for sample in importer.samples(limit=limit, skip=have):
        batch.append(fo.Sample(filepath=str(Path(sample.image_path).resolve()),
                               **{ID_FIELD: sample.id,
                                  gt_field: fo.Segmentation(mask=sample.load_gt())}))
        if len(batch) >= batch_size:
            ds.add_samples(batch, progress=False)
            batch = []
    if batch:
        ds.add_samples(batch, progress=False)
    targets = dict(ds.mask_targets or {})
    targets[gt_field] = {i: n for i, n in enumerate(importer.class_names())}
    ds.mask_targets = targets
    info = dict(ds.info or {})
    info["tfovss_benchmark"] = {k: v for k, v in importer.info().items()}
    ds.info = info
    ds.save()
    return ds


def _tag(text: str) -> str:
    t = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    return t if t and not t[0].isdigit() else f"r_{t}"


def run_tag(method: str, arch: str, synthetic: bool) -> str:
    """``sclip_vit_b_16`` (``..._synthetic`` for synthetic weights): field and eval-key stem."""
    return _tag(f"{method}_{arch}") + ("_synthetic" if synthetic else "")


def store_run(ds, result, tables: dict, *, id_field: str = ID_FIELD, gt_field: str = GT_FIELD,
              gt_classes: dict | None = None) -> tuple[str, str, float]:
    """Stores one benchmark run in ``ds``; returns (prediction field, eval key, mIoU %)."""
    from tfovss_fiftyone.evaluation import run_evaluation
    from tfovss_core.eval.benchmark import predicted_mask_path

    spec = result.spec
    imp = spec.importer
    ids = imp.ids() if tables.get("limit") is None else imp.ids()[: tables["limit"]]
    masks = {sid: predicted_mask_path(spec.dir, sid) for sid in ids}
    masks = {sid: p for sid, p in masks.items() if p.is_file()}
    if not masks:
        raise ValueError(f"{spec.method} / {spec.dataset}: no predicted masks in {spec.dir}")
    tag = run_tag(spec.method, tables["arch"], tables["synthetic_weights"])
    field, eval_key = f"pred_{tag}", f"eval_{tag}"
    ds.select_by(id_field, list(masks)).set_values(
        field, {sid: fo.Segmentation(mask_path=str(p.resolve())) for sid, p in masks.items()},
        key_field=id_field)
    names = imp.class_names()
    targets = dict(ds.mask_targets or {})
    targets[field] = {i: n for i, n in enumerate(names)}
    ds.mask_targets = targets
    info = dict(ds.info or {})
    runs = dict(info.get("tfovss_runs") or {})
    runs[eval_key] = {
        "method": spec.method, "arch": tables["arch"], "weights": tables["weights"],
        "synthetic_weights": tables["synthetic_weights"], "settings_key": spec.key,
        "run_dir": str(spec.dir), "num_images": len(masks),
        "mIoU_benchmark": None if result.metrics is None else 100 * result.metrics["mIoU"],
        "settings": _run_settings(result),
    }
    if tables["synthetic_weights"]:
        runs[eval_key]["label"] = "SYNTHETIC WEIGHTS"
    info["tfovss_runs"] = runs
    ds.info = info
    ds.save()
    view = ds.select_by(id_field, list(masks))
    classes = gt_classes if gt_classes is not None else {i: n for i, n in enumerate(names)}
    res = run_evaluation(view, field, gt_field, eval_key, classes=classes,
                         ignore_index=imp.ignore_index, background="class", overwrite=True)
    miou = _miou_pct(res)
    return field, eval_key, miou


def _run_settings(result) -> dict:
    """The settings the run's segmenter used (or the preset's, when it was never built here)."""
    seg = (result.describe or {}).get("settings")
    if seg:
        return dict(seg)
    inputs = result.spec.hash_inputs
    return {**(inputs.get("method_defaults") or {}), **(inputs.get("preset_settings") or {}),
            **(inputs.get("overrides") or {})}


def _miou_pct(res) -> float:
    return 100 * float(res.mIoU)  # OVSSEvaluationResults: fractions


def store_runs(results: Sequence, tables: dict, progress: bool = False, *,
               prefix: str = "tfovss", persistent: bool = True) -> Iterator[str]:
    """Stores every run of ``tfovss benchmark`` in FiftyOne; yields one log line per run.

    Benchmark images go to the dataset ``<prefix>-<benchmark>-<split>`` (created or completed);
    runs on a ``fiftyone:NAME`` dataset are stored in that dataset.
    """
    by_dataset: dict[str, list] = {}
    for r in results:
        by_dataset.setdefault(r.spec.dataset, []).append(r)
    for name, runs in by_dataset.items():
        imp = runs[0].spec.importer
        if isinstance(imp, FiftyOneImporter):
            ds, id_field, gt_field = imp.dataset, "id", imp.gt_field
            gt_classes = imp.targets
        else:
            ds = load_benchmark_dataset(imp, benchmark_dataset_name(imp, prefix),
                                        limit=tables.get("limit"), persistent=persistent)
            id_field, gt_field, gt_classes = ID_FIELD, GT_FIELD, None
        for r in runs:
            field, key, miou = store_run(ds, r, tables, id_field=id_field, gt_field=gt_field,
                                         gt_classes=gt_classes)
            ours = None if r.metrics is None else 100 * r.metrics["mIoU"]
            label = " [SYNTHETIC WEIGHTS]" if tables["synthetic_weights"] else ""
            yield (f"FiftyOne: dataset '{ds.name}': {r.spec.method} -> field '{field}', "
                   f"evaluation '{key}', mIoU {miou:.2f}" +
                   (f" (benchmark table {ours:.2f})" if ours is not None else "") + label)


# ---------------------------------------------------------------------------------------------
# a user's own FiftyOne dataset as a benchmark

class FiftyOneImporter:
    """A FiftyOne dataset (or view) with ``fo.Segmentation`` ground truth, as a benchmark.

    Classes come from ``classes`` (``{value: name}``) or the GT field's ``mask_targets`` or the
    dataset's ``default_mask_targets``; their values are remapped to ``0..K-1`` in value order
    (the order the segmenter is given the names), every other value (and ``ignore_index``) is not
    scored. A class named "background" at value 0 marks a dataset with background. No preset
    applies: methods run with their default settings (``--set`` to change them).
    """

    preset_name = None

    def __init__(self, dataset, gt_field: str = GT_FIELD, classes: dict | None = None,
                 ignore_index: int = 255, split: str = "all"):
        from tfovss_core.eval.datasets import DatasetLayoutError

        if isinstance(dataset, str):
            if not fo.dataset_exists(dataset):
                raise DatasetLayoutError(f"fiftyone:{dataset}: no FiftyOne dataset of that name")
            dataset = fo.load_dataset(dataset)
        self.view = dataset
        self.dataset = dataset._dataset if hasattr(dataset, "_dataset") else dataset
        self.gt_field = gt_field
        self.split = split
        self.name = f"fiftyone:{self.dataset.name}"
        if not self.dataset.has_sample_field(gt_field):
            raise DatasetLayoutError(f"{self.name}: no field '{gt_field}' (use --gt-field)")
        targets = classes or (self.dataset.mask_targets or {}).get(gt_field) \
            or self.dataset.default_mask_targets
        if not targets:
            raise DatasetLayoutError(
                f"{self.name}: field '{gt_field}' has no mask_targets; set "
                f"dataset.mask_targets['{gt_field}'] = {{value: name}} first")
        self.targets = {int(k): str(v) for k, v in sorted(targets.items(), key=lambda kv: int(kv[0]))}
        self.values = list(self.targets)
        self.num_classes = len(self.values)
        self.ignore_index = int(ignore_index)
        if self.ignore_index in self.targets:
            raise DatasetLayoutError(f"{self.name}: ignore_index {ignore_index} is a class value")
        self.has_background = self.targets.get(0, "").strip().lower() == "background"
        size = max(max(self.values) + 1, self.ignore_index + 1, 256)
        self._lut = np.full(size, self.ignore_index, dtype=np.int64)
        for i, v in enumerate(self.values):
            self._lut[v] = i
        self.reduce_zero_label = False
        self.root = self.dataset.name
        self._ids = None

    def class_names(self) -> list[str]:
        return [self.targets[v] for v in self.values]

    def ids(self) -> list[str]:
        if self._ids is None:
            self._ids = list(self.view.values("id"))
        return self._ids

    def __len__(self) -> int:
        return len(self.ids())

    def check(self, limit: int | None = None) -> None:
        from tfovss_core.eval.datasets import DatasetLayoutError

        ids = self.ids() if limit is None else self.ids()[:limit]
        view = self.dataset.select(ids)
        missing = list(view.match(fo.ViewField(self.gt_field) == None).values("id"))  # noqa: E711
        if missing:
            raise DatasetLayoutError(
                f"{self.name}: {len(missing)} of {len(ids)} samples have no '{self.gt_field}' "
                f"label: {', '.join(missing[:5])}", missing)

    def _remap(self, mask: np.ndarray) -> np.ndarray:
        m = np.asarray(mask)
        if m.ndim == 3:
            raise ValueError("RGB ground-truth masks are not supported; store class indices")
        m = m.astype(np.int64)
        out = np.full(m.shape, self.ignore_index, dtype=np.int64)
        ok = (m >= 0) & (m < len(self._lut))
        out[ok] = self._lut[m[ok]]
        return out.astype(np.uint8 if self.ignore_index <= 255 and self.num_classes <= 255
                          else np.uint16)

    def samples(self, limit: int | None = None, skip=()):
        from tfovss_core.eval.datasets import BenchmarkSample

        skip = set(skip)
        ids = self.ids() if limit is None else self.ids()[:limit]
        todo = [i for i in ids if i not in skip]
        if not todo:
            return
        view = self.dataset.select(todo, ordered=True).select_fields(self.gt_field)
        for s in view.iter_samples():
            label = s[self.gt_field]

            def load(label=label):
                return self._remap(label.get_mask())

            yield BenchmarkSample(s.id, Path(s.filepath), load, None)

    def __iter__(self):
        return self.samples()

    def info(self) -> dict:
        return {"dataset": self.name, "display_name": self.dataset.name, "split": self.split,
                "root": self.dataset.name, "num_samples": len(self), "num_classes": self.num_classes,
                "ignore_index": self.ignore_index, "reduce_zero_label": False,
                "has_background": self.has_background,
                "labels": f"FiftyOne field '{self.gt_field}', mask_targets {self.targets}"}
