"""Panel "OVSS evaluations": every segmentation evaluation of the dataset in one table (method,
backbone, settings, fields, mIoU, pixel accuracy), per-class IoU bars of a run, two runs side by
side with per-class deltas, buttons that open the pre-label / compare / evaluation / export
operators, and one that loads the worst samples of a run as a view."""
from __future__ import annotations

import math

import fiftyone.operators as foo
from fiftyone.operators import types

PLUGIN = "@tfovss/ovss"
NONE = "(none)"


def _f(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _pct(v):
    v = _f(v)
    return None if v is None else round(100.0 * v, 2)


def evaluation_rows(dataset) -> list[dict]:
    """The panel's table: one row per segmentation evaluation (ours with mIoU; FiftyOne's own
    with accuracy). Evaluations stored by the pre-package plugin are migrated first
    (:mod:`tfovss_fiftyone.migrations`), so they load with their stored metrics."""
    from tfovss_fiftyone.migrations import migrate_legacy_runs

    if dataset is None:
        return []
    migrate_legacy_runs(dataset)
    rows = []
    for key in dataset.list_evaluations(type="segmentation"):
        try:
            info = dataset.get_evaluation_info(key)
            cfg = info.config
            res = dataset.load_evaluation_results(key, cache=False)
        except Exception as e:  # a run that cannot be loaded is still listed
            rows.append({"eval_key": key, "method": "?", "backbone": "", "settings": str(e)[:80],
                         "pred_field": "", "gt_field": "", "mIoU": None, "aAcc": None,
                         "mAcc": None, "when": ""})
            continue
        summary = getattr(res, "metrics_summary", None)
        pre = getattr(cfg, "prelabel", None) or {}
        if not pre:  # runs stored by `tfovss benchmark --fiftyone`
            bench = ((dataset.info or {}).get("tfovss_runs") or {}).get(key) or {}
            if bench:
                pre = {"method": bench.get("method"), "arch": bench.get("arch"),
                       "pretrained": ("SYNTHETIC " if bench.get("synthetic_weights") else "")
                       + str(bench.get("weights") or ""),
                       "vocabulary_source": "benchmark"}
        settings = pre.get("settings") or {}
        short = _short_settings(settings)
        if summary is not None:
            miou, aacc, macc = summary.get("mIoU"), summary.get("aAcc"), summary.get("mAcc")
        else:  # FiftyOne's own segmentation evaluation: mIoU from its confusion matrix
            miou, aacc, macc = _metrics_from_cm(res)
        rows.append({
            "eval_key": key,
            "method": pre.get("method") or ("fiftyone:" + str(getattr(cfg, "method", ""))
                                            if summary is None else "(external)"),
            "backbone": " / ".join(str(x) for x in (pre.get("arch"), pre.get("pretrained"))
                                   if x) if pre else "",
            "settings": short,
            "vocabulary": pre.get("vocabulary_source") or "",
            "pred_field": cfg.pred_field, "gt_field": cfg.gt_field,
            "fields": f"{cfg.pred_field} vs {cfg.gt_field}",
            "mIoU": _pct(miou), "aAcc": _pct(aacc), "mAcc": _pct(macc),
            "when": str(getattr(info, "timestamp", ""))[:19],
        })
    return rows


def _short_settings(settings: dict) -> str:
    parts = []
    if settings.get("short_side") is not None:
        parts.append(f"side {settings['short_side']}")
    if settings.get("crop") is not None:
        parts.append(f"win {settings['crop']}/{settings.get('stride')}")
    if settings.get("prob_thd") is not None:
        parts.append(f"thd {settings['prob_thd']}")
    if settings.get("pamr_steps"):
        parts.append(f"pamr {settings['pamr_steps']}")
    return ", ".join(parts)


def _metrics_from_cm(res):
    try:
        import numpy as np

        from tfovss_core.eval.metrics import metrics_from_confusion

        cm = np.asarray(res.pixel_confusion_matrix)
        m = metrics_from_confusion(cm)
        return m["mIoU"], m["aAcc"], m["mAcc"]
    except Exception:
        return None, None, None


#: the name tests/fiftyone/test_compare.py knows the table builder by
_run_rows = evaluation_rows


def per_class_rows(dataset, key) -> list[dict]:
    """The per-class IoU / accuracy of evaluation ``key`` (``[]`` when it cannot be loaded)."""
    try:
        res = dataset.load_evaluation_results(key, cache=False)
    except Exception:
        return []
    if hasattr(res, "per_class"):
        return res.per_class()
    try:
        import numpy as np

        from tfovss_core.eval.metrics import metrics_from_confusion

        m = metrics_from_confusion(np.asarray(res.pixel_confusion_matrix))
        return [{"name": str(n), "iou": _f(i), "acc": _f(a), "in_mean": True}
                for n, i, a in zip(res.classes, m["IoU"], m["Acc"])]
    except Exception:
        return []


class OVSSEvaluationsPanel(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(
            name="ovss_evaluations",
            label="OVSS evaluations",
            surfaces="grid",
            help_markdown="Segmentation evaluations of this dataset: mIoU (MMSeg-exact), "
                          "per-class IoU, run comparison. Start runs with the buttons.",
        )

    # -- data ----------------------------------------------------------------------------------
    def _refresh(self, ctx):
        rows = evaluation_rows(ctx.dataset)
        keys = [r["eval_key"] for r in rows]
        a = ctx.panel.get_state("run_a")
        b = ctx.panel.get_state("run_b")
        if a not in keys:
            a = keys[-1] if keys else None
        if b not in keys or b == a:
            b = None
        ctx.panel.set_state("run_a", a)
        ctx.panel.set_state("run_b", b or NONE)
        ctx.panel.set_data("runs", rows)
        ctx.panel.set_state("keys", keys)
        self._set_compare(ctx, a, b)

    def _set_compare(self, ctx, a, b):
        ds = ctx.dataset
        ca = per_class_rows(ds, a) if a else []
        cb = per_class_rows(ds, b) if b else []
        # classes absent from both runs (IoU undefined) are left out of the chart and table
        seen = {c["name"] for c in ca + cb if _f(c["iou"]) is not None}
        ca = [c for c in ca if c["name"] in seen]
        cb = [c for c in cb if c["name"] in seen]
        traces = []
        if ca:
            traces.append({"type": "bar", "name": a, "x": [c["name"] for c in ca],
                           "y": [_pct(c["iou"]) for c in ca]})
        if cb:
            traces.append({"type": "bar", "name": b, "x": [c["name"] for c in cb],
                           "y": [_pct(c["iou"]) for c in cb]})
        ctx.panel.set_data("iou_plot", traces)
        by_b = {c["name"]: c for c in cb}
        rows = []
        for c in ca:
            ia = _pct(c["iou"])
            row = {"class": c["name"], "iou_a": ia}
            if b:
                ib = _pct(by_b.get(c["name"], {}).get("iou"))
                row["iou_b"] = ib
                row["delta"] = None if ia is None or ib is None else round(ib - ia, 2)
            rows.append(row)
        ctx.panel.set_data("classes", rows)

    # -- events --------------------------------------------------------------------------------
    def on_load(self, ctx):
        self._refresh(ctx)

    def on_change_dataset(self, ctx):
        self._refresh(ctx)

    def on_refresh(self, ctx):
        self._refresh(ctx)

    def on_change_a(self, ctx):
        ctx.panel.set_state("run_a", ctx.params.get("value"))
        self._refresh(ctx)

    def on_change_b(self, ctx):
        v = ctx.params.get("value")
        ctx.panel.set_state("run_b", v)
        self._refresh(ctx)

    def on_prelabel(self, ctx):
        ctx.prompt(f"{PLUGIN}/prelabel_segmentation")

    def on_compare(self, ctx):
        ctx.prompt(f"{PLUGIN}/compare_ovss_methods")

    def on_evaluate(self, ctx):
        ctx.prompt(f"{PLUGIN}/evaluate_segmentations")

    def on_export(self, ctx):
        ctx.prompt(f"{PLUGIN}/export_coco_masks")

    def on_worst(self, ctx):
        key = ctx.panel.get_state("run_a")
        n = int(ctx.panel.get_state("worst_n") or 25)
        ds = ctx.dataset
        field = f"{key}_miou" if key else None
        if not key or ds is None or field not in ds.get_field_schema():
            ctx.ops.notify("This run has no per-sample mIoU field", variant="warning")
            return
        view = ds.exists(field).sort_by(field).limit(n)
        ctx.ops.set_view(view=view)

    # -- layout --------------------------------------------------------------------------------
    def render(self, ctx):
        panel = types.Object()
        keys = ctx.panel.get_state("keys") or []
        panel.md("mIoU as MMSegmentation accumulates it (dataset-level intersections and "
                 "unions); per-class IoU; pixel accuracy aAcc.", name="intro")
        actions = panel.h_stack("actions", align_x="left", gap=2)
        actions.btn("prelabel", label="Pre-label…", on_click=self.on_prelabel,
                    variant="contained")
        actions.btn("compare", label="Compare methods…", on_click=self.on_compare,
                    variant="outlined")
        actions.btn("evaluate", label="Evaluate…", on_click=self.on_evaluate,
                    variant="outlined")
        actions.btn("export", label="Export COCO…", on_click=self.on_export,
                    variant="outlined")
        actions.btn("refresh", label="Refresh", on_click=self.on_refresh)
        if not keys:
            panel.md("No segmentation evaluation on this dataset yet: pre-label a view, then "
                     "evaluate it against your ground truth.", name="empty")
            return types.Property(panel, view=types.GridView(orientation="vertical",
                                                             height=100, width=100))
        table = types.TableView()
        for col, label in (("eval_key", "Eval key"), ("mIoU", "mIoU %"), ("aAcc", "aAcc %"),
                           ("mAcc", "mAcc %"), ("method", "Method"), ("backbone", "Backbone"),
                           ("settings", "Settings"), ("fields", "Fields"), ("when", "When")):
            table.add_column(col, label=label)
        panel.list("runs", types.Object(), view=table, label="Runs")
        pick = panel.h_stack("pick", align_x="left", gap=2)
        pick.enum("run_a", keys, default=ctx.panel.get_state("run_a"), label="Run",
                  view=types.DropdownView(), on_change=self.on_change_a)
        pick.enum("run_b", [NONE] + keys, default=ctx.panel.get_state("run_b") or NONE,
                  label="Compare with", view=types.DropdownView(), on_change=self.on_change_b)
        pick.btn("worst", label="Open worst samples", on_click=self.on_worst,
                 variant="outlined")
        panel.plot("iou_plot", layout={"title": "Per-class IoU (%)", "barmode": "group",
                                       "height": 360, "margin": {"b": 120},
                                       "yaxis": {"range": [0, 100]}},
                   config={"displayModeBar": False}, height=45)
        ctable = types.TableView()
        ctable.add_column("class", label="Class")
        ctable.add_column("iou_a", label="IoU % (run)")
        if ctx.panel.get_state("run_b") not in (None, NONE):
            ctable.add_column("iou_b", label="IoU % (compared)")
            ctable.add_column("delta", label="Δ")
        panel.list("classes", types.Object(), view=ctable, label="Per class")
        return types.Property(panel, view=types.GridView(orientation="vertical", height=100,
                                                         width=100))
