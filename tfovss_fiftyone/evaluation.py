"""MMSeg-exact semantic-segmentation evaluation stored as a real FiftyOne evaluation run.

``run_evaluation(samples, pred_field, gt_field, eval_key)`` accumulates one confusion matrix over
the whole collection with :mod:`tfovss_core.eval.metrics` (intersections and unions summed over every
image, ignore index dropped, classes never seen skipped by the mean: exactly MMSegmentation's
``IoUMetric``) and writes a per-sample mIoU and pixel accuracy. It is FiftyOne's own evaluation
framework with a custom method: ``samples.evaluate_segmentations(pred_field, gt_field, eval_key,
method=OVSSEvaluationConfig, ...)`` registers, runs and stores it, so that
``dataset.list_evaluations()``, ``dataset.load_evaluation_results(eval_key)`` and the App's
evaluation tools see it (its type is ``"segmentation"``, its method ``"tfovss"``);
``run_evaluation`` adds input checks with clear messages and ``overwrite``.

Class mapping. The evaluated classes are the ground truth's: ``classes`` if given, else the GT
field's ``mask_targets``, else the dataset's ``default_mask_targets``, else the prediction field's.
Prediction values are mapped to those classes *by name* through the prediction field's own
``mask_targets`` (so a pre-label with its own vocabulary order is scored correctly); a predicted
class name that the ground truth does not know is an error unless ``class_map`` says which
evaluated class it is (``{"ship": "boat"}``; ``None`` or ``""``: no class, every such pixel
counts as wrong), and a predicted value without any name counts as a wrong prediction (it still
costs the ground-truth class its pixel, as in MMSeg). :func:`unmatched_prediction_classes`
lists the names that need a mapping and :func:`suggest_class_map` guesses it (same words
without spaces, ``_`` or ``-``), which the App's evaluate form offers instead of failing.

Background (value 0): ``background="class"`` scores it like any class (Pascal VOC's 21-class
protocol); ``background="ignore"`` drops ground-truth background pixels and leaves class 0 out of
the mean (ADE20K's ``reduce_zero_label`` protocol).
"""
from __future__ import annotations

import logging
import math
import re
from typing import Mapping, Sequence

import numpy as np

import fiftyone.core.fields as fof
import fiftyone.core.labels as fol
from fiftyone.utils.eval.segmentation import (
    SegmentationEvaluation,
    SegmentationEvaluationConfig,
    SegmentationResults,
)

logger = logging.getLogger(__name__)

__all__ = [
    "EvaluationInputError",
    "OVSSEvaluationConfig",
    "OVSSEvaluation",
    "OVSSEvaluationResults",
    "run_evaluation",
    "complete_config",
    "resolve_classes",
    "unmatched_prediction_classes",
    "suggest_class_map",
    "list_ovss_evaluations",
    "BACKGROUND_MODES",
]

METHOD = "tfovss"
BACKGROUND_MODES = ("class", "ignore")
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class EvaluationInputError(ValueError):
    """Bad evaluation input (missing field, wrong label type, unknown classes...)."""


# ---------------------------------------------------------------------------------------------
# input checks and class mapping
# ---------------------------------------------------------------------------------------------

def check_segmentation_field(samples, field: str, role: str) -> None:
    """Raises EvaluationInputError unless ``field`` is a Segmentation field of ``samples``."""
    if not field:
        raise EvaluationInputError(f"no {role} field given")
    schema = samples.get_field_schema(flat=True)
    if field not in schema:
        raise EvaluationInputError(
            f"{role} field '{field}' does not exist on dataset '{samples._dataset.name}'")
    f = schema[field]
    doc_type = getattr(f, "document_type", None)
    if not (isinstance(f, fof.EmbeddedDocumentField) and doc_type is not None
            and issubclass(doc_type, fol.Segmentation)):
        kind = doc_type.__name__ if doc_type is not None else type(f).__name__
        raise EvaluationInputError(
            f"{role} field '{field}' holds {kind}, not Segmentation masks")


def _int_targets(targets: Mapping | None, where: str) -> dict[int, str] | None:
    if not targets:
        return None
    out = {}
    for k, v in targets.items():
        try:
            out[int(k)] = str(v)
        except (TypeError, ValueError):
            raise EvaluationInputError(
                f"{where}: mask target {k!r} is not an integer class value "
                "(RGB mask targets are not supported)") from None
    return out


def field_mask_targets(samples, field: str) -> dict[int, str] | None:
    ds = samples._dataset
    return _int_targets((ds.mask_targets or {}).get(field), f"mask_targets of '{field}'")


def resolve_classes(samples, gt_field: str, pred_field: str | None = None,
                    classes=None) -> dict[int, str]:
    """The ``{value: name}`` table the evaluation scores (see the module docstring)."""
    if classes is not None:
        if isinstance(classes, Mapping):
            table = _int_targets(classes, "classes")
        else:
            classes = list(classes)
            gt_targets = field_mask_targets(samples, gt_field) or _int_targets(
                samples._dataset.default_mask_targets, "default_mask_targets")
            if gt_targets:
                by_name = {_norm(n): v for v, n in gt_targets.items()}
                missing = [c for c in classes if _norm(c) not in by_name]
                if missing:
                    raise EvaluationInputError(
                        f"classes {missing} are absent from the mask_targets of '{gt_field}' "
                        f"(known: {sorted(gt_targets.values())})")
                table = {by_name[_norm(c)]: str(c) for c in classes}
            else:
                table = {i: str(c) for i, c in enumerate(classes)}
        if not table:
            raise EvaluationInputError("the class list is empty")
        return dict(sorted(table.items()))
    for src in (field_mask_targets(samples, gt_field),
                _int_targets(samples._dataset.default_mask_targets, "default_mask_targets"),
                field_mask_targets(samples, pred_field) if pred_field else None):
        if src:
            return dict(sorted(src.items()))
    raise EvaluationInputError(
        f"no class names for '{gt_field}': set dataset.mask_targets['{gt_field}'] (or "
        "default_mask_targets) or pass classes=[...]")


def _norm(name) -> str:
    return " ".join(str(name).strip().lower().split())


def _check_class_map(class_map: Mapping | None, names: Sequence[str]) -> dict[str, str | None]:
    """``class_map`` as ``{normalised predicted name: evaluated name or None}``; a target that
    is not an evaluated class is an error naming it."""
    if not class_map:
        return {}
    known = {_norm(n): n for n in names}
    out: dict[str, str | None] = {}
    bad = []
    for pred_name, target in class_map.items():
        if target is None or not str(target).strip():
            out[_norm(pred_name)] = None
        elif _norm(target) in known:
            out[_norm(pred_name)] = known[_norm(target)]
        else:
            bad.append(f"{pred_name!r} -> {target!r}")
    if bad:
        raise EvaluationInputError(
            f"class_map maps to classes the evaluation does not have: {', '.join(bad)} "
            f"(evaluated classes: {list(names)})")
    return out


def unmatched_prediction_classes(samples, gt_field: str, pred_field: str, classes=None,
                                 class_map: Mapping | None = None) -> list[str]:
    """Class names in the ``mask_targets`` of ``pred_field`` that neither the evaluated classes
    nor ``class_map`` account for (what :func:`run_evaluation` would refuse)."""
    table = resolve_classes(samples, gt_field, pred_field, classes)
    known = {_norm(n) for n in table.values()}
    mapped = {_norm(k) for k in (class_map or {})}
    pred_targets = field_mask_targets(samples, pred_field) or {}
    return sorted({n for n in pred_targets.values()
                   if _norm(n) not in known and _norm(n) not in mapped})


def _squash(name) -> str:
    return re.sub(r"[\s_\-]+", "", str(name).lower())


def suggest_class_map(unmatched: Sequence[str], names: Sequence[str]) -> dict[str, str]:
    """A guess for ``class_map``: a predicted name that equals an evaluated one once spaces,
    ``_`` and ``-`` are dropped ("dining table" -> "diningtable"); names without a match are
    left out (the user fills them in)."""
    by_squashed = {_squash(n): n for n in names}
    return {u: by_squashed[_squash(u)] for u in unmatched if _squash(u) in by_squashed}


def _build_luts(table: dict[int, str], pred_targets: dict[int, str] | None, background: str,
                ignore_index: int | None, class_map: Mapping | None = None):
    """Lookup tables value -> evaluation index for GT and prediction masks.

    GT: known values -> 0..C-1; ignore_index, unknown values (and background in "ignore" mode)
    -> -1 (dropped). Prediction: mapped by name through ``pred_targets`` when given, else by
    value; anything else -> C (the "unmapped" column: costs the GT class its pixel, as MMSeg's
    out-of-range predictions do). ``class_map`` renames predicted classes first.
    """
    values = list(table)
    names = [table[v] for v in values]
    C = len(values)
    size = max(max(values) + 1, 256, (ignore_index or 0) + 1)
    if pred_targets:
        size = max(size, max(pred_targets) + 1)
    gt_lut = np.full(size, -1, dtype=np.int64)
    for i, v in enumerate(values):
        gt_lut[v] = i
    if background == "ignore" and 0 in table:
        gt_lut[0] = -1
    if ignore_index is not None and 0 <= ignore_index < size:
        gt_lut[ignore_index] = -1
    pred_lut = np.full(size, C, dtype=np.int64)
    if pred_targets:
        by_name = {_norm(n): i for i, n in enumerate(names)}
        renamed = _check_class_map(class_map, names)
        unknown = sorted({n for n in pred_targets.values()
                          if _norm(n) not in by_name and _norm(n) not in renamed})
        if unknown:
            guess = suggest_class_map(unknown, names)
            hint = f" (e.g. class_map={guess})" if guess else ""
            raise EvaluationInputError(
                f"predicted classes {unknown} are absent from the evaluated classes "
                f"{names}; map them with class_map={{predicted: evaluated}}{hint}, rename "
                "them in mask_targets or pass classes=...")
        for v, n in pred_targets.items():
            if _norm(n) in renamed:
                target = renamed[_norm(n)]
                pred_lut[v] = C if target is None else by_name[_norm(target)]
            else:
                pred_lut[v] = by_name[_norm(n)]
    else:
        for i, v in enumerate(values):
            pred_lut[v] = i
    return gt_lut, pred_lut, values, names


def _apply_lut(mask: np.ndarray, lut: np.ndarray, fill: int) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3:
        raise EvaluationInputError("RGB masks are not supported; store class-index masks")
    m = m.astype(np.int64, copy=False)
    out = np.full(m.shape, fill, dtype=np.int64)
    ok = (m >= 0) & (m < len(lut))
    out[ok] = lut[m[ok]]
    return out


def _resize_nearest(mask: np.ndarray, shape) -> np.ndarray:
    import cv2

    return cv2.resize(np.asarray(mask).astype(np.int32), (shape[1], shape[0]),
                      interpolation=cv2.INTER_NEAREST)


# ---------------------------------------------------------------------------------------------
# FiftyOne run classes
# ---------------------------------------------------------------------------------------------

class OVSSEvaluationConfig(SegmentationEvaluationConfig):
    """Config of an MMSeg-exact evaluation (method ``"tfovss"``), the ``method=`` that
    :func:`run_evaluation` hands to ``samples.evaluate_segmentations``.

    Args:
        pred_field, gt_field: Segmentation fields
        classes: ``[[value, name], ...]`` or ``{value: name}`` evaluated, in order; empty:
            resolved from the fields' mask_targets when the run is registered
        ignore_index: ground-truth value that is not evaluated
        background: ``"class"`` or ``"ignore"``
        compute_sample_miou: whether per-sample fields are written
        prelabel: the settings of the pre-label run that produced ``pred_field`` (if any;
            looked up when the run is registered)
        class_map: ``{predicted name: evaluated name or None}`` for predicted names the
            evaluated classes do not have
        effort: for an evaluation of a pre-label against its annotators' correction (made by
            :func:`tfovss_fiftyone.labelstudio.load_corrections`), the correction-effort
            figures (pixels changed, share kept, per class kept / union pixels); else ``None``
    """

    def __init__(self, pred_field, gt_field, classes=None, ignore_index=255, background="class",
                 compute_sample_miou=True, prelabel=None, class_map=None, effort=None,
                 **kwargs):
        kwargs.pop("compute_dice", None)
        super().__init__(pred_field, gt_field, compute_dice=False, **kwargs)
        if background not in BACKGROUND_MODES:
            raise EvaluationInputError(f"background must be one of {BACKGROUND_MODES}, "
                                       f"got {background!r}")
        if isinstance(classes, Mapping):
            classes = sorted(_int_targets(classes, "classes").items())
        self.classes = [[int(v), str(n)] for v, n in (classes or [])]
        self.ignore_index = ignore_index
        self.background = background
        self.compute_sample_miou = compute_sample_miou
        self.prelabel = prelabel
        self.class_map = {str(k): (None if v is None or not str(v).strip() else str(v))
                          for k, v in (class_map or {}).items()}
        self.effort = dict(effort) if effort else None

    @property
    def method(self):
        return METHOD


def complete_config(samples, config: OVSSEvaluationConfig) -> None:
    """Fills what ``config`` leaves open from ``samples`` (classes from the mask_targets, the
    pre-label run info) and raises :class:`EvaluationInputError` for predicted class names
    that the evaluated classes do not know."""
    if not config.classes:
        table = resolve_classes(samples, config.gt_field, config.pred_field)
        config.classes = [[v, n] for v, n in table.items()]
    _build_luts(dict(config.classes), field_mask_targets(samples, config.pred_field),
                config.background, config.ignore_index, config.class_map)
    if config.prelabel is None:
        config.prelabel = _prelabel_info(samples._dataset, config.pred_field)


class OVSSEvaluation(SegmentationEvaluation):
    """Runs through FiftyOne's ``evaluate_segmentations`` (register, evaluate, save); writes
    ``<eval_key>_miou`` and ``<eval_key>_acc`` per sample."""

    def _sample_fields(self, eval_key):
        if not self.config.compute_sample_miou:
            return []
        return [f"{eval_key}_miou", f"{eval_key}_acc"]

    def register_run(self, samples, key, overwrite=True, cleanup=True):
        # FiftyOne calls this first, with or without a key: bad input fails before a write
        complete_config(samples, self.config)
        super().register_run(samples, key, overwrite=overwrite, cleanup=cleanup)

    def register_samples(self, samples, eval_key):
        if eval_key is None:
            return
        ds = samples._dataset
        for f in self._sample_fields(eval_key):
            if ds.get_field(f) is None:
                ds.add_sample_field(f, fof.FloatField)

    def get_fields(self, samples, eval_key, include_custom_metrics=True):
        return self._sample_fields(eval_key)

    def rename(self, samples, eval_key, new_eval_key):
        ds = samples._dataset
        old = self._sample_fields(eval_key)
        new = self._sample_fields(new_eval_key)
        if old:
            ds.rename_sample_fields(dict(zip(old, new)))
        samples._rename_sidebar_group(eval_key, new_eval_key)

    def cleanup(self, samples, eval_key):
        ds = samples._dataset
        ds.delete_sample_fields(self._sample_fields(eval_key), error_level=1)
        samples._delete_empty_sidebar_group(eval_key)

    def evaluate_samples(self, samples, eval_key=None, mask_targets=None, progress=None):
        """One confusion matrix over ``samples`` (see the module docstring).

        ``mask_targets`` is not used: the classes are the config's ``classes``. ``progress``
        is ``None``/a bool (no report) or a callable ``progress(done, total)``.
        """
        from tfovss_core.eval import metrics as tm

        if mask_targets is not None:
            raise EvaluationInputError("pass the evaluated classes as classes=..., not "
                                       "mask_targets=...")
        cfg = self.config
        pred_field, gt_field = cfg.pred_field, cfg.gt_field
        gt_lut, pred_lut, values, names = _build_luts(
            dict(cfg.classes), field_mask_targets(samples, pred_field), cfg.background,
            cfg.ignore_index, getattr(cfg, "class_map", None))
        C = len(values)
        in_mean = np.array([not (cfg.background == "ignore" and v == 0) for v in values])
        report = progress if callable(progress) else None

        # ground truth outside the compared classes (and the ignore label) is mapped to -1:
        # not scored; predictions no class name maps to land in column C
        metric = tm.SegmentationMetric(num_classes=C + 1, ignore_index=-1)
        per_sample_miou: dict[str, float | None] = {}
        per_sample_acc: dict[str, float | None] = {}
        skipped = {"missing_gt": [], "missing_pred": [], "resized": [], "unreadable": []}

        view = samples.select_fields([gt_field, pred_field])
        total = len(view)
        for n, sample in enumerate(view.iter_samples(progress=False), 1):
            gt_label = sample[gt_field]
            pred_label = sample[pred_field]
            if gt_label is None or not gt_label.has_mask:
                skipped["missing_gt"].append(sample.id)
                continue
            if pred_label is None or not pred_label.has_mask:
                skipped["missing_pred"].append(sample.id)
                continue
            try:
                gt = gt_label.get_mask()
                pred = pred_label.get_mask()
            except Exception as e:  # unreadable mask file
                skipped["unreadable"].append(sample.id)
                logger.warning("sample %s: cannot read mask: %s", sample.id, e)
                continue
            if pred.shape[:2] != gt.shape[:2]:
                skipped["resized"].append(sample.id)
                pred = _resize_nearest(pred, gt.shape[:2])
            g = _apply_lut(gt, gt_lut, -1)
            p = _apply_lut(pred, pred_lut, C)
            cm = metric.update(p, g)
            if cfg.compute_sample_miou:
                m = tm.metrics_from_confusion(cm)
                iou = np.asarray(m["IoU"])[:C][in_mean]
                per_sample_miou[sample.id] = (float(np.nanmean(iou)) if np.isfinite(iou).any()
                                              else None)
                per_sample_acc[sample.id] = None if math.isnan(m["aAcc"]) else float(m["aAcc"])
            if report is not None:
                report(n, total)

        full = metric.confusion
        m = tm.metrics_from_confusion(full)
        iou = np.asarray(m["IoU"])[:C]
        acc = np.asarray(m["Acc"])[:C]
        used_iou = iou[in_mean]
        used_acc = acc[in_mean]
        summary = {
            "mIoU": float(np.nanmean(used_iou)) if np.isfinite(used_iou).any() else float("nan"),
            "mAcc": float(np.nanmean(used_acc)) if np.isfinite(used_acc).any() else float("nan"),
            "aAcc": float(m["aAcc"]),
            "num_samples": int(total),
            "num_evaluated": int(total - sum(len(v) for k, v in skipped.items()
                                             if k != "resized")),
            "num_classes": int(C),
            "num_classes_in_mean": int(in_mean.sum()),
            "ignore_index": cfg.ignore_index,
            "background": cfg.background,
        }
        if eval_key is not None and cfg.compute_sample_miou and per_sample_miou:
            samples.set_values(f"{eval_key}_miou", per_sample_miou, key_field="id")
            samples.set_values(f"{eval_key}_acc", per_sample_acc, key_field="id")
        return OVSSEvaluationResults(
            samples, cfg, eval_key, full[:C, :C], names, backend=self,
            metrics_summary=summary, class_values=values, iou=iou, acc=acc,
            intersect=np.asarray(m["intersect"])[:C], union=np.asarray(m["union"])[:C],
            area_gt=np.asarray(m["area_gt"])[:C], area_pred=full.sum(axis=0)[:C],
            in_mean=in_mean.tolist(), unmapped_pred=full[:C, C], skipped=skipped)


class OVSSEvaluationResults(SegmentationResults):
    """Results of :func:`run_evaluation`.

    Attributes (all JSON-able, kept in the database):
        metrics_summary: ``{"mIoU", "mAcc", "aAcc", "num_samples", "num_evaluated", ...}``
            (fractions in [0, 1]; NaN where undefined)
        class_values, class_names: evaluated classes in order
        iou, acc: per-class IoU / accuracy (``None`` where undefined: class absent everywhere)
        intersect, union, area_gt, area_pred: the MMSeg area terms per class
        in_mean: per class, whether it enters the mean (False for background in "ignore" mode)
        unmapped_pred: per GT class, pixels predicted with a value no class name maps to
        skipped: ``{"missing_gt": [...sample ids], "missing_pred": [...], "resized": [...]}``
        pixel_confusion_matrix: rows GT, columns prediction, over ``class_names``
    """

    def __init__(self, samples, config, eval_key, pixel_confusion_matrix, classes,
                 matches=None, missing=None, custom_metrics=None, backend=None,
                 metrics_summary=None, class_values=None, iou=None, acc=None, intersect=None,
                 union=None, area_gt=None, area_pred=None, in_mean=None, unmapped_pred=None,
                 skipped=None):
        super().__init__(samples, config, eval_key, pixel_confusion_matrix, classes,
                         matches=matches, missing=missing, custom_metrics=custom_metrics,
                         backend=backend)
        self.metrics_summary = dict(metrics_summary or {})
        self.class_names = [str(c) for c in classes]
        self.class_values = [int(v) for v in (class_values or range(len(classes)))]
        self.iou = _jsonable_list(iou)
        self.acc = _jsonable_list(acc)
        self.intersect = _jsonable_list(intersect)
        self.union = _jsonable_list(union)
        self.area_gt = _jsonable_list(area_gt)
        self.area_pred = _jsonable_list(area_pred)
        self.in_mean = [bool(b) for b in (in_mean or [True] * len(classes))]
        self.unmapped_pred = _jsonable_list(unmapped_pred)
        self.skipped = dict(skipped or {})

    # -- convenience -------------------------------------------------------------------------
    @property
    def mIoU(self) -> float:
        return _nan(self.metrics_summary.get("mIoU"))

    @property
    def aAcc(self) -> float:
        return _nan(self.metrics_summary.get("aAcc"))

    @property
    def mAcc(self) -> float:
        return _nan(self.metrics_summary.get("mAcc"))

    def per_class(self) -> list[dict]:
        """``[{"value", "name", "iou", "acc", "in_mean"}]`` in class order."""
        return [{"value": v, "name": n, "iou": _nan(i), "acc": _nan(a), "in_mean": m}
                for v, n, i, a, m in zip(self.class_values, self.class_names, self.iou,
                                         self.acc, self.in_mean)]

    def miou_metrics(self) -> dict:
        """mIoU, mAcc, aAcc and per-class IoU/Acc as a plain dict (NaN where undefined)."""
        return {"mIoU": self.mIoU, "mAcc": self.mAcc, "aAcc": self.aAcc,
                "IoU": {c["name"]: c["iou"] for c in self.per_class()},
                "Acc": {c["name"]: c["acc"] for c in self.per_class()}}

    def print_miou_report(self, digits: int = 2) -> None:
        w = max([len(n) for n in self.class_names] + [5])
        print(f"{'class':<{w}}  {'IoU':>7}  {'Acc':>7}")
        for c in self.per_class():
            flag = "" if c["in_mean"] else "  (not in mean)"
            print(f"{c['name']:<{w}}  {_pct(c['iou'], digits):>7}  {_pct(c['acc'], digits):>7}"
                  f"{flag}")
        print(f"{'mIoU':<{w}}  {_pct(self.mIoU, digits):>7}")
        print(f"{'mAcc':<{w}}  {_pct(self.mAcc, digits):>7}")
        print(f"{'aAcc':<{w}}  {_pct(self.aAcc, digits):>7}")

    @classmethod
    def _from_dict(cls, d, samples, config, eval_key, **kwargs):
        return cls(samples, config, eval_key, d["pixel_confusion_matrix"], d["classes"],
                   matches=None, missing=d.get("missing"),
                   custom_metrics=d.get("custom_metrics"),
                   metrics_summary=d.get("metrics_summary"), class_values=d.get("class_values"),
                   iou=d.get("iou"), acc=d.get("acc"), intersect=d.get("intersect"),
                   union=d.get("union"), area_gt=d.get("area_gt"), area_pred=d.get("area_pred"),
                   in_mean=d.get("in_mean"), unmapped_pred=d.get("unmapped_pred"),
                   skipped=d.get("skipped"), **kwargs)


def _jsonable_list(x):
    if x is None:
        return []
    out = []
    for v in np.asarray(x, dtype=np.float64).tolist():
        out.append(None if (v is None or (isinstance(v, float) and math.isnan(v))) else v)
    return out


def _nan(v) -> float:
    return float("nan") if v is None else float(v)


def _pct(v, digits) -> str:
    return "-" if v is None or math.isnan(v) else f"{100 * v:.{digits}f}"


# ---------------------------------------------------------------------------------------------
# the public entry point
# ---------------------------------------------------------------------------------------------

def run_evaluation(samples, pred_field: str, gt_field: str, eval_key: str, classes=None,
                   ignore_index: int = 255, background: str = "class",
                   compute_sample_miou: bool = True, *, class_map: Mapping | None = None,
                   overwrite: bool = False, progress=None,
                   effort: Mapping | None = None) -> OVSSEvaluationResults:
    """Evaluates ``pred_field`` against ``gt_field`` on ``samples`` MMSeg-style; stores the run.

    The input is checked here (with messages naming the field or class), then the evaluation
    runs through FiftyOne's own ``samples.evaluate_segmentations(method=OVSSEvaluationConfig)``.

    Args:
        samples: a FiftyOne dataset or view
        pred_field, gt_field: ``fo.Segmentation`` fields (masks in the DB or via ``mask_path``)
        eval_key: key of the stored evaluation (``None``: compute only, store nothing)
        classes: ``None`` (from mask_targets, see module doc), a list of names (looked up in the
            GT mask_targets, or values 0..n-1 when the GT has none) or a ``{value: name}`` dict
        ignore_index: GT value that is not evaluated (VOC/ADE: 255)
        background: ``"class"`` (0 is a class) or ``"ignore"`` (GT 0 not evaluated)
        compute_sample_miou: write ``<eval_key>_miou`` / ``<eval_key>_acc`` per sample
        class_map: ``{predicted class name: evaluated class name}`` for predictions whose
            ``mask_targets`` name classes differently (``None``/``""``: counted as wrong)
        overwrite: replace an existing evaluation with the same key (else an error)
        progress: ``None`` or a callable ``progress(done, total)``
        effort: correction-effort figures kept in the run's config (``config.effort``) when
            ``gt_field`` is the annotators' correction of ``pred_field``

    Returns:
        an :class:`OVSSEvaluationResults` (also ``dataset.load_evaluation_results(eval_key)``)

    Raises:
        EvaluationInputError: before anything is written, for a missing field, a non-Segmentation
            field, unknown class names, a bad key or background mode, or an existing key without
            ``overwrite``
    """
    from tfovss_fiftyone.migrations import migrate_legacy_runs

    if background not in BACKGROUND_MODES:
        raise EvaluationInputError(f"background must be one of {BACKGROUND_MODES}, "
                                   f"got {background!r}")
    if eval_key is not None and not _KEY_RE.match(str(eval_key)):
        raise EvaluationInputError(
            f"eval_key {eval_key!r} must be a valid identifier (letters, digits, _)")
    check_segmentation_field(samples, gt_field, "ground-truth")
    check_segmentation_field(samples, pred_field, "prediction")
    if pred_field == gt_field:
        raise EvaluationInputError("prediction and ground-truth fields are the same field")
    dataset = samples._dataset
    migrate_legacy_runs(dataset)  # an overwritten legacy run must load to be cleaned up
    existing = eval_key is not None and eval_key in dataset.list_evaluations()
    if existing and not overwrite:
        raise EvaluationInputError(
            f"an evaluation with key '{eval_key}' already exists; choose another key or "
            "allow overwriting")
    if eval_key is not None and compute_sample_miou and not existing:
        for f in (f"{eval_key}_miou", f"{eval_key}_acc"):
            if f in dataset.get_field_schema():
                raise EvaluationInputError(
                    f"sample field '{f}' exists and does not belong to an evaluation; choose "
                    "another eval_key")
    table = resolve_classes(samples, gt_field, pred_field, classes)
    config = OVSSEvaluationConfig(pred_field, gt_field, classes=sorted(table.items()),
                                  ignore_index=ignore_index, background=background,
                                  compute_sample_miou=bool(compute_sample_miou),
                                  class_map=class_map, effort=effort)
    complete_config(samples, config)  # before an existing run is deleted
    config_kwargs = {k: getattr(config, k) for k in (
        "classes", "ignore_index", "background", "compute_sample_miou", "prelabel", "class_map",
        "effort")}
    if existing:
        # FiftyOne would only overwrite a run with the same fields; a replaced run may differ
        dataset.delete_evaluation(eval_key)
    return samples.evaluate_segmentations(pred_field, gt_field=gt_field, eval_key=eval_key,
                                          method=OVSSEvaluationConfig, progress=progress,
                                          **config_kwargs)


def _prelabel_info(dataset, field: str) -> dict | None:
    """Settings of the pre-label run that wrote ``field``, if this plugin wrote it."""
    from tfovss_fiftyone.prelabel import prelabel_run_info

    try:
        return prelabel_run_info(dataset, field)
    except Exception:  # the run info is a label on the result: never fail the evaluation
        return None


def list_ovss_evaluations(samples) -> list[str]:
    """Keys of the evaluations made by :func:`run_evaluation`."""
    return list(samples.list_evaluations(method=METHOD))


def all_segmentation_evaluations(samples) -> list[str]:
    """Keys of every segmentation evaluation (ours and FiftyOne's own)."""
    return list(samples.list_evaluations(type="segmentation"))
