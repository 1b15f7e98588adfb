"""Datasets written by the plugin before the ``tfovss_fiftyone`` package (commit 5bf6dc4, whose
stored evaluations name ``plugin.evaluation.*``) keep loading with their stored metrics and keep
showing in the panel, also in a process where only the packages are importable.

The export in tests/data/legacy_v0 was written by that code (tests/data/make_legacy_v0.py);
expected.json holds the metrics it computed."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support.fo import REPO_ROOT, URI_PANEL, unique_name

LEGACY = REPO_ROOT / "tests" / "data" / "legacy_v0"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())["evaluations"]
OLD_PATHS = {"plugin.evaluation.OVSSEvaluationConfig", "plugin.evaluation.OVSSEvaluationResults"}
NEW_PATHS = {"tfovss_fiftyone.evaluation.OVSSEvaluationConfig",
             "tfovss_fiftyone.evaluation.OVSSEvaluationResults"}
FIXTURE_MODULE = REPO_ROOT / "tests" / "data" / "legacy_fixture.py"


def _fixture_module():
    spec = importlib.util.spec_from_file_location("tfovss_legacy_fixture", FIXTURE_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def legacy_ds(fo):
    """The database as the old code wrote it (see tests/data/legacy_fixture.py)."""
    ds = _fixture_module().restore_legacy_database(fo, unique_name("legacy"))
    yield ds
    ds.delete()


def _stored_class_paths(ds) -> set[str]:
    from bson import json_util

    paths = set()
    for key, doc in ds._doc.evaluations.items():
        paths.add(doc.config["cls"])
        doc.results.seek(0)  # the stored bytes, not what FiftyOne makes of them
        paths.add(json_util.loads(doc.results.read().decode())["cls"])
    return paths


def _pct(v):
    return None if v is None else round(100.0 * v, 2)


def test_fixture_holds_old_class_paths(legacy_ds):
    assert sorted(legacy_ds.list_evaluations()) == sorted(EXPECTED)
    assert _stored_class_paths(legacy_ds) == OLD_PATHS


def test_migration_rewrites_class_paths_once(legacy_ds):
    from tfovss_fiftyone.evaluation import OVSSEvaluationConfig
    from tfovss_fiftyone.migrations import current_class_path, migrate_legacy_runs

    # unmigrated, FiftyOne cannot import the stored class and falls back to its base class
    assert not isinstance(legacy_ds.get_evaluation_info("perturbed_eval").config,
                          OVSSEvaluationConfig)
    changed = migrate_legacy_runs(legacy_ds)
    assert sorted(changed) == [f"evaluations.{k}: results, config" for k in sorted(EXPECTED)]
    assert _stored_class_paths(legacy_ds) == NEW_PATHS
    assert migrate_legacy_runs(legacy_ds) == []  # idempotent
    # the pre-label run info (FiftyOne's own RunConfig) is left as it is
    assert legacy_ds.list_runs() == ["tfovss_prelabel_tiny_sclip"]
    assert legacy_ds.get_run_info("tfovss_prelabel_tiny_sclip").config.ovss_method == "sclip"
    # only classes that exist now are rewritten
    assert current_class_path("plugin.evaluation.NoSuchClass") is None
    assert current_class_path("plugin.nosuchmodule.OVSSEvaluationConfig") is None
    assert current_class_path("fiftyone.core.runs.RunConfig") is None


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_stored_results_load_with_stored_values(legacy_ds, key):
    from tfovss_fiftyone.evaluation import OVSSEvaluationConfig, OVSSEvaluationResults
    from tfovss_fiftyone.migrations import migrate_legacy_runs

    expected = EXPECTED[key]
    migrate_legacy_runs(legacy_ds)
    info = legacy_ds.get_evaluation_info(key)
    assert isinstance(info.config, OVSSEvaluationConfig)
    assert info.config.background == expected["background"]
    res = legacy_ds.load_evaluation_results(key)
    assert isinstance(res, OVSSEvaluationResults)
    assert res.mIoU == expected["mIoU"]
    assert res.aAcc == expected["aAcc"] and res.mAcc == expected["mAcc"]
    assert res.iou == expected["iou"]
    assert legacy_ds.values(f"{key}_miou") == expected["per_sample_miou"]
    if key == "tiny_sclip_eval":  # the pre-label's settings are kept with the evaluation
        assert info.config.prelabel["ovss_method"] == "sclip"


def test_panel_lists_and_shows_legacy_runs(foo, legacy_ds):
    from tfovss_fiftyone.panels import per_class_rows

    # the panel's own load event, on a dataset that has not been migrated
    r = foo.execute_operator(URI_PANEL, ctx={
        "dataset": legacy_ds, "params": {"__method__": "on_load", "panel_id": "p1",
                                         "state": {}, "event_args": {}}})
    data = {}
    for q in r.executor._requests:
        data.update(q.params.get("data") or {})
    rows = {row["eval_key"]: row for row in data["runs"]}
    assert set(rows) == set(EXPECTED)
    for key, expected in EXPECTED.items():
        assert rows[key]["mIoU"] == _pct(expected["mIoU"])
        assert rows[key]["aAcc"] == _pct(expected["aAcc"])
        assert rows[key]["pred_field"] == expected["pred_field"]
        shown = [None if math.isnan(c["iou"]) else c["iou"]
                 for c in per_class_rows(legacy_ds, key)]
        assert shown == expected["iou"]
    assert rows["tiny_sclip_eval"]["method"] == "sclip"


def test_legacy_export_imports_after_migrate_export(fo, tmp_path):
    """An old export, migrated on disk, imports with its metrics (FiftyOne's importer would
    otherwise re-save the results with its base class and drop them)."""
    import shutil

    from tfovss_fiftyone.evaluation import OVSSEvaluationResults
    from tfovss_fiftyone.migrations import migrate_export

    export = tmp_path / "export"
    shutil.copytree(LEGACY / "dataset", export)
    assert sorted(migrate_export(export)) == [f"evaluations.{k}: results, config"
                                              for k in sorted(EXPECTED)]
    assert migrate_export(export) == []  # idempotent
    ds = fo.Dataset.from_dir(dataset_dir=str(export), dataset_type=fo.types.FiftyOneDataset,
                             name=unique_name("legacy-export"))
    try:
        assert _stored_class_paths(ds) == NEW_PATHS
        for key, expected in EXPECTED.items():
            res = ds.load_evaluation_results(key)
            assert isinstance(res, OVSSEvaluationResults)
            assert (res.mIoU, res.iou) == (expected["mIoU"], expected["iou"])
    finally:
        ds.delete()


def test_loads_where_only_the_packages_are_importable(tmp_path):
    """A fresh process whose sys.path holds the two packages but not the checkout (so no
    ``plugin``) opens the old database, migrates it and reads the stored metrics."""
    site = tmp_path / "site"
    site.mkdir()
    for package in ("tfovss_core", "tfovss_fiftyone"):
        (site / package).symlink_to(REPO_ROOT / package, target_is_directory=True)
    script = textwrap.dedent(f"""
        import importlib.util, json
        import fiftyone as fo
        assert importlib.util.find_spec("plugin") is None, "the checkout is importable"
        spec = importlib.util.spec_from_file_location("legacy_fixture", {str(FIXTURE_MODULE)!r})
        legacy_fixture = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(legacy_fixture)
        import tfovss_fiftyone
        from tfovss_fiftyone.migrations import migrate_legacy_runs
        from tfovss_fiftyone.panels import evaluation_rows
        ds = legacy_fixture.restore_legacy_database(fo)
        changed = migrate_legacy_runs(ds)
        out = {{"package": tfovss_fiftyone.__file__, "changed": changed,
               "mIoU": {{k: ds.load_evaluation_results(k).mIoU for k in ds.list_evaluations()}},
               "rows": {{r["eval_key"]: r["mIoU"] for r in evaluation_rows(ds)}}}}
        print("RESULT" + json.dumps(out))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIFTYONE_", "PYTHON"))}
    env.update(PYTHONPATH=str(site), FIFTYONE_DATABASE_DIR=str(tmp_path / "db"),
               FIFTYONE_DO_NOT_TRACK="true", FIFTYONE_SHOW_PROGRESS_BARS="false",
               FIFTYONE_DATABASE_VALIDATION="false", FIFTYONE_PLUGINS_DIR=str(tmp_path),
               FIFTYONE_CONFIG_PATH=str(tmp_path / "config.json"))
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    out = json.loads(line[len("RESULT"):])
    assert Path(out["package"]).parent == site / "tfovss_fiftyone"
    assert len(out["changed"]) == len(EXPECTED)
    assert out["mIoU"] == {k: v["mIoU"] for k, v in EXPECTED.items()}
    assert out["rows"] == {k: _pct(v["mIoU"]) for k, v in EXPECTED.items()}
