"""Cityscapes (19 classes), ADE20K-150 and ADE-847."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from tfovss_core.eval.datasets.base import (BenchmarkImporter, BenchmarkSample, apply_lut, lut_from_mapping,
                   read_label_map, reduce_zero_label, sorted_files)

#: Cityscapes labelIds -> trainIds (the 19 evaluated classes; everything else 255), the table of
#: cityscapesscripts' ``labels.py`` that ``createTrainIdLabelImgs`` applies.
CITYSCAPES_ID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                            23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_LUT = lut_from_mapping(CITYSCAPES_ID_TO_TRAINID, default=255)

_CITY_HELP = """\
Expected layout (MMSegmentation "Cityscapes" preparation):
  <root>/cityscapes/
      leftImg8bit/val/<city>/<name>_leftImg8bit.png
      gtFine/val/<city>/<name>_gtFine_labelTrainIds.png   written by mmseg's cityscapes.py converter
                          (or <name>_gtFine_labelIds.png, converted on the fly)"""

_ADE_HELP = """\
Expected layout (MMSegmentation "ADE20K" preparation; ADEChallengeData2016.zip):
  <root>/ade/ADEChallengeData2016/
      images/validation/ADE_val_<n>.jpg
      annotations/validation/ADE_val_<n>.png     0 = other (not scored), 1..150 classes"""

_ADE847_HELP = """\
Expected layout for ADE-847 (ADE20K_2021_17_01 prepared by MaskFormer's / CAT-Seg's
prepare_ade20k_full_sem_seg.py: 16-bit TIFF label maps, 65535 = unlabelled):
  <root>/ADE20K_2021_17_01/
      images_detectron2/validation/<name>.jpg
      annotations_detectron2/validation/<name>.tif"""


class Cityscapes(BenchmarkImporter):
    name = "cityscapes"
    display_name = "Cityscapes"
    num_classes = 19
    candidates = ("cityscapes", "Cityscapes", ".")
    layout_help = _CITY_HELP
    splits = {"val": "val", "train": "train"}
    img_suffix = "_leftImg8bit.png"

    def _dirs(self):
        sp = self.splits[self.split]
        return self.root / "leftImg8bit" / sp, self.root / "gtFine" / sp

    def _required(self, base):
        sp = self.splits[self.split]
        return [(f"leftImg8bit/{sp}", "images"), (f"gtFine/{sp}", "fine annotations")]

    def _ids(self):
        img, _ = self._dirs()
        files = sorted_files(img, self.img_suffix, recursive=True)
        return [str(p.relative_to(img))[: -len(self.img_suffix)] for p in files]

    def _gt(self, sid):
        _, gt = self._dirs()
        train = gt / f"{sid}_gtFine_labelTrainIds.png"
        if train.exists():
            return train, False
        raw = gt / f"{sid}_gtFine_labelIds.png"
        if raw.exists():
            return raw, True
        return train, False

    def _files(self, sid):
        img, _ = self._dirs()
        return [("image", img / f"{sid}{self.img_suffix}"),
                ("label map (_gtFine_labelTrainIds.png or _gtFine_labelIds.png)", self._gt(sid)[0])]

    @staticmethod
    def _load(path: Path, raw: bool) -> np.ndarray:
        label = read_label_map(path)
        return apply_lut(label, CITYSCAPES_LUT) if raw else label

    def _sample(self, sid):
        img, _ = self._dirs()
        gt, raw = self._gt(sid)
        return BenchmarkSample(sid.replace("\\", "/"), img / f"{sid}{self.img_suffix}",
                               partial(self._load, gt, raw), gt)

    def describe_source(self):
        return "gtFine *_labelTrainIds.png (0..18, 255 ignored), or *_labelIds.png converted"


class ADE20K(BenchmarkImporter):
    name = "ade20k"
    display_name = "ADE20K (ADEChallengeData2016)"
    num_classes = 150
    reduce_zero_label = True
    candidates = ("ade/ADEChallengeData2016", "ADEChallengeData2016",
                  "ade20k/ADEChallengeData2016", ".")
    layout_help = _ADE_HELP
    splits = {"val": "validation", "train": "training"}

    def _dirs(self):
        sp = self.splits[self.split]
        return self.root / "images" / sp, self.root / "annotations" / sp

    def _required(self, base):
        sp = self.splits[self.split]
        return [(f"images/{sp}", "images"), (f"annotations/{sp}", "label PNGs")]

    def _ids(self):
        img, _ = self._dirs()
        return [p.stem for p in sorted_files(img, ".jpg")]

    def _files(self, sid):
        img, ann = self._dirs()
        return [("image", img / f"{sid}.jpg"), ("label map", ann / f"{sid}.png")]

    def _load(self, path: Path) -> np.ndarray:
        return reduce_zero_label(read_label_map(path), self.ignore_index)

    def _sample(self, sid):
        img, ann = self._dirs()
        gt = ann / f"{sid}.png"
        return BenchmarkSample(sid, img / f"{sid}.jpg", partial(self._load, gt), gt)

    def describe_source(self):
        return "annotation PNG with reduce_zero_label: 0 (other) ignored, 1..150 -> 0..149"


class ADE847(BenchmarkImporter):
    name = "ade847"
    display_name = "ADE20K full (847 classes)"
    num_classes = 847
    ignore_index = 65535
    candidates = ("ADE20K_2021_17_01", "ade/ADE20K_2021_17_01", "ade20k/ADE20K_2021_17_01", ".")
    layout_help = _ADE847_HELP
    splits = {"val": "validation", "train": "training"}

    def _dirs(self):
        sp = self.splits[self.split]
        return self.root / "images_detectron2" / sp, self.root / "annotations_detectron2" / sp

    def _required(self, base):
        sp = self.splits[self.split]
        return [(f"images_detectron2/{sp}", "images"),
                (f"annotations_detectron2/{sp}", "16-bit TIFF label maps")]

    def _ids(self):
        img, _ = self._dirs()
        return [p.stem for p in sorted_files(img, ".jpg")]

    def _files(self, sid):
        img, ann = self._dirs()
        return [("image", img / f"{sid}.jpg"), ("label map", ann / f"{sid}.tif")]

    def _sample(self, sid):
        img, ann = self._dirs()
        gt = ann / f"{sid}.tif"
        return BenchmarkSample(sid, img / f"{sid}.jpg", partial(_load_u16, gt), gt)

    def describe_source(self):
        return "16-bit TIFF: 0..846 classes, 65535 ignored"


def _load_u16(path: Path) -> np.ndarray:
    return read_label_map(path).astype(np.uint16)
