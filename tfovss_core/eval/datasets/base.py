"""Shared machinery of the benchmark importers.

An importer finds one benchmark in its standard on-disk layout (MMSegmentation's data preparation
layouts, which the papers use), checks that the folder is complete, and streams
:class:`BenchmarkSample` objects: a sample id, the image path and a loader that returns the
ground-truth label map with the benchmark's label rule already applied (``reduce_zero_label``,
unlabelled -> ``ignore_index``, on-the-fly conversions). Nothing is loaded until asked for, so a
5,000-image benchmark costs a list of ids in memory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from tfovss_core.errors import TfovssError


class DatasetLayoutError(TfovssError, FileNotFoundError):
    """A benchmark folder that is missing, incomplete or not in the expected layout.

    ``missing`` lists every missing entry (paths relative to the dataset folder, or a summary
    line for missing per-sample files); the message says what was looked for and where.
    """

    def __init__(self, message: str, missing: Sequence[str] = ()):
        super().__init__(message)
        self.missing = list(missing)


@dataclass(frozen=True)
class BenchmarkSample:
    """One evaluation image.

    ``load_gt()`` returns the label map at the image's own resolution as an integer array with the
    benchmark's label rule applied: class ids ``0..num_classes-1`` and ``ignore_index`` for pixels
    that are not scored. Unpacks as ``(id, image_path, load_gt)``.
    """

    id: str
    image_path: Path
    gt_loader: Callable[[], np.ndarray] = field(repr=False, compare=False)
    gt_path: Path | None = None

    def load_gt(self) -> np.ndarray:
        return self.gt_loader()

    def __iter__(self):
        return iter((self.id, self.image_path, self.load_gt))


# --------------------------------------------------------------------------------------------
# label maps

def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """Reads a label PNG/TIFF as class indices, never as colours.

    Palette ("P") PNGs give their palette indices (as mmseg's pillow backend does); 8-bit
    greyscale, 16-bit PNG and 16-bit TIFF label maps give their values.
    """
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("RGB", "RGBA"):
            raise DatasetLayoutError(
                f"{path}: label map is a colour image ({im.mode}); expected a single-channel "
                "label PNG (class indices), as produced by the MMSegmentation data preparation "
                "scripts", [str(path)])
        arr = np.array(im)
    if arr.ndim != 2:
        raise DatasetLayoutError(f"{path}: label map has shape {arr.shape}; expected H x W",
                                 [str(path)])
    if arr.dtype == np.int32 or arr.dtype == np.int64:  # PIL "I" mode for 16-bit data
        if arr.min() < 0:  # -1 written by a converter that subtracted 1 from "unlabelled" 0
            arr = np.where(arr < 0, 65535, arr)
        arr = arr.astype(np.uint16 if arr.max() <= 65535 else np.int64)
    return arr


def reduce_zero_label(label: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """MMSeg's ``LoadAnnotations(reduce_zero_label=True)``: 0 -> ignore, k -> k-1.

    Exactly mmseg's arithmetic on uint8 maps: ``gt[gt == 0] = 255; gt = gt - 1;
    gt[gt == 254] = 255``, so an existing 255 stays ignored.
    """
    out = label.astype(np.int64)
    out[out == 0] = ignore_index
    out = out - 1
    out[out == ignore_index - 1] = ignore_index
    return out.astype(np.uint8 if ignore_index <= 255 else np.uint16)


def apply_lut(label: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Maps every value v of ``label`` to ``lut[v]`` (values beyond the table keep nothing:
    the table must cover the label's dtype range)."""
    return lut[label]


def lut_from_mapping(mapping: dict, size: int = 256, default: int | None = None,
                     dtype=np.uint8) -> np.ndarray:
    """A lookup table for :func:`apply_lut`; unmapped values map to ``default``
    (or to themselves when ``default`` is None)."""
    lut = np.arange(size, dtype=np.int64) if default is None else np.full(size, default, np.int64)
    for k, v in mapping.items():
        lut[k] = v
    return lut.astype(dtype)


# --------------------------------------------------------------------------------------------
# importer base

class BenchmarkImporter:
    """Base class: subclasses set the class attributes and implement ``_find``/``_ids``/``_sample``.

    Construct through :func:`tfovss_core.eval.datasets.get_importer`. ``root`` may be the folder that
    holds the datasets (``--root``; the standard sub-folder names are tried) or the dataset folder
    itself.
    """

    #: preset / benchmark name (``voc21``, ``ade20k``, ...)
    name: str = ""
    display_name: str = ""
    num_classes: int = 0
    ignore_index: int = 255
    reduce_zero_label: bool = False
    has_background: bool = False
    #: sub-folders of ``--root`` tried in order to find the dataset folder ("." = root itself)
    candidates: Sequence[str] = (".",)
    #: how to prepare the data, shown in every layout error
    layout_help: str = ""
    #: split names accepted, mapped to the on-disk name
    splits: dict = {"val": "val"}

    def __init__(self, root: str | os.PathLike, split: str = "val", **options):
        if split not in self.splits:
            raise DatasetLayoutError(
                f"{self.name}: unknown split {split!r}; choose one of {sorted(self.splits)}")
        self.split = split
        self.options = options
        self.search_root = Path(root).expanduser()
        self.root = self._locate(self.search_root)
        self._id_list: list[str] | None = None

    # -- subclasses -----------------------------------------------------------------------
    def _required(self, base: Path) -> list[tuple[str, str]]:
        """``(relative path, description)`` entries that must exist in the dataset folder."""
        raise NotImplementedError

    def _ids(self) -> list[str]:
        raise NotImplementedError

    def _files(self, sample_id: str) -> list[tuple[str, Path]]:
        """``(kind, path)`` per-sample files that must exist (image, label map)."""
        raise NotImplementedError

    def _sample(self, sample_id: str) -> BenchmarkSample:
        raise NotImplementedError

    def describe_source(self) -> str:
        """One line saying which on-disk format the labels come from."""
        return ""

    # -- locating and checking ------------------------------------------------------------
    def _missing(self, base: Path) -> list[str]:
        return [f"{rel}  ({desc})" for rel, desc in self._required(base)
                if not (base / rel).exists()]

    def _locate(self, root: Path) -> Path:
        if not root.is_dir():
            raise DatasetLayoutError(
                f"{self.name}: root folder {root} does not exist.\n{self.layout_help}",
                [str(root)])
        tried = []
        for cand in self.candidates:
            base = (root / cand) if cand != "." else root
            if not base.is_dir():
                continue
            missing = self._missing(base)
            if not missing:
                return base
            tried.append((base, missing))
        partial = [(b, m) for b, m in tried if len(m) < len(self._required(b))]
        if not partial:
            looked = ", ".join(c for c in self.candidates)
            raise DatasetLayoutError(
                f"{self.name}: no {self.display_name} folder under {root} (looked for: {looked})."
                f"\n{self.layout_help}", [f"{root}/{self.candidates[0]}"])
        # report the candidate folder that is closest to complete
        base, missing = min(partial, key=lambda t: len(t[1]))
        lines = "\n".join(f"  - {m}" for m in missing)
        raise DatasetLayoutError(
            f"{self.name}: {base} is incomplete; missing:\n{lines}\n{self.layout_help}",
            missing)

    def ids(self) -> list[str]:
        """Sample ids of the split, in evaluation order (mmseg's: split file order or sorted)."""
        if self._id_list is None:
            self._id_list = list(self._ids())
        return self._id_list

    def check(self, limit: int | None = None) -> None:
        """Raises :class:`DatasetLayoutError` listing every missing image or label file."""
        ids = self.ids()
        if not ids:
            raise DatasetLayoutError(
                f"{self.name}: no samples found for split {self.split!r} in {self.root}.\n"
                f"{self.layout_help}", ["(no samples)"])
        sel = ids if limit is None else ids[:limit]
        problems: dict[str, list[str]] = {}
        for sid in sel:
            for kind, path in self._files(sid):
                if not path.exists():
                    problems.setdefault(kind, []).append(str(path.relative_to(self.root))
                                                         if _is_under(path, self.root)
                                                         else str(path))
        if problems:
            lines, missing = [], []
            for kind, paths in problems.items():
                head = ", ".join(paths[:5]) + (" ..." if len(paths) > 5 else "")
                lines.append(f"  - {len(paths)} of {len(sel)} samples have no {kind}: {head}")
                missing.extend(paths)
            raise DatasetLayoutError(
                f"{self.name}: {self.root} is incomplete:\n" + "\n".join(lines) +
                f"\n{self.layout_help}", missing)

    # -- streaming ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids())

    def __iter__(self) -> Iterator[BenchmarkSample]:
        return self.samples()

    def samples(self, limit: int | None = None, skip: Sequence[str] = ()) -> Iterator[BenchmarkSample]:
        """Streams samples in order (the first ``limit`` ids; ids in ``skip`` are left out)."""
        skip = set(skip)
        ids = self.ids() if limit is None else self.ids()[:limit]
        for sid in ids:
            if sid in skip:
                continue
            yield self._sample(sid)

    def mask_targets(self, class_names: Sequence[str] | None = None) -> dict[int, str]:
        """``{class id: name}`` for FiftyOne (the ignore value is not a class)."""
        names = list(class_names) if class_names is not None else self.class_names()
        return {i: n for i, n in enumerate(names)}

    def class_names(self) -> list[str]:
        """Display name per class (the preset's first synonym; "background" for class 0 where
        the benchmark has one)."""
        from tfovss_core.spec.presets import get_preset

        return get_preset(self.name).class_names()

    def info(self) -> dict:
        return {
            "dataset": self.name,
            "display_name": self.display_name,
            "split": self.split,
            "root": str(self.root),
            "num_samples": len(self),
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "reduce_zero_label": self.reduce_zero_label,
            "has_background": self.has_background,
            "labels": self.describe_source(),
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} split={self.split} root={self.root}>"


def _is_under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def sorted_files(folder: Path, suffix: str, recursive: bool = False,
                 exclude: Callable[[str], bool] | None = None) -> list[Path]:
    """Files in ``folder`` ending in ``suffix``, sorted by path (mmseg's order)."""
    if not folder.is_dir():
        return []
    it = folder.rglob(f"*{suffix}") if recursive else folder.glob(f"*{suffix}")
    files = [p for p in it if p.is_file() and (exclude is None or not exclude(p.name))]
    return sorted(files)


def read_split_file(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip().split()[0] for line in f if line.strip()]
