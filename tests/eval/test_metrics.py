"""mIoU exactly as MMSegmentation's IoUMetric: hand-computed cases, an independent re-statement of
mmseg's ``intersect_and_union`` and FiftyOne's own pixel confusion matrix on the same data."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tfovss_core.eval.metrics import SegmentationMetric, image_confusion, metrics_from_confusion

GT1 = np.array([[0, 0, 1],
                [1, 255, 2]])
PRED1 = np.array([[0, 1, 1],
                  [1, 2, 0]])


def test_hand_computed_single_image():
    m = SegmentationMetric(num_classes=3)
    cm = m.update(PRED1, GT1)
    # (gt, pred) pairs of the 5 kept pixels: (0,0) (0,1) (1,1) (1,1) (2,0); the pixel whose gt is
    # 255 is dropped together with its prediction (2), so class 2 has no predicted pixel at all
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    r = m.compute()
    assert r["intersect"].tolist() == [1, 2, 0]
    assert r["union"].tolist() == [3, 3, 1]
    assert r["area_gt"].tolist() == [2, 2, 1]
    np.testing.assert_allclose(r["IoU"], [1 / 3, 2 / 3, 0.0])
    assert r["mIoU"] == pytest.approx(1 / 3)
    assert r["aAcc"] == pytest.approx(3 / 5)
    np.testing.assert_allclose(r["Acc"], [1 / 2, 1.0, 0.0])
    assert r["mAcc"] == pytest.approx(1 / 2)


def test_class_absent_from_both_is_skipped():
    m = SegmentationMetric(num_classes=5)
    m.update(PRED1, GT1)
    r = m.compute()
    assert np.isnan(r["IoU"][3]) and np.isnan(r["IoU"][4])
    assert np.isnan(r["Acc"][3])
    assert r["mIoU"] == pytest.approx(1 / 3)  # same as with 3 classes
    assert r["mAcc"] == pytest.approx(1 / 2)


def test_predicted_but_absent_class_counts_as_zero():
    gt = np.zeros((2, 2), int)
    pred = np.array([[0, 0], [0, 1]])
    r = metrics_from_confusion(image_confusion(pred, gt, 2))
    assert r["IoU"][0] == pytest.approx(3 / 4)
    assert r["IoU"][1] == 0.0           # union 1 (predicted), intersection 0
    assert r["mIoU"] == pytest.approx(3 / 8)
    assert np.isnan(r["Acc"][1])        # no ground truth of class 1: accuracy undefined
    assert r["mAcc"] == pytest.approx(3 / 4)


def test_dataset_accumulation_differs_from_mean_of_per_image_iou():
    a_gt, a_pred = np.zeros(4, int), np.zeros(4, int)
    b_gt, b_pred = np.array([0, 1, 1, 1]), np.array([1, 1, 1, 1])
    m = SegmentationMetric(2)
    per_image = []
    for pred, gt in ((a_pred, a_gt), (b_pred, b_gt)):
        per_image.append(metrics_from_confusion(m.update(pred, gt))["mIoU"])
    assert per_image == [pytest.approx(1.0), pytest.approx(0.375)]
    r = m.compute()
    # summed confusion [[4, 1], [0, 3]]: IoU0 = 4/5, IoU1 = 3/4
    assert m.confusion.tolist() == [[4, 1], [0, 3]]
    np.testing.assert_allclose(r["IoU"], [0.8, 0.75])
    assert r["mIoU"] == pytest.approx(0.775)
    assert r["mIoU"] != pytest.approx(np.mean(per_image))  # 0.6875


def test_out_of_range_values_and_16bit_ignore():
    gt = np.array([[0, 1, 65535], [2, 2, 1]], dtype=np.uint16)
    pred = np.array([[0, 1, 7], [2, 7, 1]], dtype=np.uint16)
    m = SegmentationMetric(3, ignore_index=65535)
    # MMSeg would count the 7 at a scored pixel as a miss of class 2, which a KxK matrix cannot
    # hold: refused, naming the value; a 7 under the ignore label is fine.
    with pytest.raises(ValueError, match=r"predicted values \[7\] outside 0..2"):
        m.update(pred, gt)
    with pytest.raises(ValueError, match=r"ground-truth values \[9\]"):
        m.update(np.zeros((1, 2), np.uint8), np.array([[9, 0]], np.uint8))
    pred[1, 1] = 0
    cm = m.update(pred, gt)
    assert cm.sum() == 5 and cm.tolist() == [[1, 0, 0], [0, 2, 0], [1, 0, 1]]
    with pytest.raises(ValueError, match="resize the prediction"):
        m.update(pred[:, :2], gt)
    other = SegmentationMetric(3, ignore_index=65535)
    other.update(pred, gt)
    m.merge(other)
    assert (m.confusion == 2 * cm).all()


def _mmseg_intersect_and_union(pred, label, num_classes, ignore_index):
    """MMSeg's ``IoUMetric.intersect_and_union`` restated with numpy histograms."""
    mask = label != ignore_index
    pred, label = pred[mask], label[mask]
    inter = pred[pred == label]
    bins = np.arange(num_classes + 1) - 0.5  # torch.histc(bins=K, min=0, max=K-1) equivalent
    a_inter = np.histogram(inter, bins=bins)[0]
    a_pred = np.histogram(pred, bins=bins)[0]
    a_label = np.histogram(label, bins=bins)[0]
    return a_inter, a_pred + a_label - a_inter, a_pred, a_label


def test_matches_mmseg_formula_on_random_data():
    rng = np.random.default_rng(0)
    k = 7
    m = SegmentationMetric(k)
    tot = np.zeros((4, k))
    for _ in range(5):
        h, w = rng.integers(5, 30, 2)
        gt = rng.integers(0, k, (h, w))
        gt[rng.random((h, w)) < 0.1] = 255
        gt[gt == 3] = 4  # class 3 never in gt ...
        pred = rng.integers(0, k, (h, w))
        pred[pred == 5] = 6  # ... class 5 never predicted
        m.update(pred, gt)
        tot += np.array(_mmseg_intersect_and_union(pred, gt, k, 255))
    r = m.compute()
    iou = tot[0] / tot[1]
    np.testing.assert_allclose(r["IoU"], iou)
    assert r["mIoU"] == pytest.approx(np.nanmean(iou))
    assert r["aAcc"] == pytest.approx(tot[0].sum() / tot[3].sum())
    np.testing.assert_allclose(r["Acc"], tot[0] / tot[3])


@pytest.fixture(scope="module")
def fo():
    # FiftyOne's own configuration (or the plugin tests' isolated one when they run first); the
    # datasets made here are non-persistent and deleted at the end
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    os.environ.setdefault("FIFTYONE_SHOW_PROGRESS_BARS", "false")
    return pytest.importorskip("fiftyone")


def test_against_fiftyone_confusion_matrix(fo):
    """FiftyOne's ``evaluate_segmentations`` pixel confusion matrix (rows gt, columns pred, over
    the mask targets; values outside them, here the 255 ignore label, drop out) summed over the
    dataset equals ours, so the mIoU derived from it is the same number."""
    rng = np.random.default_rng(1)
    k = 5
    names = {i: f"c{i}" for i in range(k)}
    ds = fo.Dataset()
    ours = SegmentationMetric(k)
    samples = []
    for i in range(4):
        gt = rng.integers(0, k, (12, 17)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.15] = 255
        gt[gt == 4] = 3  # class 4 only predicted
        pred = rng.integers(0, k, (12, 17)).astype(np.uint8)
        ours.update(pred, gt)
        samples.append(fo.Sample(filepath=f"/tmp/tfovss-metrics-{i}.png",
                                 gt=fo.Segmentation(mask=gt), pred=fo.Segmentation(mask=pred)))
    ds.add_samples(samples)
    try:
        res = ds.evaluate_segmentations("pred", gt_field="gt", eval_key="ev", mask_targets=names)
        order = [int(next(v for v, n in names.items() if n == c)) for c in res.classes]
        cm = np.asarray(res.confusion_matrix(), dtype=np.int64)
        ref = ours.confusion[np.ix_(order, order)]
        assert (cm == ref).all()
        tp = np.diag(cm).astype(float)
        with np.errstate(invalid="ignore"):
            fo_iou = tp / (cm.sum(0) + cm.sum(1) - tp)
        assert np.nanmean(fo_iou) == pytest.approx(ours.compute()["mIoU"])
        assert fo_iou[list(res.classes).index("c4")] == 0.0  # predicted but absent: 0, counted
    finally:
        ds.delete()
