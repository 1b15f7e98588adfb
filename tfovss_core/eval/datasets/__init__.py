"""Importers for the standard OVSS benchmarks in their usual on-disk layouts.

>>> from tfovss_core.eval.datasets import get_importer
>>> ds = get_importer("voc21", "/data")          # finds /data/VOCdevkit/VOC2012
>>> ds.check()                                   # DatasetLayoutError listing what is missing
>>> for sample in ds.samples(limit=10):          # streaming; nothing is preloaded
...     gt = sample.load_gt()                    # label rule applied; ds.ignore_index not scored

``root`` is the folder holding the datasets (their standard sub-folders are tried:
``VOCdevkit/VOC2012``, ``coco_stuff164k``, ``cityscapes``, ``ade/ADEChallengeData2016``, ...) or
the dataset folder itself. No FiftyOne import here; the plugin builds FiftyOne datasets from these.
"""
from __future__ import annotations

import os

from tfovss_core.eval.datasets.base import (BenchmarkImporter, BenchmarkSample, DatasetLayoutError, read_label_map,
                   reduce_zero_label)
from tfovss_core.eval.datasets.coco import COCOObject, COCOObjectFromInstances, COCOStuff
from tfovss_core.eval.datasets.pascal import VOC20, VOC21, Context59, Context60, Context459
from tfovss_core.eval.datasets.scenes import ADE20K, ADE847, Cityscapes

__all__ = ["BenchmarkImporter", "BenchmarkSample", "DatasetLayoutError", "get_importer",
           "list_benchmarks", "read_label_map", "reduce_zero_label", "BENCHMARK_ORDER",
           "SHORT_NAMES"]

_IMPORTERS = {cls.name: cls for cls in (VOC21, Context60, COCOObject, VOC20, Context59,
                                         COCOStuff, Cityscapes, ADE20K, ADE847, Context459)}

#: the column order of the papers' tables (with-background sets first), then the large vocabularies
BENCHMARK_ORDER = ("voc21", "context60", "coco_object", "voc20", "context59", "coco_stuff",
                   "cityscapes", "ade20k", "ade847", "context459")

#: column headers as the papers print them
SHORT_NAMES = {"voc21": "VOC21", "context60": "Context60", "coco_object": "Object",
               "voc20": "VOC20", "context59": "Context59", "coco_stuff": "Stuff",
               "cityscapes": "City", "ade20k": "ADE", "ade847": "ADE-847",
               "context459": "Context-459"}

_ALIASES = {"voc": "voc21", "pascal_voc": "voc21", "voc2012": "voc21", "ctx60": "context60",
            "pc60": "context60", "ctx59": "context59", "pc59": "context59", "object": "coco_object",
            "coco-object": "coco_object", "cocoobject": "coco_object", "stuff": "coco_stuff",
            "coco-stuff": "coco_stuff", "coco_stuff164k": "coco_stuff", "cocostuff": "coco_stuff",
            "city": "cityscapes", "city_scapes": "cityscapes", "ade": "ade20k", "ade150": "ade20k",
            "ade20k-150": "ade20k", "ade-847": "ade847", "a847": "ade847", "pc459": "context459",
            "context-459": "context459", "ctx459": "context459"}


def list_benchmarks() -> list[str]:
    """Benchmark names in the papers' table order."""
    return list(BENCHMARK_ORDER)


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _IMPORTERS:
        raise DatasetLayoutError(
            f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARK_ORDER)}")
    return key


def get_importer(name: str, root: str | os.PathLike, split: str = "val", *,
                 coco_object_source: str = "auto", **options) -> BenchmarkImporter:
    """The importer of benchmark ``name`` for the data under ``root``.

    ``coco_object_source`` picks the COCO-Object route: ``"stuffthingmaps"`` (the official one,
    GroupViT's conversion of COCO-Stuff-164k), ``"instances"`` (a COCO instances json rasterised
    with pycocotools; options ``ann_file``, ``image_dir``, ``crowd``, ``overlap``) or ``"auto"`` (the first that
    is present, in that order). Raises :class:`DatasetLayoutError` naming what is missing.
    """
    key = canonical_name(name)
    if key != "coco_object":
        return _IMPORTERS[key](root, split, **options)
    if coco_object_source == "stuffthingmaps":
        return COCOObject(root, split, **options)
    if coco_object_source == "instances":
        return COCOObjectFromInstances(root, split, **options)
    if coco_object_source != "auto":
        raise DatasetLayoutError(f"coco_object_source must be auto, stuffthingmaps or instances, "
                                 f"got {coco_object_source!r}")
    inst_opts = {k: options.pop(k) for k in ("ann_file", "image_dir", "crowd", "overlap") if k in options}
    try:
        return COCOObject(root, split, **options)
    except DatasetLayoutError as e1:
        try:
            return COCOObjectFromInstances(root, split, **inst_opts, **options)
        except DatasetLayoutError as e2:
            helptext = COCOObject.layout_help
            m1, m2 = (str(e).replace(helptext, "").strip() for e in (e1, e2))
            raise DatasetLayoutError(
                f"coco_object: found neither COCO-Stuff-164k stuffthingmaps nor a COCO instances "
                f"json.\n[stuffthingmaps] {m1}\n[instances] {m2}\n{helptext}",
                e1.missing + e2.missing) from None
