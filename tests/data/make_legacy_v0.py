"""Writes ``tests/data/legacy_v0/``: a FiftyOne dataset export made by the plugin as it was
before the ``tfovss_fiftyone`` package existed (commit 5bf6dc4, the ``plugin/`` package of
``plugin/*.py``), so that tests/fiftyone/test_legacy_database.py can check that databases
written by that code keep loading and showing in the panel.

Its stored evaluation configs and results name ``plugin.evaluation.OVSSEvaluationConfig`` and
``plugin.evaluation.OVSSEvaluationResults``: the class paths of that code.

Run it from a checkout of commit 5bf6dc4 (the shared data beside it, as for the tests), with
the project's Python (fiftyone 1.22, torch, open_clip)::

    git worktree add ../old 5bf6dc4
    cd ../old && python <this checkout>/tests/data/make_legacy_v0.py <this checkout>/tests/data/legacy_v0

It builds two VOC samples with ground truth, pre-labels them with the tiny synthetic CLIP through
the old ``plugin.prelabel.prelabel`` (field ``tiny_sclip``), adds a second prediction made by
perturbing the ground truth (field ``perturbed``, so that one mIoU is far from zero), evaluates
both with the old ``plugin.evaluation.run_evaluation`` and exports the dataset with its media,
masks, runs and evaluations. ``expected.json`` holds the metrics the old code computed.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

CHECKOUT = Path.cwd().resolve()
OUT = Path(sys.argv[1]).resolve()

_tmp = Path(tempfile.mkdtemp(prefix="tfovss-legacy-"))
# registered before fiftyone is imported, so it runs after fiftyone has stopped its database
atexit.register(shutil.rmtree, _tmp, ignore_errors=True)
os.environ["FIFTYONE_DATABASE_DIR"] = str(_tmp / "db")
os.environ.pop("FIFTYONE_DATABASE_URI", None)
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
os.environ["FIFTYONE_SHOW_PROGRESS_BARS"] = "false"
os.environ["FIFTYONE_PLUGINS_DIR"] = str(CHECKOUT)
os.environ["FIFTYONE_CONFIG_PATH"] = str(_tmp / "config.json")
os.environ["TFOVSS_CACHE_DIR"] = str(_tmp / "cache")
sys.path.insert(0, str(CHECKOUT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import fiftyone as fo  # noqa: E402
import plugin.evaluation  # noqa: E402
import plugin.prelabel  # noqa: E402
import tfovss_core  # noqa: E402

# the old code, not an installed newer one
for mod in (plugin.evaluation, tfovss_core):
    assert Path(mod.__file__).resolve().is_relative_to(CHECKOUT), mod.__file__
assert (CHECKOUT / "plugin" / "evaluation.py").is_file(), "run from a checkout of 5bf6dc4"

VOC = CHECKOUT.parent / "shared" / "data" / "voc2012" / "VOCdevkit" / "VOC2012"
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
FAST = {"short_side": 64, "crop": 64, "stride": 64, "templates": ["a photo of a {}."]}


def perturbed(mask: np.ndarray, seed: int) -> np.ndarray:
    """Ground truth shifted by a few pixels with a few blocks of other classes painted on."""
    rng = np.random.default_rng(seed)
    m = np.roll(mask, shift=(3, -5), axis=(0, 1)).astype(np.int64)
    m[m == 255] = 0
    h, w = m.shape
    for _ in range(4):
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
        m[y:y + rng.integers(5, 60), x:x + rng.integers(5, 60)] = rng.choice([0, 1, 15])
    return m.astype(np.uint8)


def main() -> None:
    masks_dir = _tmp / "masks"
    masks_dir.mkdir()
    ds = fo.Dataset("tfovss-legacy-v0")
    samples = []
    for k, png in enumerate(sorted((VOC / "SegmentationClass").glob("*.png"))[:2]):
        gt = np.array(Image.open(png))
        gt_path = masks_dir / f"gt_{png.stem}.png"
        Image.fromarray(gt).save(gt_path)
        pred_path = masks_dir / f"perturbed_{png.stem}.png"
        Image.fromarray(perturbed(gt, k)).save(pred_path)
        samples.append(fo.Sample(filepath=str(VOC / "JPEGImages" / f"{png.stem}.jpg"),
                                 ground_truth=fo.Segmentation(mask_path=str(gt_path)),
                                 perturbed=fo.Segmentation(mask_path=str(pred_path))))
    ds.add_samples(samples)
    ds.mask_targets = {"ground_truth": dict(enumerate(VOC_CLASSES)),
                       "perturbed": dict(enumerate(VOC_CLASSES))}
    ds.save()

    report = plugin.prelabel.prelabel(ds, "tiny_sclip", classes=dict(enumerate(VOC_CLASSES)),
                                      method="sclip", pretrained="tiny:seed0", settings=FAST,
                                      device="cpu", output_dir=str(_tmp / "prelabel"))
    assert report.num_labelled == len(ds), report.to_dict()

    expected = {}
    for key, field, background in (("tiny_sclip_eval", "tiny_sclip", "class"),
                                   ("perturbed_eval", "perturbed", "ignore")):
        res = plugin.evaluation.run_evaluation(ds, field, "ground_truth", key,
                                               background=background)
        expected[key] = {"pred_field": field, "background": background, "mIoU": res.mIoU,
                         "aAcc": res.aAcc, "mAcc": res.mAcc, "iou": res.iou,
                         "per_sample_miou": ds.values(f"{key}_miou")}

    if OUT.exists():
        shutil.rmtree(OUT)
    ds.export(str(OUT / "dataset"), dataset_type=fo.types.FiftyOneDataset, export_media=True,
              export_runs=True)
    (OUT / "expected.json").write_text(json.dumps(
        {"written_by": "tests/data/make_legacy_v0.py at commit 5bf6dc4",
         "fiftyone": fo.__version__, "evaluations": expected}, indent=1) + "\n")
    ds.delete()


if __name__ == "__main__":
    main()
