"""Several methods compared on the same samples (the SDK behind the "Compare OVSS methods"
operator): every method pre-labels its own field in one pass on a shared frozen CLIP trunk
(:func:`tfovss_fiftyone.prelabel.prelabel_many`), then, given a ground-truth field, each field is evaluated
(:func:`tfovss_fiftyone.evaluation.run_evaluation`, key ``<eval_prefix><field>``), so the "OVSS
evaluations" panel lists the runs and compares any two class by class.

    from tfovss_fiftyone.compare import compare_methods
    out = compare_methods(dataset, ["sclip", "clearclip", "naclip"],
                          classes=dataset.mask_targets["ground_truth"], gt_field="ground_truth",
                          settings={"short_side": 336, "crop": 224, "stride": 112})
    for row in out.rows():
        print(row["method"], row["field"], row["mIoU"])
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

__all__ = ["CompareReport", "compare_methods", "method_field"]


def method_field(prefix: str, method: str) -> str:
    """The output field of ``method``: ``ovss_`` + ``sclip+lht`` -> ``ovss_sclip_lht``."""
    return f"{prefix}{re.sub(r'[^A-Za-z0-9_]+', '_', method)}"


@dataclass
class CompareReport:
    prelabel: object                     # tfovss_fiftyone.prelabel.MultiPrelabelReport
    gt_field: str | None = None
    #: ``{field: {"eval_key", "mIoU", "mAcc", "aAcc", "num_evaluated"}}`` (fractions in [0, 1],
    #: NaN where undefined), or ``{field: {"eval_key", "error"}}`` where it could not run
    evaluations: dict = field(default_factory=dict)

    def rows(self) -> list[dict]:
        """One row per method, in the order given."""
        out = []
        for f, r in self.prelabel.reports.items():
            ev = self.evaluations.get(f, {})
            out.append({"method": self.prelabel.methods[f], "field": f,
                        "num_labelled": r.num_labelled, "num_skipped": r.num_skipped,
                        "num_failed": r.num_failed, "settings_hash": r.settings_hash,
                        "eval_key": ev.get("eval_key"), "mIoU": ev.get("mIoU"),
                        "mAcc": ev.get("mAcc"), "aAcc": ev.get("aAcc"),
                        "error": ev.get("error")})
        return out


def compare_methods(samples, methods: Sequence[str], *, classes, field_prefix: str = "ovss_",
                    gt_field: str | None = None, eval_prefix: str = "eval_",
                    background: str = "class", ignore_index: int = 255,
                    overwrite_evaluations: bool = False,
                    progress: Callable[[int, int, str], None] | None = None,
                    **prelabel_kwargs) -> CompareReport:
    """Pre-labels ``methods`` into ``<field_prefix><method>`` with one shared trunk and, when
    ``gt_field`` is given, evaluates each field against it.

    Args:
        methods: method names (``tfovss_core.list_methods()``, add-ons as ``"sclip+lht"``)
        classes: the vocabulary, as for :func:`tfovss_fiftyone.prelabel.prelabel`
        gt_field: a Segmentation field with mask_targets; ``None``: pre-label only
        eval_prefix: evaluation keys are ``<eval_prefix><field>``
        background, ignore_index: the evaluation protocol (see :func:`run_evaluation`)
        overwrite_evaluations: replace evaluations with the same keys (else an error, raised
            before anything is written)
        prelabel_kwargs: the other arguments of :func:`tfovss_fiftyone.prelabel.prelabel_many`
            (``arch``, ``pretrained``, ``model``, ``settings``, ``method_options``,
            ``overwrite``, ``output_dir``, ``executor`` / ``ray_address`` to run the model pass
            on Ray...)

    Returns:
        a :class:`CompareReport`. An evaluation that cannot run (e.g. a vocabulary class the
        ground truth does not name) is reported in its row; the labels stay.

    Raises:
        PrelabelInputError / EvaluationInputError / tfovss_core errors: before anything is written
    """
    from tfovss_fiftyone.evaluation import (BACKGROUND_MODES, EvaluationInputError, check_segmentation_field,
                             run_evaluation)
    from tfovss_fiftyone.prelabel import PrelabelInputError, prelabel_many

    methods = list(dict.fromkeys(str(m).strip() for m in methods if str(m).strip()))
    if not methods:
        raise PrelabelInputError("no methods chosen: pick at least one")
    fields = {m: method_field(field_prefix, m) for m in methods}
    keys = {}
    if gt_field:
        check_segmentation_field(samples, gt_field, "ground-truth")
        if gt_field in fields.values():
            raise EvaluationInputError(f"the ground truth '{gt_field}' is also an output field; "
                                       "choose another field prefix")
        if background not in BACKGROUND_MODES:
            raise EvaluationInputError(f"background must be one of {BACKGROUND_MODES}, "
                                       f"got {background!r}")
        keys = {f: f"{eval_prefix}{f}" for f in fields.values()}
        existing = sorted(set(keys.values()) & set(samples._dataset.list_evaluations()))
        if existing and not overwrite_evaluations:
            raise EvaluationInputError(f"evaluations {existing} already exist; choose another "
                                       "evaluation prefix or allow replacing them")

    def stage(name):
        if progress is None:
            return None
        return lambda done, total, label=None: progress(done, total, f"{name}: {label or ''}")

    many = prelabel_many(samples, fields, classes=classes, progress=stage("pre-label"),
                         **prelabel_kwargs)
    report = CompareReport(prelabel=many, gt_field=gt_field or None)
    evaluate_progress = stage("evaluate")
    for n, (f, key) in enumerate(keys.items(), 1):
        try:
            res = run_evaluation(samples, f, gt_field, key, ignore_index=ignore_index,
                                 background=background, overwrite=overwrite_evaluations)
        except EvaluationInputError as e:
            report.evaluations[f] = {"eval_key": key, "error": str(e)}
        else:
            s = res.metrics_summary
            report.evaluations[f] = {"eval_key": key, "mIoU": res.mIoU, "mAcc": res.mAcc,
                                     "aAcc": res.aAcc, "num_evaluated": s.get("num_evaluated")}
        if evaluate_progress is not None:
            evaluate_progress(n, len(keys), f)
    return report
