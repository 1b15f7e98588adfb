"""Export a FiftyOne ``Segmentation`` field as COCO annotations (the SDK behind the
"Export COCO masks" operator), using :mod:`tfovss_core.export.coco`.

    from tfovss_fiftyone.export import export_coco_masks
    summary = export_coco_masks(dataset, "ovss", "/data/export/labels.json")   # compressed RLE
    export_coco_masks(view, "ovss", "/data/export/poly.json", encoding="polygon")

* One annotation per class per image (``split="class"``) or per connected region
  (``split="component"``); ``iscrowd`` 0; categories from the field's ``mask_targets``
  (category id = mask value; background value 0 left out unless ``include_background``).
* Image ``id`` = 1..N in the collection's order, ``file_name`` relative to ``image_root``
  (default: the images' common folder), ``width``/``height`` the real image size.
* Re-import: ``fo.Dataset.from_dir(dataset_type=fo.types.COCODetectionDataset,
  data_path=<image_root>, labels_path=<json>, label_types="segmentations")``.
"""
from __future__ import annotations

import os
from typing import Mapping


class ExportInputError(ValueError):
    """Bad export input; raised before anything is written."""


def _image_size(filepath: str, metadata) -> tuple[int, int]:
    if metadata is not None and getattr(metadata, "width", None) and \
            getattr(metadata, "height", None):
        return int(metadata.width), int(metadata.height)
    from tfovss_core.io.images import displayed_size

    return displayed_size(filepath)   # EXIF orientation applied, as the masks and the App


def export_coco_masks(samples, label_field: str, labels_path: str, *, encoding: str = "rle",
                      split: str = "class", include_background: bool = False,
                      mask_targets: Mapping | None = None, image_root: str | None = None,
                      tolerance: float = 0.0, overwrite: bool = False, progress=None) -> dict:
    """Writes ``labels_path`` (COCO JSON); returns a summary dict.

    Raises ExportInputError (nothing written) for a missing or non-Segmentation field, missing
    class names, an existing file without ``overwrite``, or a bad encoding / split.
    """
    from tfovss_core.export import coco as tcoco

    from tfovss_fiftyone.evaluation import EvaluationInputError, check_segmentation_field, field_mask_targets

    if encoding not in tcoco.ENCODINGS:
        raise ExportInputError(f"encoding must be one of {tcoco.ENCODINGS}, got {encoding!r}")
    if split not in tcoco.SPLITS:
        raise ExportInputError(f"split must be one of {tcoco.SPLITS}, got {split!r}")
    try:
        check_segmentation_field(samples, label_field, "exported")
    except EvaluationInputError as e:
        raise ExportInputError(str(e)) from None
    try:  # RGB mask targets ("#ff6d04": name) are refused, naming the field
        targets = dict(mask_targets) if mask_targets else (
            field_mask_targets(samples, label_field)
            or {int(k): str(v) for k, v in (samples._dataset.default_mask_targets or {}).items()})
    except EvaluationInputError as e:
        raise ExportInputError(f"{e}; COCO export needs integer class values") from None
    if not targets:
        raise ExportInputError(
            f"field '{label_field}' has no mask_targets (class names); set "
            f"dataset.mask_targets['{label_field}'] or pass mask_targets")
    if not labels_path:
        raise ExportInputError("no output path given")
    labels_path = os.path.abspath(labels_path)
    if os.path.isdir(labels_path):
        labels_path = os.path.join(labels_path, f"{label_field}_coco.json")
    if os.path.exists(labels_path) and not overwrite:
        raise ExportInputError(f"'{labels_path}' exists; choose another path or allow "
                               "overwriting")

    view = samples.select_fields(label_field)
    filepaths = view.values("filepath")
    if image_root is None:
        image_root = os.path.commonpath([os.path.dirname(p) for p in filepaths]) \
            if filepaths else ""
    skip = () if include_background else (0,)
    stats = tcoco.CocoExportStats()
    missing = []

    def items():
        n = len(view)
        for i, sample in enumerate(view.iter_samples(progress=False), 1):
            label = sample[label_field]
            if label is None or not label.has_mask:
                missing.append(sample.id)
                continue
            mask = label.get_mask()
            if mask.ndim == 3:
                raise ExportInputError(
                    f"field '{label_field}', sample {sample.id}: RGB masks are not supported; "
                    "store class-index masks (one integer value per class)")
            w, h = _image_size(sample.filepath, sample.metadata)
            if mask.shape != (h, w):
                import cv2

                mask = cv2.resize(mask.astype(mask.dtype if mask.dtype != bool else "uint8"),
                                  (w, h), interpolation=cv2.INTER_NEAREST)
            rel = os.path.relpath(sample.filepath, image_root) if image_root else \
                os.path.basename(sample.filepath)
            yield {"id": i, "file_name": rel, "width": w, "height": h}, mask
            if progress is not None:
                progress(i, n)

    coco = tcoco.masks_to_coco(items(), targets, skip_values=skip, encoding=encoding,
                               split=split, tolerance=tolerance, stats=stats,
                               info={"description": f"'{label_field}' of FiftyOne dataset "
                                                    f"'{samples._dataset.name}' (tfovss)"})
    tcoco.write_coco(coco, labels_path)
    return {"labels_path": labels_path, "image_root": image_root, "encoding": encoding,
            "split": split, "num_images": stats.num_images,
            "num_annotations": stats.num_annotations,
            "num_categories": len(coco["categories"]),
            "samples_without_mask": missing,
            "values_not_exported": {str(k): v for k, v in sorted(stats.skipped_values.items())}}
