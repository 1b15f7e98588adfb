"""COCO-Stuff-164k (171 classes) and COCO-Object (80 things + background).

COCO-Object is defined by GroupViT's converter (``convert_dataset/convert_coco_object.py``, copied
in the SCLIP, NACLIP, ClearCLIP and ResCLIP repos): it starts from the COCO-Stuff-164k
``stuffthingmaps`` PNGs (0-based COCO-Stuff ids, 255 unlabelled), maps the 80 thing ids to 1..80 in
COCO order and every other value (the 91 stuff ids *and* 255) to 0, and the result is scored with
no ignored pixels. :class:`COCOObject` reads either those converted ``*_instanceTrainIds.png`` files
or the raw stuffthingmaps (converting on the fly with the same table).

:class:`COCOObjectFromInstances` is the alternative for users who only have the COCO instances json:
it rasterises the instance polygons/RLE with pycocotools. It follows the rules the COCO-Stuff
authors used to put COCO things into their label maps (``cocostuffapi`` ``cocostuffhelper.
cocoSegmentationToSegmentationMap`` as called by ``internalToCocoGTDemo``: ``includeCrowd=False``,
no uniqueness check): non-crowd instances are painted in annotation order, a later instance
overwriting an earlier one where they overlap, and crowd (``iscrowd=1``) regions are not painted,
so they end up background as in the official maps. What cannot be reproduced from the json alone:
pixels the stuffthingmaps mark differently from the instance polygons (COCO-Stuff's own boundary
refinements), so numbers from this route are close to, not identical with, the official benchmark.
``crowd="ignore"`` (crowd pixels not covered by another instance -> 255, not scored) and
``crowd="thing"`` (crowd regions painted with their class) are offered as alternatives.
"""
from __future__ import annotations

import contextlib
import io
from functools import partial
from pathlib import Path

import numpy as np

from tfovss_core.eval.datasets.base import (BenchmarkImporter, BenchmarkSample, DatasetLayoutError, apply_lut,
                   lut_from_mapping, read_label_map, sorted_files)

#: COCO's 80 thing category ids (1-based, with the official gaps), in class order.
COCO_THING_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
                  24, 25, 27, 28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47,
                  48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70,
                  72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90)
#: COCO-Stuff's 91 stuff category ids (1-based).
COCO_STUFF_IDS = tuple(range(92, 183))

# stuffthingmaps hold category_id - 1 (0-based), 255 = unlabelled.
_THING_RAW = [c - 1 for c in COCO_THING_IDS]
_STUFF_RAW = [c - 1 for c in COCO_STUFF_IDS]

#: raw stuffthingmap value -> COCO-Stuff-171 train id (mmseg's coco_stuff164k converter);
#: 255 and anything unknown stay 255 (ignored).
STUFF171_LUT = lut_from_mapping({raw: i for i, raw in enumerate(_THING_RAW + _STUFF_RAW)},
                                default=255)
#: raw stuffthingmap value -> COCO-Object id (GroupViT's converter): things -> 1..80, stuff and
#: unlabelled 255 -> 0 (background); values the converter's table does not list keep their value.
OBJECT_LUT = lut_from_mapping({**{raw: i + 1 for i, raw in enumerate(_THING_RAW)},
                               **{raw: 0 for raw in _STUFF_RAW}, 255: 0})

_STUFF_HELP = """\
Expected layout (MMSegmentation "COCO Stuff 164k" preparation):
  <root>/coco_stuff164k/
      images/val2017/<id>.jpg                       COCO val2017 images (5,000)
      annotations/val2017/<id>_labelTrainIds.png    written by mmseg's coco_stuff164k.py converter
                    or <id>.png                     the raw stuffthingmaps_trainval2017.zip PNGs
                                                    (converted on the fly)"""

_OBJECT_HELP = """\
Expected layout for COCO-Object, either
  (a) COCO-Stuff-164k (the official route, GroupViT's conversion):
  <root>/coco_stuff164k/
      images/val2017/<id>.jpg
      annotations/val2017/<id>_instanceTrainIds.png  (GroupViT/SCLIP datasets/cvt_coco_object.py)
                    or <id>.png                      raw stuffthingmaps PNGs, converted on the fly
  (b) COCO instances json (rasterised with pycocotools; see docs/benchmark.md for the differences):
  <root>/coco/
      val2017/<file_name>                            (or images/val2017/)
      annotations/instances_val2017.json"""

_COCO_CANDIDATES = ("coco_stuff164k", "coco_stuff", "cocostuff", "coco", "coco2017", ".")


class _StuffThingMaps(BenchmarkImporter):
    """Images in ``images/<split>2017``, labels in ``annotations/<split>2017``."""

    candidates = _COCO_CANDIDATES
    splits = {"val": "val2017", "train": "train2017"}
    converted_suffix = ""
    lut: np.ndarray = STUFF171_LUT

    def _dirs(self, base: Path | None = None):
        base = self.root if base is None else base
        sp = self.splits[self.split]
        return base / "images" / sp, base / "annotations" / sp

    def _required(self, base: Path):
        sp = self.splits[self.split]
        req = [(f"images/{sp}", "images"), (f"annotations/{sp}", "label maps")]
        img, ann = self._dirs(base)
        if ann.is_dir() and not self._has_labels(ann):
            req.append((f"annotations/{sp}/*{self.converted_suffix} or raw stuffthingmaps *.png",
                        "label PNGs"))
        return req

    def _has_labels(self, ann: Path) -> bool:
        for p in ann.iterdir():
            if p.name.endswith(self.converted_suffix) or (
                    p.suffix == ".png" and "TrainIds" not in p.name):
                return True
        return False

    def _ids(self):
        img, _ = self._dirs()
        return [p.stem for p in sorted_files(img, ".jpg")]

    def _gt(self, sid: str):
        """(path, needs conversion) of the label map to use."""
        _, ann = self._dirs()
        conv = ann / f"{sid}{self.converted_suffix}"
        if conv.exists():
            return conv, False
        return ann / f"{sid}.png", True

    def _files(self, sid):
        img, _ = self._dirs()
        gt, raw = self._gt(sid)
        kind = "label map" if not raw else f"label map ({sid}{self.converted_suffix} or {sid}.png)"
        return [("image", img / f"{sid}.jpg"), (kind, gt)]

    def _load(self, path: Path, raw: bool) -> np.ndarray:
        label = read_label_map(path)
        if raw:
            if label.dtype != np.uint8:
                raise DatasetLayoutError(f"{path}: expected an 8-bit stuffthingmap", [str(path)])
            return apply_lut(label, self.lut)
        return label

    def _sample(self, sid):
        img, _ = self._dirs()
        gt, raw = self._gt(sid)
        return BenchmarkSample(sid, img / f"{sid}.jpg", partial(self._load, gt, raw), gt)


class COCOStuff(_StuffThingMaps):
    name = "coco_stuff"
    display_name = "COCO-Stuff-164k"
    num_classes = 171
    layout_help = _STUFF_HELP
    converted_suffix = "_labelTrainIds.png"
    lut = STUFF171_LUT

    def describe_source(self):
        return ("COCO-Stuff-164k *_labelTrainIds.png (0..170, 255 ignored), or raw "
                "stuffthingmaps converted with mmseg's table")


class COCOObject(_StuffThingMaps):
    name = "coco_object"
    display_name = "COCO-Object (from COCO-Stuff-164k)"
    num_classes = 81
    has_background = True
    layout_help = _OBJECT_HELP
    converted_suffix = "_instanceTrainIds.png"
    lut = OBJECT_LUT

    def describe_source(self):
        return ("COCO-Stuff-164k stuffthingmaps, GroupViT conversion: things -> 1..80, stuff and "
                "unlabelled -> 0 background, nothing ignored")


class COCOObjectFromInstances(BenchmarkImporter):
    """COCO-Object ground truth rasterised from a COCO instances json (see module docstring).

    Options: ``ann_file`` (path to the json, default ``annotations/instances_<split>2017*.json``),
    ``image_dir`` (default ``<split>2017`` or ``images/<split>2017``), ``crowd``
    (``"background"`` default, ``"ignore"`` or ``"thing"``), ``overlap`` (``"order"`` default:
    annotation order, later instances on top, as cocostuffapi; ``"area"``: larger instances first,
    so small objects lying on large ones stay visible).
    """

    name = "coco_object"
    display_name = "COCO instances (COCO-Object from the json)"
    num_classes = 81
    has_background = True
    candidates = ("coco", "coco2017", "COCO", "coco_stuff164k", ".")
    layout_help = _OBJECT_HELP
    splits = {"val": "val2017", "train": "train2017"}
    CROWD_MODES = ("background", "ignore", "thing")
    OVERLAP_MODES = ("order", "area")

    def __init__(self, root, split="val", ann_file=None, image_dir=None, crowd="background",
                 overlap="order", **options):
        if crowd not in self.CROWD_MODES:
            raise DatasetLayoutError(f"coco_object: crowd must be one of {self.CROWD_MODES}, "
                                     f"got {crowd!r}")
        if overlap not in self.OVERLAP_MODES:
            raise DatasetLayoutError(f"coco_object: overlap must be one of {self.OVERLAP_MODES}, "
                                     f"got {overlap!r}")
        self.crowd = crowd
        self.overlap = overlap
        self._ann_file = Path(ann_file).expanduser() if ann_file else None
        self._image_dir = Path(image_dir).expanduser() if image_dir else None
        self._coco = None
        super().__init__(root, split, **options)

    # -- layout ---------------------------------------------------------------------------
    def _find_json(self, base: Path) -> tuple[Path | None, str]:
        if self._ann_file is not None:
            return (self._ann_file if self._ann_file.is_file() else None), str(self._ann_file)
        sp = self.splits[self.split]
        exact = base / "annotations" / f"instances_{sp}.json"
        if exact.is_file():
            return exact, f"annotations/instances_{sp}.json"
        found = sorted((base / "annotations").glob(f"instances_{sp}*.json")) \
            if (base / "annotations").is_dir() else []
        if len(found) == 1:
            return found[0], str(found[0].relative_to(base))
        if len(found) > 1:
            raise DatasetLayoutError(
                f"coco_object: several instance jsons in {base / 'annotations'}: "
                f"{', '.join(p.name for p in found)}; choose one with ann_file=...")
        return None, f"annotations/instances_{sp}.json"

    def _find_images(self, base: Path) -> tuple[Path | None, str]:
        if self._image_dir is not None:
            return (self._image_dir if self._image_dir.is_dir() else None), str(self._image_dir)
        sp = self.splits[self.split]
        for rel in (sp, f"images/{sp}"):
            if (base / rel).is_dir():
                return base / rel, rel
        return None, sp

    def _required(self, base: Path):
        _, js_rel = self._find_json(base)
        _, im_rel = self._find_images(base)
        return [(js_rel, "COCO instances json"), (im_rel, "images")]

    # -- data -----------------------------------------------------------------------------
    @property
    def coco(self):
        if self._coco is None:
            from pycocotools.coco import COCO

            path, _ = self._find_json(self.root)
            with contextlib.redirect_stdout(io.StringIO()):
                self._coco = COCO(str(path))
            cat_ids = set(self._coco.getCatIds())
            unknown = sorted(cat_ids - set(COCO_THING_IDS))
            if unknown:
                raise DatasetLayoutError(
                    f"coco_object: {path} has categories outside COCO's 80 things: {unknown[:10]}")
            self._by_stem = {}
            for img in self._coco.dataset.get("images", []):
                self._by_stem[Path(img["file_name"]).stem] = img
        return self._coco

    def _ids(self):
        self.coco  # noqa: B018  (loads the json)
        return sorted(self._by_stem)

    def _image_path(self, sid):
        im, _ = self._find_images(self.root)
        return im / self._by_stem[sid]["file_name"]

    def _files(self, sid):
        return [("image", self._image_path(sid))]

    def _load(self, sid: str) -> np.ndarray:
        coco = self.coco
        info = self._by_stem[sid]
        label = np.zeros((info["height"], info["width"]), dtype=np.uint8)
        cat_to_idx = {c: i + 1 for i, c in enumerate(COCO_THING_IDS)}
        anns = coco.loadAnns(coco.getAnnIds(imgIds=info["id"]))
        if self.overlap == "area":  # largest first, so smaller instances stay on top
            anns = sorted(anns, key=lambda a: -float(a.get("area", 0.0)))
        if self.crowd == "ignore":
            for ann in anns:
                if ann.get("iscrowd", 0):
                    label[coco.annToMask(ann).astype(bool)] = 255
        for ann in anns:
            if ann.get("iscrowd", 0) and self.crowd != "thing":
                continue
            label[coco.annToMask(ann).astype(bool)] = cat_to_idx[ann["category_id"]]
        return label

    def _sample(self, sid):
        return BenchmarkSample(sid, self._image_path(sid), partial(self._load, sid), None)

    def describe_source(self):
        order = ("annotation order, later overwrites earlier" if self.overlap == "order"
                 else "largest instance first, smaller ones on top")
        return (f"COCO instances json rasterised with pycocotools ({order}; crowd regions -> "
                f"{self.crowd}); 0 background")

    def info(self):
        d = super().info()
        d["crowd"] = self.crowd
        d["overlap"] = self.overlap
        return d
