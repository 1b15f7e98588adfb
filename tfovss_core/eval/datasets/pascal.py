"""Pascal VOC 2012 (VOC21, VOC20) and Pascal Context (Context60, Context59, Context-459)."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from tfovss_core.eval.datasets.base import (BenchmarkImporter, BenchmarkSample, read_label_map, read_split_file,
                   reduce_zero_label, sorted_files)

_VOC_HELP = """\
Expected layout (MMSegmentation "Pascal VOC" preparation; the official VOCtrainval_11-May-2012 tar):
  <root>/VOCdevkit/VOC2012/
      JPEGImages/<id>.jpg
      SegmentationClass/<id>.png          palette PNG, index = class (0 background, 255 border)
      ImageSets/Segmentation/val.txt      1,449 ids"""

_CONTEXT_HELP = """\
Expected layout (MMSegmentation "Pascal Context" preparation: VOC2010 images plus the label PNGs
written by mmseg's tools/dataset_converters/pascal_context.py from trainval_merged.json):
  <root>/VOCdevkit/VOC2010/
      JPEGImages/<id>.jpg
      SegmentationClassContext/<id>.png   0 = background, 1..59 = the 59 classes
      ImageSets/SegmentationContext/val.txt   5,105 ids"""

_CONTEXT459_HELP = """\
Expected layout for Context-459 (16-bit TIFF label maps, 65535 = unlabelled; written by the
MaskFormer / CAT-Seg / CLIPtrase preparation scripts from the full PASCAL-Context .mat files):
  <root>/VOCdevkit/VOC2010/JPEGImages/<id>.jpg
  <root>/VOCdevkit/VOC2010/annotations_detectron2/pc459_val/<id>.tif
or (CLIPtrase's copy):
  <root>/pcontext_full/val/image/<id>.jpg
  <root>/pcontext_full/val/label/<id>.tif"""


class _SplitFileImporter(BenchmarkImporter):
    img_dir = "JPEGImages"
    img_suffix = ".jpg"
    seg_dir = ""
    seg_suffix = ".png"
    split_dir = ""

    def _split_file(self) -> str:
        return f"{self.split_dir}/{self.splits[self.split]}.txt"

    def _required(self, base: Path):
        return [(self.img_dir, "images"), (self.seg_dir, "label maps"),
                (self._split_file(), "split list")]

    def _ids(self):
        return read_split_file(self.root / self._split_file())

    def _paths(self, sid: str):
        return (self.root / self.img_dir / f"{sid}{self.img_suffix}",
                self.root / self.seg_dir / f"{sid}{self.seg_suffix}")

    def _files(self, sid):
        img, seg = self._paths(sid)
        return [("image", img), ("label map", seg)]

    def _load(self, path: Path) -> np.ndarray:
        label = read_label_map(path)
        if self.reduce_zero_label:
            return reduce_zero_label(label, self.ignore_index)
        return label

    def _sample(self, sid):
        img, seg = self._paths(sid)
        return BenchmarkSample(sid, img, partial(self._load, seg), seg)


class VOC21(_SplitFileImporter):
    name = "voc21"
    display_name = "Pascal VOC 2012"
    num_classes = 21
    has_background = True
    candidates = ("VOCdevkit/VOC2012", "VOC2012", "voc2012/VOCdevkit/VOC2012",
                  "VOCtrainval_11-May-2012/VOCdevkit/VOC2012", ".")
    layout_help = _VOC_HELP
    splits = {"val": "val", "train": "train", "trainval": "trainval"}
    seg_dir = "SegmentationClass"
    split_dir = "ImageSets/Segmentation"

    def describe_source(self):
        return "SegmentationClass PNG indices: 0 background, 1..20 classes, 255 ignored"


class VOC20(VOC21):
    name = "voc20"
    num_classes = 20
    has_background = False
    reduce_zero_label = True

    def describe_source(self):
        return ("SegmentationClass PNG with reduce_zero_label: background 0 and 255 ignored, "
                "1..20 -> 0..19")


class Context60(_SplitFileImporter):
    name = "context60"
    display_name = "Pascal Context (VOC2010)"
    num_classes = 60
    has_background = True
    candidates = ("VOCdevkit/VOC2010", "VOC2010", "pcontext/VOCdevkit/VOC2010",
                  "VOCtrainval_03-May-2010/VOCdevkit/VOC2010", ".")
    layout_help = _CONTEXT_HELP
    splits = {"val": "val", "train": "train"}
    seg_dir = "SegmentationClassContext"
    split_dir = "ImageSets/SegmentationContext"

    def describe_source(self):
        return "SegmentationClassContext PNG: 0 background, 1..59 classes (255 ignored if any)"


class Context59(Context60):
    name = "context59"
    num_classes = 59
    has_background = False
    reduce_zero_label = True

    def describe_source(self):
        return ("SegmentationClassContext PNG with reduce_zero_label: background 0 ignored, "
                "1..59 -> 0..58")


class Context459(BenchmarkImporter):
    name = "context459"
    display_name = "Pascal Context full (459 classes)"
    num_classes = 459
    ignore_index = 65535
    candidates = ("VOCdevkit/VOC2010", "VOC2010", "pcontext/VOCdevkit/VOC2010",
                  "pcontext_full", ".")
    layout_help = _CONTEXT459_HELP
    splits = {"val": "val", "train": "train"}

    def _layouts(self):
        sp = self.splits[self.split]
        return [("JPEGImages", f"annotations_detectron2/pc459_{sp}"),
                (f"{sp}/image", f"{sp}/label")]

    def _required(self, base: Path):
        for img, seg in self._layouts():
            if (base / seg).is_dir():
                return [(img, "images"), (seg, "16-bit TIFF label maps")]
        img, seg = self._layouts()[0]
        return [(img, "images"), (seg, "16-bit TIFF label maps")]

    def _dirs(self):
        for img, seg in self._layouts():
            if (self.root / seg).is_dir():
                return self.root / img, self.root / seg
        raise AssertionError("located folder lost its label folder")

    def _ids(self):
        _, seg = self._dirs()
        return [p.stem for p in sorted_files(seg, ".tif")]

    def _files(self, sid):
        img, seg = self._dirs()
        return [("image", img / f"{sid}.jpg"), ("label map", seg / f"{sid}.tif")]

    def _sample(self, sid):
        img, seg = self._dirs()
        path = seg / f"{sid}.tif"
        return BenchmarkSample(sid, img / f"{sid}.jpg", partial(_load_u16, path), path)

    def describe_source(self):
        return "16-bit TIFF: 0..458 classes, 65535 ignored"


def _load_u16(path: Path) -> np.ndarray:
    return read_label_map(path).astype(np.uint16)
