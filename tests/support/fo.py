"""Helpers and fixtures of the FiftyOne tests (tests/fiftyone and its e2e/): an isolated
FiftyOne database, plugin discovery, and small datasets built from the shared sample data (VOC,
ADE20K, COCO instances -> semantic masks).

The FIFTYONE_* variables must be set before fiftyone is imported anywhere, hence at the top of
this module, which tests/fiftyone/conftest.py imports first.
"""
from __future__ import annotations

import atexit
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# --- isolated FiftyOne environment (before any fiftyone import) -------------------------------
_FO_TMP = Path(tempfile.mkdtemp(prefix="tfovss-fo-"))
os.environ["FIFTYONE_DATABASE_DIR"] = str(_FO_TMP / "db")
os.environ["TFOVSS_FO_TEST_DIR"] = str(_FO_TMP)
os.environ.pop("FIFTYONE_DATABASE_URI", None)
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
os.environ["FIFTYONE_SHOW_PROGRESS_BARS"] = "false"
os.environ["FIFTYONE_PLUGINS_DIR"] = str(REPO_ROOT)
os.environ["FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS"] = "true"
os.environ.setdefault("FIFTYONE_CONFIG_PATH", str(_FO_TMP / "config.json"))
os.environ.setdefault("FIFTYONE_APP_CONFIG_PATH", str(_FO_TMP / "app_config.json"))
atexit.register(shutil.rmtree, _FO_TMP, ignore_errors=True)

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


from support.paths import DATA, SHARED  # noqa: E402,F401

PLUGIN_NAME = "@tfovss/ovss"
URI_PRELABEL = f"{PLUGIN_NAME}/prelabel_segmentation"
URI_COMPARE = f"{PLUGIN_NAME}/compare_ovss_methods"
URI_EVALUATE = f"{PLUGIN_NAME}/evaluate_segmentations"
URI_EXPORT = f"{PLUGIN_NAME}/export_coco_masks"
URI_PANEL = f"{PLUGIN_NAME}/ovss_evaluations"

VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


def tiny_clip_available() -> bool:
    try:
        from tfovss_core.clip.synthetic import tiny_clip  # noqa: F401
        import tfovss_core

        return hasattr(tfovss_core, "Segmenter")
    except Exception:
        return False


needs_core = pytest.mark.skipif(not tiny_clip_available(),
                                reason="tfovss_core.Segmenter / testing.tiny_clip not available")


# --- data -------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared sample data not found at {DATA} (set TFOVSS_SHARED)")
    return DATA


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fo-plugin")


def voc_items(data: Path):
    root = data / "voc2012" / "VOCdevkit" / "VOC2012"
    out = []
    for p in sorted((root / "SegmentationClass").glob("*.png")):
        img = root / "JPEGImages" / (p.stem + ".jpg")
        out.append((img, np.array(Image.open(p))))  # palette indices, 255 = void
    return out


def ade_items(data: Path):
    root = data / "ade20k" / "ADEChallengeData2016"
    out = []
    for p in sorted((root / "annotations" / "validation").glob("*.png")):
        img = root / "images" / "validation" / (p.stem + ".jpg")
        out.append((img, np.array(Image.open(p))))
    return out


def ade_names(data: Path) -> dict[int, str]:
    import csv

    names = {0: "other"}
    with open(data / "ade20k" / "ADEChallengeData2016" / "objectInfo150.csv") as f:
        for row in csv.DictReader(f):
            names[int(row["Idx"])] = row["Name"].split(";")[0].strip()
    return names


def coco_semantic(data: Path, limit: int = 4):
    """COCO instances -> semantic masks: categories in sorted-id order -> 1..80, 0 background,
    crowd regions -> 255 (not evaluated); instances painted in annotation order."""
    from pycocotools.coco import COCO

    root = data / "coco2017"
    coco = COCO(str(root / "annotations" / "instances_train2017.json"))
    cat_ids = sorted(coco.getCatIds())
    value = {cid: i + 1 for i, cid in enumerate(cat_ids)}
    names = {0: "background"}
    names.update({value[c["id"]]: c["name"] for c in coco.loadCats(cat_ids)})
    items = []
    for img_id in sorted(coco.getImgIds()):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        if not anns:
            continue
        info = coco.loadImgs(img_id)[0]
        m = np.zeros((info["height"], info["width"]), np.uint8)
        for a in sorted(anns, key=lambda a: a["iscrowd"]):
            region = coco.annToMask(a).astype(bool)
            m[region] = 255 if a["iscrowd"] else value[a["category_id"]]
        items.append((root / "train2017" / info["file_name"], m))
        if len(items) >= limit:
            break
    return items, names


# --- FiftyOne ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def fo():
    import fiftyone as fo

    return fo


@pytest.fixture(scope="session")
def foo(fo):
    import fiftyone.operators as foo

    return foo


_counter = [0]


def unique_name(prefix: str) -> str:
    _counter[0] += 1
    return f"{prefix}-{os.getpid()}-{_counter[0]}"


def make_dataset(fo, items, names: dict[int, str], name: str, gt_field="ground_truth",
                 mask_dir: Path | None = None):
    """A dataset with ``gt_field`` masks (in the DB, or as PNG files when ``mask_dir``)."""
    ds = fo.Dataset(unique_name(name))
    samples = []
    for i, (img, mask) in enumerate(items):
        if mask_dir is not None:
            mask_dir.mkdir(parents=True, exist_ok=True)
            p = mask_dir / f"{i:03d}_{Path(img).stem}.png"
            Image.fromarray(mask.astype(np.uint8)).save(p)
            seg = fo.Segmentation(mask_path=str(p))
        else:
            seg = fo.Segmentation(mask=mask.astype(np.uint8))
        samples.append(fo.Sample(filepath=str(img), **{gt_field: seg}))
    ds.add_samples(samples)
    ds.mask_targets = {gt_field: {int(k): v for k, v in names.items()}}
    ds.save()
    return ds


@pytest.fixture()
def voc_ds(fo, data_dir, work_dir):
    ds = make_dataset(fo, voc_items(data_dir), dict(enumerate(VOC_CLASSES)), "voc",
                      mask_dir=work_dir / unique_name("voc-gt"))
    yield ds
    ds.delete()


@pytest.fixture()
def ade_ds(fo, data_dir):
    ds = make_dataset(fo, ade_items(data_dir), ade_names(data_dir), "ade")
    yield ds
    ds.delete()


@pytest.fixture()
def coco_ds(fo, data_dir):
    items, names = coco_semantic(data_dir, limit=4)
    ds = make_dataset(fo, items, names, "coco")
    yield ds
    ds.delete()


def run_queued(dataset_name: str):
    """Runs every queued delegated operation of a dataset in this process."""
    import fiftyone.operators.delegated as food

    return food.DelegatedOperationService().execute_queued_operations(dataset_name=dataset_name)


def run_delegated(foo, uri: str, dataset, params: dict, new_field: str):
    """Queues ``uri`` as a delegated operation (checking that ``new_field`` is not written yet),
    runs it in this process, checks it had no error and returns its ExecutionResult."""
    r = foo.execute_operator(uri, ctx={"dataset": dataset, "params": params,
                                       "request_delegation": True})
    assert r.delegated and new_field not in dataset.get_field_schema()
    done = run_queued(dataset.name)
    assert len(done) == 1 and done[0].error is None, [d.error for d in done]
    dataset.reload()
    return done[0]


def triggered(result) -> list[str]:
    """URIs of the operators an operator run triggered (reload_dataset, set_view, ...)."""
    return [getattr(r, "operator_uri", None) for r in getattr(result.executor, "_requests", [])]
