"""The benchmark's tables in the papers' layout (methods as rows, datasets as columns, Avg):
Markdown, CSV, JSON and the settings used. Kept apart from the runner that fills them."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from tfovss_core.clip.weights import Weights
from tfovss_core.eval.benchmark import RunResult
from tfovss_core.spec.weights import SYNTHETIC_BANNER
from tfovss_core.eval.datasets import BENCHMARK_ORDER, SHORT_NAMES
from tfovss_core.spec.records import jsonable, utc_now

def method_title(method: str) -> str:
    try:
        from tfovss_core.methods import describe_method
        return describe_method(method).get("title") or method
    except Exception:  # noqa: BLE001
        return method


def _column(name: str) -> str:
    return SHORT_NAMES.get(name, name)


def _ordered(names):
    known = [n for n in BENCHMARK_ORDER if n in names]
    return known + [n for n in names if n not in known]


def _fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.2f}"


def build_tables(results: Sequence[RunResult], weights: Weights, *, limit=None, overrides=None,
                 command: str = "", shared_trunk: bool | None = None) -> dict:
    """The papers' layout: ``rows`` (one per method) with mIoU per dataset column and Avg.

    ``shared_trunk``: whether the runner shared the frozen trunk (:class:`BenchmarkRunner`);
    recorded, never changes a number."""
    methods = list(dict.fromkeys(r.spec.method for r in results))
    datasets = _ordered(list(dict.fromkeys(r.spec.dataset for r in results)))
    by = {(r.spec.method, r.spec.dataset): r for r in results}
    rows = []
    for m in methods:
        vals = {}
        for d in datasets:
            r = by.get((m, d))
            vals[d] = None if r is None or r.metrics is None else \
                round(100 * r.metrics["mIoU"], 2)
        full = [v for v in vals.values() if v is not None and np.isfinite(v)]
        avg = round(float(np.mean(full)), 2) if len(full) == len(datasets) and full else None
        rows.append({"method": m, "title": method_title(m), "mIoU": vals, "avg": avg})
    details = {}
    settings = {}
    for r in results:
        imp = r.spec.importer
        entry = {
            "num_images": r.num_images, "total_images": r.total_images,
            "evaluated": r.evaluated, "computed": r.computed, "resumed": r.resumed,
            "failed": r.failed, "settings_key": r.spec.key,
            "run_dir": str(r.spec.dir), "seconds": round(r.seconds, 2),
            "shared_trunk_with": list(r.shared_with),
        }
        if r.metrics is not None:
            names = imp.class_names()
            entry.update({
                "mIoU": _num(100 * r.metrics["mIoU"]), "mAcc": _num(100 * r.metrics["mAcc"]),
                "aAcc": _num(100 * r.metrics["aAcc"]),
                "IoU": {n: _num(100 * v) for n, v in zip(names, r.metrics["IoU"])},
                "Acc": {n: _num(100 * v) for n, v in zip(names, r.metrics["Acc"])},
            })
        details.setdefault(r.spec.method, {})[r.spec.dataset] = entry
        settings.setdefault(r.spec.method, {})[r.spec.dataset] = {
            "settings_key": r.spec.key, "inputs": r.spec.hash_inputs,
            "segmenter": r.describe, "dataset": imp.info()}
    return {
        "title": "tfovss benchmark",
        "synthetic_weights": weights.synthetic,
        "banner": SYNTHETIC_BANNER if weights.synthetic else None,
        "arch": weights.arch, "weights": weights.label, "created": utc_now(),
        "limit": limit, "overrides": overrides or {}, "command": command,
        "shared_trunk": shared_trunk,
        "metric": "mIoU (%), MMSegmentation IoUMetric: intersections and unions summed over the "
                  "dataset, ignore index dropped, classes absent from prediction and ground "
                  "truth skipped",
        "datasets": datasets, "columns": [_column(d) for d in datasets],
        "rows": rows, "details": details, "settings": settings,
    }


def _num(v):
    v = float(v)
    return round(v, 4) if np.isfinite(v) else None


def render_markdown(t: dict) -> str:
    out = io.StringIO()
    w = out.write
    w(f"# {t['title']}: {t['arch']}, weights {t['weights']}\n\n")
    if t["synthetic_weights"]:
        w(f"> **{t['banner']}**\n\n")
    w(f"{t['metric']}. Generated {t['created']}.\n\n")
    cols = t["columns"] + ["Avg"]
    w("| Method | " + " | ".join(cols) + " |\n")
    w("|---|" + "---:|" * len(cols) + "\n")
    for row in t["rows"]:
        cells = [_fmt(row["mIoU"][d]) for d in t["datasets"]] + [_fmt(row["avg"])]
        label = row["title"] + (" (SYNTHETIC WEIGHTS)" if t["synthetic_weights"] else "")
        w(f"| {label} | " + " | ".join(cells) + " |\n")
    w("\n")
    w(f"Avg: mean over the {len(t['datasets'])} datasets of this table (the papers average "
      "their 8 benchmarks: VOC21, Context60, Object, VOC20, Context59, Stuff, City, ADE).\n\n")
    # images per dataset
    w("Images evaluated:\n\n")
    first = next(iter(t["details"].values()))
    for d in t["datasets"]:
        e = first.get(d) or next((v[d] for v in t["details"].values() if d in v), None)
        if e is None:
            continue
        part = "" if e["num_images"] == e["total_images"] else \
            f" (first {e['num_images']} of {e['total_images']}: --limit)"
        n = e["evaluated"]
        w(f"- {_column(d)}: {n} image{'' if n == 1 else 's'}{part}\n")
    failed = [(m, d, e["failed"]) for m, v in t["details"].items() for d, e in v.items()
              if e["failed"]]
    for m, d, f in failed:
        w(f"- {m} / {_column(d)}: {len(f)} images failed and are not counted\n")
    if t["overrides"]:
        w("\nSettings overridden for every run (not the official presets): " +
          ", ".join(f"`{k}={json.dumps(v)}`" for k, v in t["overrides"].items()) + "\n")
    if t.get("shared_trunk") is not None:
        w("\nFrozen trunk: " + ("shared by the methods with the same windows (each image's "
                               "frozen blocks run once for them; outputs identical to separate "
                               "runs)" if t["shared_trunk"] else
                               "not shared (`--no-shared-trunk`)") + ".\n")
    w("\n## Settings used\n\n")
    w("| Method | Dataset | short side | crop / stride | logit scale | prob_thd | area_thd | "
      "PAMR | templates | source |\n|---|---|---:|---|---:|---:|---:|---:|---|---|\n")
    for m, per in t["settings"].items():
        for d in t["datasets"]:
            s = per.get(d)
            if s is None:
                continue
            seg = (s.get("segmenter") or {}).get("settings")
            pre = s["inputs"].get("preset_settings") or {}
            src = (pre.get("source") or "method defaults").replace("|", "/")
            if seg is None:  # model never built in this output: show the preset + overrides
                seg = {**(s["inputs"].get("method_defaults") or {}), **pre,
                       **s["inputs"].get("overrides", {})}
            crop = "whole" if not seg.get("crop") else f"{seg.get('crop')} / {seg.get('stride')}"
            tpl = seg.get("templates", "openai_imagenet")
            tpl = tpl if isinstance(tpl, str) else f"{len(tpl)} custom"
            w(f"| {method_title(m)} | {_column(d)} | {seg.get('short_side')} | {crop} | "
              f"{seg.get('logit_scale')} | {seg.get('prob_thd')} | {seg.get('area_thd')} | "
              f"{seg.get('pamr_steps') or 'off'} | {tpl} | {src} |\n")
    w("\nEvery setting (and per-class IoU): `results.json`, `settings.json`.\n")
    if t.get("command"):
        w(f"\nCommand: `{t['command']}`\n")
    return out.getvalue()


def render_csv(t: dict) -> str:
    out = io.StringIO()
    wr = csv.writer(out, lineterminator="\n")
    wr.writerow(["method"] + t["columns"] + ["Avg", "arch", "weights"])
    for row in t["rows"]:
        wr.writerow([row["title"]] + ["" if row["mIoU"][d] is None else f"{row['mIoU'][d]:.2f}"
                                      for d in t["datasets"]] +
                    ["" if row["avg"] is None else f"{row['avg']:.2f}", t["arch"],
                     t["weights"] + (" (SYNTHETIC WEIGHTS)" if t["synthetic_weights"] else "")])
    return out.getvalue()


def write_outputs(t: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "results.md", "csv": out / "results.csv", "json": out / "results.json",
             "settings": out / "settings.json"}
    paths["md"].write_text(render_markdown(t), encoding="utf-8")
    paths["csv"].write_text(render_csv(t), encoding="utf-8")
    body = {k: v for k, v in t.items() if k != "settings"}
    paths["json"].write_text(json.dumps(jsonable(body), indent=1), encoding="utf-8")
    settings = {"synthetic_weights": t["synthetic_weights"], "banner": t["banner"],
                "arch": t["arch"], "weights": t["weights"], "shared_trunk": t.get("shared_trunk"),
                "runs": t["settings"]}
    paths["settings"].write_text(json.dumps(jsonable(settings), indent=1), encoding="utf-8")
    return paths
