"""Dataset presets: class-name files, label conventions, and tfovss's default protocol per dataset.

Pure Python + json (no torch, no fiftyone), so the plugin and the CLI can read presets cheaply.
Dataset facts live here (mmseg METAINFO style); each method's own per-dataset settings live on
its card, beside the method (:mod:`tfovss_core.methods.card`).

* ``get_preset("voc21").class_names()`` -> the dataset's own class names (mmseg METAINFO
  ``classes``, in ``settings.json``): what ground truth calls them and what a pre-label's
  ``mask_targets`` must say so that evaluation matches by name. The words queried stay separate:
* ``get_preset("voc21").classes("sclip")`` -> synonyms per class, from the class file that method's
  official repo uses (ClearCLIP's one-word lists for ``clip`` / ``maskclip`` / ``clearclip``, the
  SCLIP-family lists with synonyms otherwise).
* ``method_settings("scclip", "voc21", arch_depth=24)`` -> the settings dict of the official config.
  Its home is :func:`tfovss_core.methods.method_settings` (the cards); the name here is an alias that
  delegates to the method registry once ``tfovss_core.methods`` is imported (it installs itself with
  :func:`set_method_settings_provider`; this layer never imports methods). Before that, every method
  gets :func:`default_protocol` (``"official": False``, the source says why).

Class-name file format (the one of the SCLIP family's ``configs/cls_*.txt``): one line per class;
a line may hold several synonyms separated by ``", "``; every synonym becomes its own text query and
the class score is the max over its queries. Where every number comes from: ``README.md`` here.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from tfovss_core.spec.vocabulary import parse_vocabulary

__all__ = [
    "DatasetPreset",
    "list_presets",
    "get_preset",
    "method_settings",
    "default_protocol",
    "set_method_settings_provider",
    "canonical_name",
    "parse_class_lines",
    "read_class_file",
]

_HERE = Path(__file__).resolve().parent

_DATASET_ALIASES = {
    "voc": "voc21", "pascal_voc": "voc21", "voc2012": "voc21",
    "pc60": "context60", "pascal_context60": "context60",
    "pc59": "context59", "pascal_context59": "context59",
    "coco_obj": "coco_object", "cocoobject": "coco_object",
    "coco_stuff164k": "coco_stuff", "cocostuff": "coco_stuff", "coco_stuff171": "coco_stuff",
    "city_scapes": "cityscapes",
    "ade": "ade20k", "ade150": "ade20k", "ade20k_150": "ade20k",
    "ade20k_full": "ade847", "ade_847": "ade847", "ade20k_847": "ade847",
    "pc459": "context459", "pascal_context459": "context459",
}


@lru_cache(maxsize=1)
def _settings() -> dict:
    with open(_HERE / "settings.json", encoding="utf-8") as f:
        return json.load(f)


def canonical_name(name: str) -> str:
    """The spelling-insensitive form used to match dataset and method aliases ("SC-CLIP" -> "sc_clip")."""
    return str(name).strip().lower().replace("-", "_").replace(" ", "_")


def _dataset_key(name: str) -> str:
    key = canonical_name(name)
    key = _DATASET_ALIASES.get(key, key)
    if key not in _settings()["datasets"]:
        raise KeyError(f"unknown dataset preset {name!r}; valid presets: {', '.join(list_presets())}")
    return key


# ----------------------------------------------------------------------------- class-name files

def parse_class_lines(lines: list[str], sep: str = ", ") -> list[list[str]]:
    """Synonyms per class from class-name lines: the class-file dialect of
    :func:`tfovss_core.spec.vocabulary.parse_vocabulary` (one class per line, synonyms split on
    ``sep``; an inner blank line or empty synonym is an error, trailing blank lines are ignored)."""
    return [names for _, names in parse_vocabulary(lines, class_file=True, sep=sep)]


def read_class_file(path, sep: str = ", ") -> list[list[str]]:
    """Read a class-name file in the format above (also for users' own files)."""
    with open(os.fspath(path), encoding="utf-8") as f:
        return parse_class_lines(f.read().splitlines(), sep=sep)


@lru_cache(maxsize=None)
def _bundled_classes(filename: str) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(names) for names in read_class_file(_HERE / filename))


# ----------------------------------------------------------------------------- settings

_provider: Callable[[str, str, "int | None"], dict] | None = None


def set_method_settings_provider(provider: Callable[[str, str, "int | None"], dict] | None) -> None:
    """Installs the resolver behind :func:`method_settings` (the method registry does, on import)."""
    global _provider
    _provider = provider


def default_protocol(method: str, dataset: str) -> dict:
    """tfovss's default protocol on ``dataset`` for a method without settings of its own.

    The SCLIP-family constructor defaults (short side 336, Cityscapes 560, crop 224 / stride 112,
    logit 40, no PAMR) with prob_thd 0.1 on the datasets with background; ``"official": False``.
    """
    ds = _dataset_key(dataset)
    entry = copy.deepcopy(_settings()["default_protocol"]["datasets"][ds])
    entry["official"] = False
    entry["source"] = f"{entry['source']}; no preset for method {canonical_name(str(method).split('+')[0])!r}"
    entry["method"] = str(method)
    entry["dataset"] = ds
    return entry


def method_settings(method: str, dataset: str, arch_depth: int | None = None) -> dict:
    """Alias of :func:`tfovss_core.methods.method_settings` (the official settings of ``method``
    on ``dataset``, from the method's card); see there for the keys.

    The settings live on the method cards, above this layer: the registry installs itself here
    when ``tfovss_core.methods`` is imported. Before that there is no answer, and a silent
    default would give e.g. ClearCLIP the SCLIP family's class names, so it raises.
    """
    if _provider is None:
        raise LookupError(f"the settings of method {method!r} come from its method card: import "
                          "tfovss_core.methods (or call tfovss_core.methods.method_settings) first")
    return _provider(method, dataset, arch_depth)


# ----------------------------------------------------------------------------- presets

@dataclass(frozen=True)
class DatasetPreset:
    """A benchmark: label conventions plus the class-name lists the official repos use."""

    name: str
    display_name: str
    num_classes: int
    ignore_index: int
    reduce_zero_label: bool
    has_background: bool

    def class_file(self, family: str = "sclip_family") -> str:
        """The bundled class-name file of ``family`` ("sclip_family" or "clearclip") for this dataset."""
        files = _settings()["datasets"][self.name]["class_files"]
        if family not in files:
            raise KeyError(f"preset {self.name!r} has no class file of family {family!r}; families: {sorted(files)}")
        return files[family]

    def classes(self, method: str | None = None) -> list[list[str]]:
        """Synonyms per class from the class file ``method`` officially uses (default: SCLIP family)."""
        if method is None:
            filename = self.class_file()
        else:
            filename = method_settings(str(method).split("+")[0], self.name)["class_file"]
        if not filename:
            raise ValueError(f"preset {self.name!r} ships no class-name file")
        return [list(names) for names in _bundled_classes(filename)]

    def class_names(self, method: str | None = None) -> list[str]:
        """The dataset's own name per class (its METAINFO ``classes``: VOC's ``boat``,
        ``diningtable``, ``tvmonitor``), the names a ground-truth field's ``mask_targets`` uses,
        whatever words ``method`` queries (:meth:`query_names`). ``method`` is accepted for
        symmetry with :meth:`classes`; the count is the same for every class file.

        Datasets without a METAINFO list (ADE-847, Context-459: their class file *is* the
        dataset's list) name each class by its first synonym.
        """
        canonical = _settings()["datasets"][self.name].get("classes")
        if canonical:
            return list(canonical)
        return self.query_names(method)

    def query_names(self, method: str | None = None) -> list[str]:
        """The first query word per class in the class file ``method`` uses (``ship``,
        ``table``, ``television monitor`` for VOC under the SCLIP family); class 0 of a dataset
        with background is "background" even where the file lists stuff names for it."""
        names = [synonyms[0] for synonyms in self.classes(method)]
        if self.has_background and names:
            names[0] = "background"
        return names


def list_presets() -> list[str]:
    """Names of the bundled dataset presets."""
    return list(_settings()["datasets"])


def get_preset(name: str) -> DatasetPreset:
    """The preset called ``name`` (a few aliases such as "city_scapes" are accepted)."""
    key = _dataset_key(name)
    meta = _settings()["datasets"][key]
    return DatasetPreset(
        name=key,
        display_name=meta["display_name"],
        num_classes=int(meta["num_classes"]),
        ignore_index=int(meta["ignore_index"]),
        reduce_zero_label=bool(meta["reduce_zero_label"]),
        has_background=bool(meta["has_background"]),
    )
