"""Dataset presets: class-name files and the official per-dataset, per-method inference settings.

Pure Python + json (no torch, no fiftyone), so the plugin and the CLI can read presets cheaply.

* ``get_preset("voc21").classes("sclip")`` -> synonyms per class, from the class file that method's
  official repo uses (ClearCLIP's one-word lists for ``clip`` / ``maskclip`` / ``clearclip``, the
  SCLIP-family lists with synonyms otherwise).
* ``method_settings("scclip", "voc21", arch_depth=24)`` -> the settings dict of the official config
  (short side, sliding window, logit scale, thresholds, PAMR, class file, method extras, ``source``).

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

from tfovss_core.spec.vocabulary import parse_vocabulary

__all__ = [
    "DatasetPreset",
    "list_presets",
    "get_preset",
    "method_settings",
    "parse_class_lines",
    "read_class_file",
]

_HERE = Path(__file__).resolve().parent

# LHT-CLIP's components; as add-ons ("host+lht", "host+atr+ssr") they switch PAMR off.
_LHT_ADDONS = frozenset({"lht", "atr", "ssr", "she"})

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
_METHOD_ALIASES = {
    "vanilla": "clip", "vanilla_clip": "clip", "mask_clip": "maskclip", "clear_clip": "clearclip",
    "sc_clip": "scclip", "res_clip": "resclip", "na_clip": "naclip", "lht_clip": "lht",
    "lhtclip": "lht", "g_clip": "gclip",
}


@lru_cache(maxsize=1)
def _settings() -> dict:
    with open(_HERE / "settings.json", encoding="utf-8") as f:
        return json.load(f)


def _canon(name: str) -> str:
    return str(name).strip().lower().replace("-", "_").replace(" ", "_")


def _dataset_key(name: str) -> str:
    key = _canon(name)
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

def _split_method(method: str) -> tuple[str, list[str]]:
    parts = [_canon(p) for p in str(method).split("+")]
    host = _METHOD_ALIASES.get(parts[0], parts[0])
    return host, [p for p in parts[1:] if p]


def _resolve(method: str, dataset: str, seen: tuple[str, ...] = ()) -> dict | None:
    """Settings entry of a known method (``inherit`` resolved), or None for an unknown one."""
    methods = _settings()["methods"]
    spec = methods.get(method)
    if spec is None or method in seen:
        return None
    if "inherit" in spec:
        base = _resolve(spec["inherit"], dataset, seen + (method,))
        if base is None:
            return None
        entry = copy.deepcopy(base)
        entry.update(copy.deepcopy(spec.get("overrides", {})))
        entry.update(copy.deepcopy(spec.get("dataset_overrides", {}).get(dataset, {})))
        if spec.get("class_family"):
            entry["class_file"] = _settings()["datasets"][dataset]["class_files"][spec["class_family"]]
        entry["inherit"] = spec["inherit"]
        entry["official"] = False
        if spec.get("paper_based"):
            entry["paper_based"] = True
        if spec.get("note"):
            entry["note"] = spec["note"]
        entry["source"] = (f"paper-based ({spec.get('display_name', method)}, no official code): settings of "
                           f"'{spec['inherit']}' [{base['source']}]")
        return entry
    entry = copy.deepcopy(spec["datasets"][dataset])
    entry.setdefault("official", bool(spec.get("official", True)) and not entry.get("guess", False))
    if spec.get("note") and "note" not in entry:
        entry["note"] = spec["note"]
    return entry


def method_settings(method: str, dataset: str, arch_depth: int | None = None) -> dict:
    """The official inference settings of ``method`` on ``dataset`` (see ``settings.json``).

    ``method`` may carry add-on suffixes ("clearclip+lht", "sclip+atr+ssr"): the host part before
    the first "+" selects the settings; LHT-CLIP add-ons switch PAMR off. ``arch_depth=24`` applies
    the ViT-L/14 overrides where the official repo gives them (SC-CLIP on VOC21 / COCO-Object).
    An unknown method gets the SCLIP-family default protocol with ``"official": False``.
    Keys: short_side, max_long_side, crop (0 = whole image), stride, logit_scale, prob_thd,
    area_thd, pamr_steps, pamr_dilations, class_file, source, official, method, dataset, plus
    method extras (ResCLIP: temp_thd, rcs_weights, sfr_weights, ...).
    """
    ds = _dataset_key(dataset)
    host, addons = _split_method(method)
    entry = _resolve(host, ds) if host != "default" else None
    if entry is None:
        entry = copy.deepcopy(_settings()["methods"]["default"]["datasets"][ds])
        entry["official"] = False
        entry["source"] = f"{entry['source']}; no preset for method {host!r}"
    overrides = entry.pop("overrides_by_depth", None) or {}
    if arch_depth is not None and str(int(arch_depth)) in overrides:
        ov = dict(overrides[str(int(arch_depth))])
        ov_source = ov.pop("source", "")
        entry.update(ov)
        entry["arch_overrides"] = ov
        entry["source"] = f"{entry['source']}; depth-{int(arch_depth)} override" + (
            f": {ov_source}" if ov_source else "")
    if addons:
        entry["addons"] = addons
        if _LHT_ADDONS.intersection(addons):
            entry["pamr_steps"] = 0
            entry["official"] = False
            entry["paper_based"] = True
            entry["note"] = ("LHT-CLIP add-on (no public code): host settings with PAMR off, as the paper "
                             "states. With a ResCLIP host the paper compares against ResCLIP without SFR.")
            entry["source"] = f"{entry['source']}; LHT-CLIP add-on: PAMR off [paper]"
            if "use_sfr" in entry:  # SFR depends on PAMR; LHT-CLIP's ResCLIP rows are without SFR
                entry["use_sfr"] = False
                entry["source"] += ", ResCLIP's SFR off [paper]"
    entry["method"] = str(method)
    entry["dataset"] = ds
    return entry


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

    def classes(self, method: str | None = None) -> list[list[str]]:
        """Synonyms per class from the class file ``method`` officially uses (default: SCLIP family)."""
        meta = _settings()["datasets"][self.name]
        if method is None:
            filename = meta["class_files"]["sclip_family"]
        else:
            host, _ = _split_method(method)
            filename = method_settings(host, self.name)["class_file"]
        if not filename:
            raise ValueError(f"preset {self.name!r} ships no class-name file")
        return [list(names) for names in _bundled_classes(filename)]

    def class_names(self, method: str | None = None) -> list[str]:
        """Display name per class: the first synonym.

        Exception: on datasets with background, class 0 is shown as "background" even where the
        SCLIP-family file lists stuff names for it (VOC21 / COCO-Object line 0 starts with "sky").
        """
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
