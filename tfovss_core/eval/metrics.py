"""Semantic-segmentation metrics exactly as MMSegmentation's ``IoUMetric`` accumulates them.

Intersections and unions are summed over the whole dataset (not averaged per image); pixels whose
ground truth equals ``ignore_index`` are dropped; every other pixel must have its values in ``0..num_classes-1``
(out-of-range input is refused rather than scored differently from MMSeg); a class with a zero union (absent from both
prediction and ground truth everywhere) gets IoU NaN and is skipped by the mean.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SegmentationMetric:
    """Accumulates a ``num_classes x num_classes`` confusion matrix (rows: ground truth)."""

    num_classes: int
    ignore_index: int = 255
    confusion: np.ndarray = field(init=False)

    def __post_init__(self):
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """Adds one image; returns that image's own confusion matrix."""
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}; "
                             "resize the prediction to the ground-truth resolution first")
        cm = image_confusion(pred, gt, self.num_classes, self.ignore_index)
        self.confusion += cm
        return cm

    def merge(self, other: "SegmentationMetric") -> None:
        self.confusion += other.confusion

    def compute(self) -> dict:
        return metrics_from_confusion(self.confusion)


def image_confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int,
                    ignore_index: int | None = 255) -> np.ndarray:
    """Confusion matrix of one image (``cm[g, p]`` = pixels of class g predicted as p).

    Pixels with ``gt == ignore_index`` are skipped. Every other pixel must have its ground truth
    and its prediction in ``0..num_classes-1``: MMSeg would still count an out-of-range
    prediction in the ground-truth area (a miss), which a K x K matrix cannot hold, so such input
    is refused instead of being scored differently. Map unknown prediction values to a class of
    their own first (the FiftyOne evaluation does).
    """
    gt = gt.astype(np.int64, copy=False).ravel()
    pred = pred.astype(np.int64, copy=False).ravel()
    scored = np.ones_like(gt, dtype=bool) if ignore_index is None else gt != ignore_index
    bad_gt = scored & ((gt < 0) | (gt >= num_classes))
    bad_pred = scored & ((pred < 0) | (pred >= num_classes))
    if bad_gt.any() or bad_pred.any():
        what = []
        if bad_gt.any():
            what.append(f"ground-truth values {sorted(set(gt[bad_gt].tolist()))[:5]}")
        if bad_pred.any():
            what.append(f"predicted values {sorted(set(pred[bad_pred].tolist()))[:5]}")
        raise ValueError(f"{' and '.join(what)} outside 0..{num_classes - 1} on scored pixels "
                         f"(ignore_index={ignore_index})")
    idx = gt[scored] * num_classes + pred[scored]
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _area_terms(confusion: np.ndarray):
    """MMSeg's ``intersect_and_union`` terms from a confusion matrix (all values in range)."""
    intersect = np.diag(confusion).astype(np.float64)
    area_gt = confusion.sum(axis=1).astype(np.float64)
    area_pred = confusion.sum(axis=0).astype(np.float64)
    union = area_pred + area_gt - intersect
    return intersect, union, area_pred, area_gt


def metrics_from_confusion(confusion: np.ndarray) -> dict:
    """mIoU, per-class IoU/accuracy, aAcc and mAcc (fractions in [0, 1], NaN where undefined)."""
    intersect, union, _, area_gt = _area_terms(np.asarray(confusion))
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersect / union, np.nan)
        acc = np.where(area_gt > 0, intersect / area_gt, np.nan)
        total = area_gt.sum()
        aacc = float(intersect.sum() / total) if total > 0 else float("nan")
    return {
        "mIoU": _nanmean(iou),
        "mAcc": _nanmean(acc),
        "aAcc": aacc,
        "IoU": iou,
        "Acc": acc,
        "intersect": intersect,
        "union": union,
        "area_gt": area_gt,
    }


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")
