"""Restores the database that the pre-package plugin wrote, from its export in ``legacy_v0/``.

``fo.Dataset.from_dir`` alone does not give that database back: FiftyOne's importer parses
each evaluation's results with their stored class and saves them again, and where
``plugin.evaluation`` cannot be imported it parses them with its base class, dropping every
tfovss field (mIoU, per-class IoU...). A database written by the old code holds the results
as that code stored them, so after the import they are put back byte for byte from the export
(the configs come through the import unchanged). Only fiftyone and the standard library are
used, so a process without the checkout can load this file by path.
"""
from __future__ import annotations

from pathlib import Path

LEGACY_EXPORT = Path(__file__).resolve().parent / "legacy_v0" / "dataset"


def restore_legacy_database(fo, name: str | None = None):
    """The dataset as the old code left it in its database (not migrated)."""
    ds = fo.Dataset.from_dir(dataset_dir=str(LEGACY_EXPORT),
                             dataset_type=fo.types.FiftyOneDataset, name=name)
    for key, run_doc in ds._doc.evaluations.items():
        raw = (LEGACY_EXPORT / "evaluations" / f"{key}.json").read_bytes()
        if run_doc.results:
            run_doc.results.delete()
        run_doc.results.put(raw, content_type="application/json")
        run_doc.save()
    ds.clear_cache()
    return ds
