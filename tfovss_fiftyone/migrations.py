"""Datasets written before the ``tfovss_fiftyone`` package existed keep loading.

FiftyOne stores the class of each run's config and results by import path. The plugin used to
be the top-level package ``plugin`` (``plugin/*.py``), so evaluations stored by it name
``plugin.evaluation.OVSSEvaluationConfig`` and ``plugin.evaluation.OVSSEvaluationResults``:
paths that import only where that checkout is on ``sys.path``, and that no longer exist at all.
Left alone, FiftyOne falls back to its base classes and the stored mIoU is lost to the panel.

:func:`migrate_legacy_runs` rewrites those paths in place, ``plugin.<module>.<Class>`` ->
``tfovss_fiftyone.<module>.<Class>`` (only where that class exists), in every kind of run of a
dataset (evaluations, custom runs, brain runs, annotation runs), in the stored config and in the
stored results. It changes nothing else, so it is idempotent: a second call finds nothing to do.
The results are rewritten before the config, so a migration interrupted between the two is
completed by the next call. tfovss calls it whenever it opens a dataset's runs (the panel,
``run_evaluation``, the FiftyOne benchmark source); call it yourself before
``dataset.load_evaluation_results(key)`` on a dataset that tfovss has not opened since::

    from tfovss_fiftyone.migrations import migrate_legacy_runs
    migrate_legacy_runs(dataset)   # -> ["evaluations.<key>: results, config", ...]

An *export* of such a dataset (``dataset.export(..., dataset_type=fo.types.FiftyOneDataset)``)
needs :func:`migrate_export` on its folder before ``fo.Dataset.from_dir``: FiftyOne's importer
parses the stored results and saves them again, and with a class path it cannot import it keeps
only its base class's fields, so the tfovss metrics would be lost before any migration runs.

:func:`migrate_legacy_runs` reads FiftyOne's run documents directly (their results live in GridFS, which no public call
returns unparsed); ``fiftyone`` is pinned to 1.22.x in ``pyproject.toml`` for that reason.
"""
from __future__ import annotations

import importlib

__all__ = ["LEGACY_PACKAGE", "current_class_path", "migrate_legacy_runs", "migrate_export"]

#: the import name of the plugin package before ``tfovss_fiftyone``
LEGACY_PACKAGE = "plugin"
PACKAGE = "tfovss_fiftyone"

#: the dataset document's run collections and the dataset's in-memory cache of each one's results
_RUN_KINDS = {"evaluations": "_evaluation_cache", "runs": "_run_cache",
              "brain_methods": "_brain_cache", "annotation_runs": "_annotation_cache"}
#: the folder of each kind's results in a FiftyOneDataset export
_EXPORT_RESULTS_DIRS = {"evaluations": "evaluations", "runs": "runs", "brain_methods": "brain",
                        "annotation_runs": "annotations"}


def current_class_path(path) -> str | None:
    """The ``tfovss_fiftyone`` path of a legacy ``plugin.*`` class path, or ``None`` when
    ``path`` is not a legacy path or names no class that exists now."""
    prefix = LEGACY_PACKAGE + "."
    if not isinstance(path, str) or not path.startswith(prefix):
        return None
    new = PACKAGE + "." + path[len(prefix):]
    module_name, _, class_name = new.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return new if isinstance(getattr(module, class_name, None), type) else None


def migrate_legacy_runs(dataset) -> list[str]:
    """Rewrites legacy ``plugin.*`` class paths in the runs of ``dataset`` (a dataset or a view
    of it); returns what it changed, ``"<kind>.<key>: results, config"``, empty when nothing."""
    from bson import DBRef, json_util

    root = dataset._root_dataset
    changed = []
    for kind, cache_name in _RUN_KINDS.items():
        for key, run_doc in dict(getattr(root._doc, kind, None) or {}).items():
            if isinstance(run_doc, DBRef):  # FiftyOne reports corrupted references itself
                continue
            config = dict(run_doc.config or {})
            new_config_cls = current_class_path(config.get("cls"))
            if new_config_cls is None:
                continue  # the config is the marker: migrated runs are not read again
            what = []
            if run_doc.results:
                run_doc.results.seek(0)
                results = json_util.loads(run_doc.results.read().decode())
                new_results_cls = current_class_path(results.get("cls"))
                if new_results_cls is not None:
                    results["cls"] = new_results_cls
                    run_doc.results.delete()
                    run_doc.results.put(json_util.dumps(results).encode(),
                                        content_type="application/json")
                    run_doc.save()
                    what.append("results")
            run_doc.config = dict(config, cls=new_config_cls)
            run_doc.save()
            what.append("config")
            # results loaded before the migration were built from FiftyOne's base classes
            getattr(root, cache_name, {}).pop(key, None)
            changed.append(f"{kind}.{key}: {', '.join(what)}")
    return changed


def migrate_export(export_dir) -> list[str]:
    """Rewrites legacy ``plugin.*`` class paths in a FiftyOneDataset export folder (its
    ``metadata.json`` and the results files of its runs), in place; returns what it changed,
    ``"<kind>.<key>: results, config"``, empty when nothing. Idempotent."""
    import json
    from pathlib import Path

    root = Path(export_dir)
    metadata_path = root / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    changed = []
    for kind, results_dir in _EXPORT_RESULTS_DIRS.items():
        for key, entry in (metadata.get(kind) or {}).items():
            run = json.loads(entry) if isinstance(entry, str) else entry
            new_config_cls = current_class_path((run.get("config") or {}).get("cls"))
            if new_config_cls is None:
                continue
            what = []
            results_path = root / results_dir / f"{key}.json"
            if results_path.is_file():
                results = json.loads(results_path.read_text())
                new_results_cls = current_class_path(results.get("cls"))
                if new_results_cls is not None:
                    results["cls"] = new_results_cls
                    results_path.write_text(json.dumps(results))
                    what.append("results")
            run["config"]["cls"] = new_config_cls
            metadata[kind][key] = json.dumps(run) if isinstance(entry, str) else run
            what.append("config")
            changed.append(f"{kind}.{key}: {', '.join(what)}")
    if changed:  # written last: the config paths mark what is still to do
        metadata_path.write_text(json.dumps(metadata))
    return changed
