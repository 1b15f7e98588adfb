"""Panel "OVSS evaluations": every segmentation evaluation of the dataset in one table (method,
backbone, settings, fields, mIoU, pixel accuracy), per-class IoU bars of a run (sortable by
IoU), two runs side by side with per-class deltas, the run's confusion (row-normalised heatmap
and its top-k confused class pairs), the run's settings in full, buttons that open the
pre-label / compare / evaluation / export operators, and one that loads the worst samples of a
run as a view. A correction-effort run (the pre-label scored against what annotators made of it
in Label Studio) is one of these runs; its row also says how much of the pre-label was kept."""
from __future__ import annotations

import json
import math
import threading

import fiftyone.operators as foo
from fiftyone.operators import types

PLUGIN = "@tfovss/ovss"
NONE = "(none)"
SORT_ORDERS = ("class order", "IoU ascending", "IoU descending")
TOP_CONFUSED = 10
#: the heatmap shows at most this many classes (the most confused ones); 171 rows are unreadable
HEATMAP_CLASSES = 20


#: FiftyOne reads a run's stored results through the dataset's shared run document, and two
#: threads reading the same one at once fail ("'str' object has no attribute 'decode'"); the
#: App runs panel events (on_load, on_sort, ...) concurrently, so the panel reads one at a time
_RESULTS_LOCK = threading.Lock()


def _load_results(dataset, key):
    with _RESULTS_LOCK:
        return dataset.load_evaluation_results(key, cache=False)


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
            res = _load_results(dataset, key)
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
        effort = getattr(cfg, "effort", None) or {}
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
            # a pre-label scored against its annotators' correction (Label Studio round trip)
            "kept": _pct(effort.get("share_kept")) if effort else None,
            "pixels_changed": effort.get("pixels_changed") if effort else None,
            "effort": _effort_summary(effort),
        })
    return rows


def _effort_summary(effort: dict) -> str:
    """One line for the runs table: how much of the pre-label the annotators kept."""
    if not effort:
        return ""
    kept = _pct(effort.get("share_kept"))
    return (f"kept {'-' if kept is None else kept} %, {effort.get('pixels_changed', 0):,} of "
            f"{effort.get('pixels_compared', 0):,} px changed, "
            f"{effort.get('num_reviewed', 0)} reviewed")


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
        res = _load_results(dataset, key)
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


def sort_classes(rows: list[dict], order: str, key: str = "iou") -> list[dict]:
    """``rows`` in ``order`` (:data:`SORT_ORDERS`); undefined IoU last whatever the order."""
    if order not in SORT_ORDERS:
        raise ValueError(f"sort order must be one of {SORT_ORDERS}, got {order!r}")
    if order == "class order":
        return list(rows)
    known = [r for r in rows if _f(r.get(key)) is not None]
    unknown = [r for r in rows if _f(r.get(key)) is None]
    known.sort(key=lambda r: _f(r[key]), reverse=order == "IoU descending")
    return known + unknown


def confusion_rows(dataset, key) -> tuple[list[str], list[list[float | None]]]:
    """Class names and the row-normalised pixel confusion matrix of evaluation ``key``
    (rows: ground truth, columns: prediction, each row in % of that class's GT pixels; a class
    without GT pixels has a row of None). ``([], [])`` when the run has no matrix."""
    import numpy as np

    try:
        res = _load_results(dataset, key)
        cm = np.asarray(res.pixel_confusion_matrix, dtype=np.float64)
    except Exception:
        return [], []
    names = [str(c) for c in getattr(res, "class_names", None) or res.classes]
    if cm.ndim != 2 or cm.shape[0] != len(names):
        return [], []
    # a row's total includes pixels predicted with an unnamed value (they are wrong too)
    unmapped = np.asarray(getattr(res, "unmapped_pred", None) or [0] * len(names), np.float64)
    totals = cm.sum(axis=1) + (unmapped if unmapped.shape == (len(names),) else 0)
    out = []
    for i in range(len(names)):
        out.append([None] * len(names) if totals[i] <= 0
                   else [round(100.0 * v / totals[i], 2) for v in cm[i]])
    return names, out


def top_confused_pairs(dataset, key, k: int = TOP_CONFUSED) -> list[dict]:
    """The ``k`` largest off-diagonal cells of the row-normalised confusion matrix:
    ``{"gt", "pred", "percent", "pixels"}``, ``percent`` = share of the GT class's pixels
    predicted as ``pred``."""
    import numpy as np

    names, norm = confusion_rows(dataset, key)
    if not names:
        return []
    cm = np.asarray(_load_results(dataset, key).pixel_confusion_matrix)
    cells = [(norm[i][j], i, j) for i in range(len(names)) for j in range(len(names))
             if i != j and norm[i][j] is not None and cm[i, j] > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [{"gt": names[i], "pred": names[j], "percent": pct, "pixels": int(cm[i, j])}
            for pct, i, j in cells[:k]]


def run_settings_markdown(dataset, key) -> str:
    """Everything the evaluation ``key`` stores about how its predictions were made (the
    pre-label run's method, backbone, vocabulary, every setting) and how it was scored, as a
    Markdown code block: readable in full, nothing cut."""
    try:
        cfg = dataset.get_evaluation_info(key).config
    except Exception as e:
        return f"Run `{key}` cannot be loaded: {e}"
    scored = {k: getattr(cfg, k, None) for k in ("pred_field", "gt_field", "ignore_index",
                                                 "background", "class_map")}
    scored["classes"] = len(getattr(cfg, "classes", None) or [])
    pre = getattr(cfg, "prelabel", None)
    if not pre:
        bench = ((dataset.info or {}).get("tfovss_runs") or {}).get(key)
        pre = bench or "not made by the tfovss pre-label (no settings stored)"
    shown = {"evaluation": scored, "predictions": pre}
    if getattr(cfg, "effort", None):
        shown["correction_effort"] = cfg.effort
    text = json.dumps(shown, indent=2, sort_keys=True, default=str)
    return f"**Settings of `{key}`**\n\n```json\n{text}\n```"


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
        order = ctx.panel.get_state("sort_by") or SORT_ORDERS[0]
        ca = sort_classes([c for c in ca if c["name"] in seen], order)
        cb = [c for c in cb if c["name"] in seen]
        traces = []
        if ca:
            traces.append({"type": "bar", "name": a, "x": [c["name"] for c in ca],
                           "y": [_pct(c["iou"]) for c in ca]})
        if cb:
            by_name = {c["name"]: c for c in cb}
            traces.append({"type": "bar", "name": b, "x": [c["name"] for c in ca],
                           "y": [_pct(by_name.get(c["name"], {}).get("iou")) for c in ca]})
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
        self._set_confusion(ctx, a)

    def _set_confusion(self, ctx, key):
        ds = ctx.dataset
        pairs = top_confused_pairs(ds, key) if key else []
        ctx.panel.set_data("confused_plot", [{
            "type": "bar", "orientation": "h", "name": "GT pixels (%)",
            "y": [f"{p['gt']} → {p['pred']}" for p in reversed(pairs)],
            "x": [p["percent"] for p in reversed(pairs)]}] if pairs else [])
        names, norm = confusion_rows(ds, key) if key else ([], [])
        if names:
            # the classes involved in the most confusion, then the largest, up to the limit
            involved = [n for p in pairs for n in (p["gt"], p["pred"])]
            keep = list(dict.fromkeys(involved))[:HEATMAP_CLASSES]
            idx = [names.index(n) for n in keep] or list(range(min(len(names), HEATMAP_CLASSES)))
            ctx.panel.set_data("confusion_plot", [{
                "type": "heatmap", "colorscale": "Blues", "zmin": 0, "zmax": 100,
                "x": [names[j] for j in idx], "y": [names[i] for i in idx],
                "z": [[norm[i][j] for j in idx] for i in idx],
                "hovertemplate": "GT %{y} → predicted %{x}: %{z}% of GT pixels<extra></extra>"}])
        else:
            ctx.panel.set_data("confusion_plot", [])
        ctx.panel.set_state("settings_md", run_settings_markdown(ds, key) if key else "")

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

    def on_sort(self, ctx):
        ctx.panel.set_state("sort_by", ctx.params.get("value") or SORT_ORDERS[0])
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
                           ("settings", "Settings"), ("fields", "Fields"),
                           ("effort", "Correction effort"), ("when", "When")):
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
        panel.enum("sort_by", list(SORT_ORDERS),
                   default=ctx.panel.get_state("sort_by") or SORT_ORDERS[0],
                   label="Sort classes by", view=types.DropdownView(), on_change=self.on_sort)
        ctable = types.TableView()
        ctable.add_column("class", label="Class")
        ctable.add_column("iou_a", label="IoU % (run)")
        if ctx.panel.get_state("run_b") not in (None, NONE):
            ctable.add_column("iou_b", label="IoU % (compared)")
            ctable.add_column("delta", label="Δ")
        panel.list("classes", types.Object(), view=ctable, label="Per class")
        panel.plot("confused_plot", layout={
            "title": f"Top {TOP_CONFUSED} confused class pairs (% of the GT class's pixels)",
            "height": 360, "margin": {"l": 200}, "xaxis": {"range": [0, 100]}},
            config={"displayModeBar": False}, height=45)
        panel.plot("confusion_plot", layout={
            "title": "Confusion, rows normalised (GT → predicted, %)", "height": 480,
            "margin": {"l": 140, "b": 140}, "yaxis": {"autorange": "reversed"}},
            config={"displayModeBar": False}, height=60)
        panel.md(ctx.panel.get_state("settings_md") or "", name="settings_md")
        return types.Property(panel, view=types.GridView(orientation="vertical", height=100,
                                                         width=100))
