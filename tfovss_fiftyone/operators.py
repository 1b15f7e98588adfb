"""Operators of the ``@tfovss/ovss`` plugin: thin forms over :mod:`tfovss_fiftyone.prelabel`,
:mod:`tfovss_fiftyone.compare`, :mod:`tfovss_fiftyone.evaluation` and :mod:`tfovss_fiftyone.export`. Heavy imports happen
inside the methods."""
from __future__ import annotations

import os

import fiftyone.operators as foo
from fiftyone.operators import types

from tfovss_fiftyone import forms

#: views larger than this default to delegated (background) execution
DELEGATE_ABOVE = 25

VOCAB_SOURCES = ("text", "mask_targets", "preset")
_VOCAB_LABELS = {"text": "Free text (one class per line, synonyms comma-separated)",
                 "mask_targets": "A field's mask_targets (the dataset's own classes)",
                 "preset": "A benchmark preset (its class names and official settings)"}
_DEFAULT_VOCAB = "background\ncat, kitten\ndog, puppy\nperson, man, woman"
#: methods ticked by default in the compare form
COMPARE_DEFAULT = ("sclip", "clearclip", "naclip")
_NO_GT = "(none)"


def _core():
    import tfovss_core

    return tfovss_core


def _method_info(method: str) -> dict:
    """The registry's description of ``method`` (options, add-ons); empty for a name it does not
    know (a stale form value), so the form still renders and execute reports the name."""
    core = _core()
    try:
        return core.describe_method(method)
    except core.TfovssError:
        return {"options": [], "addons": []}


def _full_method(params) -> str:
    """The chosen method with the add-ons ticked in the form (those the registry lists for it)."""
    method = params.get("method") or "sclip"
    return forms.composed_method(method, params, _method_info(method).get("addons", []))


def _target_count(ctx) -> int:
    try:
        return len(ctx.target_view())
    except Exception:
        return 0


def _mask_targets_choices(dataset) -> dict[str, dict]:
    out = {}
    if dataset is None:
        return out
    for f, t in (dataset.mask_targets or {}).items():
        if t:
            out[f] = t
    if dataset.default_mask_targets:
        out["(dataset default)"] = dataset.default_mask_targets
    return out


def _fail(message: str):
    raise ValueError(message)


def _operator_config(name: str, label: str, description: str):
    """Every tfovss operator: dynamic form, runs immediately or delegated (the choice is offered)."""
    return foo.OperatorConfig(name=name, label=label, description=description, dynamic=True,
                              allow_immediate_execution=True, allow_delegated_execution=True,
                              default_choice_to_delegated=False)


def _execution_options(ctx, delegate_above: int):
    """Delegated by default when the target holds more than ``delegate_above`` samples."""
    from fiftyone.operators.executor import ExecutionOptions

    return ExecutionOptions(allow_immediate_execution=True, allow_delegated_execution=True,
                            default_choice_to_delegated=_target_count(ctx) > delegate_above)


# -- form sections shared by the pre-label and compare operators ----------------------------------

def _add_backbone(inputs):
    inputs.view("backbone_header", types.Header(label="Backbone", divider=True))
    inputs.str("arch", default="ViT-B-16", required=True, label="Architecture",
               description="open_clip architecture, e.g. ViT-B-16, ViT-L-14")
    inputs.str("pretrained", default="openai", required=True, label="Pretrained weights",
               description="A pretrained tag (openai, laion2b_s34b_b88k, ...) or the path "
                           "of a local checkpoint")


def _add_vocabulary(inputs, ds, params):
    inputs.view("vocab_header", types.Header(label="Vocabulary", divider=True))
    mt_choices = _mask_targets_choices(ds)
    sources = [s for s in VOCAB_SOURCES if s != "mask_targets" or mt_choices]
    source = params.get("vocab_source") or ("mask_targets" if mt_choices else "text")
    forms.add_choice(inputs, "vocab_source", sources, default=source, label="Classes from",
                     labels=_VOCAB_LABELS, radio=True)
    if source == "mask_targets" and mt_choices:
        names = list(mt_choices)
        forms.add_choice(inputs, "vocab_field", names, default=names[0],
                         label="mask_targets of")
        chosen = params.get("vocab_field") or names[0]
        t = mt_choices.get(chosen, {})
        preview = ", ".join(f"{k}: {v}" for k, v in list(sorted(
            ((int(k), v) for k, v in t.items())))[:30])
        more = f" (+{len(t) - 30} more)" if len(t) > 30 else ""
        forms.notice(inputs, "vocab_preview", f"{len(t)} classes: {preview}{more}")
    elif source == "preset":
        presets = _core().presets.list_presets()
        forms.add_choice(inputs, "preset", presets, default="voc21" if "voc21" in presets
                         else presets[0], label="Preset")
        forms.notice(inputs, "preset_note", "The preset's official settings for the "
                     "method apply; values set below override them.")
    else:
        inputs.str("vocabulary", default=_DEFAULT_VOCAB, required=True,
                   label="Classes", description="One class per line; synonyms separated "
                   "by commas; the first line gets the pixels under the background "
                   "threshold. Optional 'value:' prefixes set the mask values.",
                   view=types.TextFieldView(multiline=True, rows=6))
        text = params.get("vocabulary")
        if text is not None:
            from tfovss_fiftyone.prelabel import PrelabelInputError, parse_vocabulary
            try:
                parse_vocabulary(text)
            except PrelabelInputError as e:
                forms.error(inputs, "vocab_error", str(e))


def _read_vocabulary(ctx):
    """``(classes, vocabulary source)`` from the vocabulary section's parameters."""
    p = ctx.params
    source = p.get("vocab_source") or "text"
    if source == "mask_targets":
        key = p.get("vocab_field")
        targets = _mask_targets_choices(ctx.dataset).get(key)
        if not targets:
            _fail(f"no mask_targets found for '{key}'")
        return {int(k): v for k, v in targets.items()}, f"mask_targets:{key}"
    if source == "preset":
        return p.get("preset"), f"preset:{p.get('preset')}"
    return p.get("vocabulary") or "", "text"


def _add_settings(inputs):
    inputs.view("settings_header", types.Header(label="Settings", divider=True))
    for name, kind, label, desc in forms.DRIVER_SETTINGS:
        forms.add_optional_number(inputs, name, kind, label, desc)
    inputs.str("device", default="auto", label="Device",
               description="auto, cpu, cuda, cuda:1, ...")
    inputs.int("batch_size", default=8, min=1, label="Batch size",
               description="Samples per write batch and CLIP windows per forward pass")
    inputs.int("images_per_batch", default=1, min=1, label="Images per forward pass",
               description="Samples whose windows go through the model together: more keeps a GPU "
                           "busy (the same masks); 1 on a CPU")


def _check_output_fields(inputs, ds, fields, prop_name):
    """Marks ``prop_name`` invalid when one of ``fields`` exists with other labels than
    Segmentation; warns and offers *Overwrite* when some exist as Segmentation fields."""
    import fiftyone as fo

    schema = ds.get_field_schema() if ds is not None else {}
    existing = []
    for f in fields:
        if f not in schema:
            continue
        doc = getattr(schema[f], "document_type", None)
        if doc is None or not issubclass(doc, fo.Segmentation):
            forms.invalid(inputs, prop_name, f"'{f}' exists and is not a Segmentation field")
            return
        existing.append(f)
    if existing:
        what = (f"Field '{existing[0]}' exists" if len(existing) == 1 else
                "Fields " + ", ".join(f"'{f}'" for f in existing) + " exist")
        forms.add_overwrite(inputs, "exists_warning",
                            f"{what}. Samples already labelled with the same settings are "
                            "skipped; labels made otherwise are only replaced if you allow "
                            "overwriting.", "Overwrite existing labels and mask files")


def _add_skip_labelled(inputs):
    forms.add_checkbox(inputs, "skip_labelled", "Skip samples already labelled with the same "
                       "settings (resume)", default=True)


def _add_resume_and_mask_folder(inputs, ds):
    _add_skip_labelled(inputs)
    from tfovss_fiftyone.prelabel import default_output_dir
    inputs.str("output_dir", default=default_output_dir(ds) if ds is not None else None,
               required=True, label="Mask folder",
               description="Masks are written here as PNG files (<field>/<sample id>_"
                           "<settings hash>.png)")
    # where the model runs: here, or a pool of Ray actors (the labels are written here either way)
    forms.add_choice(inputs, "execution", ["local", "ray"], default="local", label="Run on",
                     radio=True, labels={"local": "This process",
                                         "ray": "Ray cluster at ADDRESS"})
    inputs.str("ray_address", default="", label="Ray cluster address",
               description="With 'Ray cluster': e.g. ray://head:10001 or auto; empty starts a "
                           "local Ray. The mask folder must be shared storage the cluster "
                           "writes to (needs the [ray] extra)")


def _add_delegate_note(inputs, ctx):
    n = _target_count(ctx)
    if n > DELEGATE_ABOVE:
        forms.notice(inputs, "delegate_note", f"{n} samples: this runs as a delegated "
                     "operation by default (needs `fiftyone delegated launch`).")


def _add_eval_protocol(inputs):
    forms.add_choice(inputs, "background", ["class", "ignore"], default="class",
                     label="Background (value 0)", radio=True,
                     labels={"class": "A class like any other (VOC protocol)",
                             "ignore": "Not evaluated (ADE20K reduce_zero_label protocol)"})
    inputs.int("ignore_index", default=255, label="Ignore index",
               description="Ground-truth value that is never evaluated (void)")


def _run_params(p) -> dict:
    """Backbone, settings and output arguments of ``prelabel`` / ``prelabel_many``."""
    return dict(arch=p.get("arch") or "ViT-B-16", pretrained=p.get("pretrained") or "openai",
                settings=forms.read_settings(p), device=p.get("device") or None,
                batch_size=int(p.get("batch_size") or 8),
                images_per_batch=int(p.get("images_per_batch") or 1),
                output_dir=forms.path_param(p.get("output_dir")),
                overwrite=bool(p.get("overwrite")),
                skip_labelled=p.get("skip_labelled", True) is not False,
                ray_address=(p.get("ray_address") or "local")
                if p.get("execution") == "ray" else None)


def _prelabel_form(inputs, ctx) -> None:
    """The pre-label form: method and its options, backbone, vocabulary, settings, output."""
    params = ctx.params
    ds = ctx.dataset
    core = _core()

    # -- method -------------------------------------------------------------------------
    methods = core.list_methods()
    forms.add_choice(inputs, "method", methods, default="sclip" if "sclip" in methods
                     else methods[0], label="Method",
                     description="Training-free OVSS method")
    method = params.get("method") or ("sclip" if "sclip" in methods else methods[0])
    forms.add_addon_choices(inputs, _method_info(method).get("addons", []))
    full = _full_method(params)
    info = _method_info(full)
    if info.get("options"):
        inputs.view("options_header", types.Header(label=f"{full} options", divider=True))
        forms.add_method_options(inputs, info["options"])

    _add_backbone(inputs)
    _add_vocabulary(inputs, ds, params)
    _add_settings(inputs)

    # -- output -------------------------------------------------------------------------
    inputs.view("output_header", types.Header(label="Output", divider=True))
    default_field = f"ovss_{method}"
    inputs.str("label_field", default=default_field, required=True, label="Output field")
    field = params.get("label_field") or default_field
    _check_output_fields(inputs, ds, [field], "label_field")
    # the same choice as apply_model: PNG files (mask_path) or the database (mask)
    forms.add_choice(inputs, "mask_storage", ["files", "database"], default="files",
                     label="Store masks", radio=True,
                     labels={"files": "As PNG files in a mask folder (mask_path)",
                             "database": "In the database (mask): no files, larger DB"})
    if params.get("mask_storage") == "database":
        _add_skip_labelled(inputs)
    else:
        _add_resume_and_mask_folder(inputs, ds)
    forms.add_checkbox(inputs, "confidence", "Also store the per-pixel confidence as a "
                       "heatmap field")
    if params.get("confidence"):
        inputs.str("confidence_field", default=f"{field}_confidence", required=True,
                   label="Confidence field")
    _add_delegate_note(inputs, ctx)


class PrelabelSegmentation(foo.Operator):
    @property
    def config(self):
        return _operator_config(
            "prelabel_segmentation", "Pre-label with open-vocabulary segmentation",
            "Segment the target samples with a training-free open-vocabulary method "
            "(SCLIP, ClearCLIP, NACLIP, ...) and your vocabulary")

    def resolve_execution_options(self, ctx):
        return _execution_options(ctx, DELEGATE_ABOVE)

    def resolve_input(self, ctx):
        return forms.operator_form(ctx, "Pre-label with open-vocabulary segmentation",
                                   _prelabel_form)

    def execute(self, ctx):
        from tfovss_fiftyone.prelabel import PrelabelInputError, prelabel

        import tfovss_core as tc

        p = ctx.params
        view = ctx.target_view()
        full = _full_method(p)
        info = _method_info(full)
        classes, vocab_src = _read_vocabulary(ctx)
        field = p.get("label_field")
        conf_field = (p.get("confidence_field") or f"{field}_confidence") \
            if p.get("confidence") else None
        try:
            report = prelabel(
                view, field, classes=classes, method=full,
                method_options=forms.read_method_options(p, info.get("options", [])),
                confidence_field=conf_field, progress=forms.Progress(ctx),
                vocabulary_source=vocab_src,
                masks_in_db=p.get("mask_storage") == "database", **_run_params(p))
        except (PrelabelInputError, tc.TfovssError) as e:
            _fail(f"Pre-label not started: {e}")
        if not ctx.delegated:
            ctx.trigger("reload_dataset")
        out = report.to_dict()
        out["failures"] = [f"{f['filepath']}: {f['error']}" for f in report.failures]
        out["failures_text"] = failures_markdown(report.failures)
        return out

    def resolve_output(self, ctx):
        return forms.result_view("Pre-label finished", (
            ("field", "str", "Field"),
            ("num_labelled", "int", "Samples labelled"),
            ("num_skipped", "int", "Skipped (already labelled, same settings)"),
            ("num_failed", "int", "Failed"),
            ("failures_text", "markdown", "Failures"),
            ("mask_dir", "str", "Mask folder"),
            ("settings_hash", "str", "Settings hash")))


def failures_markdown(failures) -> str:
    """A run's failures in full, one Markdown list item per sample (file, then the whole
    error message); "none" when there are none."""
    if not failures:
        return "none"

    def esc(text):  # Markdown must not eat the paths' underscores or the messages' stars
        return "".join("\\" + ch if ch in "\\`*_[]<>#|" else ch for ch in str(text))
    return "\n".join(f"- **{esc(os.path.basename(str(f['filepath'])))}** "
                     f"({esc(f['filepath'])}): {esc(f['error'])}" for f in failures)


def _evaluation_form(inputs, ctx) -> None:
    """The evaluate form: two Segmentation fields, key, protocol, classes."""
    ds = ctx.dataset
    params = ctx.params
    fields = forms.segmentation_fields(ds)
    if len(fields) < 2:
        forms.error(inputs, "no_fields", "This evaluation needs two Segmentation fields "
                    "(predictions and ground truth); the dataset has "
                    f"{len(fields)}: {fields}")
        return
    gt_guess = next((f for f in fields if "ground" in f or f in ("gt", "labels")), fields[0])
    pred_guess = next((f for f in fields if f != gt_guess), fields[0])
    forms.add_choice(inputs, "pred_field", fields, default=pred_guess, label="Predictions")
    forms.add_choice(inputs, "gt_field", fields, default=gt_guess, label="Ground truth")
    pred = params.get("pred_field") or pred_guess
    gt = params.get("gt_field") or gt_guess
    if pred == gt:
        forms.invalid(inputs, "gt_field", "choose two different fields")
    key_default = f"eval_{pred}"
    inputs.str("eval_key", default=key_default, required=True, label="Evaluation key")
    key = params.get("eval_key") or key_default
    if ds is not None and key in ds.list_evaluations():
        forms.add_overwrite(inputs, "key_exists", f"Evaluation '{key}' exists.", "Replace it")
    _add_eval_protocol(inputs)
    inputs.str("classes", default=None, required=False, label="Classes (optional)",
               description="Comma-separated subset of the ground truth's class names; "
                           "empty: all classes of its mask_targets")
    forms.add_checkbox(inputs, "compute_sample_miou", "Write per-sample mIoU (<key>_miou) to "
                       "sort the worst samples", default=True)
    if ds is not None and gt in fields:
        _classes_note(inputs, ds, gt, pred, params)


def _classes_note(inputs, ds, gt, pred, params) -> None:
    from tfovss_fiftyone.evaluation import (EvaluationInputError, resolve_classes,
                                            suggest_class_map, unmatched_prediction_classes)

    try:
        table = resolve_classes(ds, gt, pred, None)
        unmatched = unmatched_prediction_classes(ds, gt, pred) if pred in \
            forms.segmentation_fields(ds) else []
    except EvaluationInputError as e:
        forms.warning(inputs, "classes_warn", str(e))
        return
    names = list(table.values())
    forms.notice(inputs, "classes_note", f"{len(table)} classes from mask_targets: " +
                 ", ".join(names[:12]) + (" ..." if len(table) > 12 else ""))
    if unmatched:
        # names differ (a vocabulary of one's own): offer the mapping instead of failing
        guess = suggest_class_map(unmatched, names)
        default = "\n".join(f"{u} = {guess.get(u, '')}" for u in unmatched)
        forms.warning(inputs, "class_map_note", f"The predictions name {len(unmatched)} "
                      f"classes the ground truth does not have: {', '.join(unmatched)}. Map "
                      "each to a ground-truth class below (empty: counted as wrong).")
        inputs.str("class_map", default=default, required=False,
                   label="Class-name mapping (predicted = ground truth, one per line)",
                   view=types.CodeView(language="text"))


def parse_class_map(text) -> dict[str, str | None]:
    """The form's mapping lines ``predicted = ground truth`` (or ``;``-separated) as a dict;
    an empty right side maps to None (counted as wrong)."""
    out: dict[str, str | None] = {}
    for line in str(text or "").replace(";", "\n").splitlines():
        if not line.strip():
            continue
        if "=" not in line:
            _fail(f"class-name mapping line {line.strip()!r} has no '=' (write 'predicted = "
                  "ground truth')")
        pred_name, target = (part.strip() for part in line.split("=", 1))
        out[pred_name] = target or None
    return out


def _evaluation_args(p) -> dict:
    """The form's parameters as the arguments of ``run_evaluation``."""
    classes = [c.strip() for c in str(p.get("classes") or "").split(",") if c.strip()]
    return dict(pred_field=p.get("pred_field"), gt_field=p.get("gt_field"),
                eval_key=p.get("eval_key"), classes=classes or None,
                ignore_index=int(p.get("ignore_index", 255)),
                background=p.get("background") or "class",
                compute_sample_miou=p.get("compute_sample_miou", True) is not False,
                class_map=parse_class_map(p.get("class_map")) or None,
                overwrite=bool(p.get("overwrite")))


def _evaluation_result(eval_key, res) -> dict:
    s = res.metrics_summary
    return {"eval_key": eval_key, "mIoU": _pct(s.get("mIoU")), "mAcc": _pct(s.get("mAcc")),
            "aAcc": _pct(s.get("aAcc")), "num_evaluated": s.get("num_evaluated"),
            "per_class": [f"{c['name']}: IoU {_pct(c['iou'])}, Acc {_pct(c['acc'])}"
                          for c in res.per_class()]}


class EvaluateSegmentations(foo.Operator):
    @property
    def config(self):
        return _operator_config(
            "evaluate_segmentations", "Evaluate segmentations (mIoU)",
            "MMSeg-exact mIoU, per-class IoU/accuracy, pixel accuracy, per-sample mIoU and a "
            "confusion matrix, stored as a FiftyOne evaluation")

    def resolve_execution_options(self, ctx):
        return _execution_options(ctx, 500)

    def resolve_input(self, ctx):
        return forms.operator_form(ctx, "Evaluate segmentations", _evaluation_form)

    def execute(self, ctx):
        from tfovss_fiftyone.evaluation import EvaluationInputError, run_evaluation

        args = _evaluation_args(ctx.params)
        try:
            res = run_evaluation(ctx.target_view(), **args, progress=forms.Progress(ctx))
        except EvaluationInputError as e:
            _fail(f"Evaluation not run: {e}")
        if not ctx.delegated:
            ctx.trigger("reload_dataset")
        return _evaluation_result(args["eval_key"], res)

    def resolve_output(self, ctx):
        return forms.result_view("Evaluation finished", (
            ("eval_key", "str", "Evaluation key"),
            ("mIoU", "float", "mIoU (%)"),
            ("aAcc", "float", "Pixel accuracy aAcc (%)"),
            ("mAcc", "float", "Mean class accuracy mAcc (%)"),
            ("num_evaluated", "int", "Samples evaluated"),
            ("per_class", "strings", "Per class")))


def _compare_form(inputs, ctx) -> None:
    """The compare form: methods, backbone, vocabulary, settings, output, evaluation."""
    from tfovss_fiftyone.compare import method_field

    params = ctx.params
    ds = ctx.dataset

    # -- methods ------------------------------------------------------------------------
    methods = _core().list_methods()
    default = [m for m in COMPARE_DEFAULT if m in methods] or methods[:2]
    forms.add_multi_choice(
        inputs, "methods", methods, default=default, label="Methods",
        description="Methods that see the same windows share the frozen CLIP blocks "
                    "(computed once per batch of windows); each keeps its default options")
    chosen = _chosen_methods(params, default)
    if not chosen:
        forms.invalid(inputs, "methods", "Pick at least one method")

    _add_backbone(inputs)
    _add_vocabulary(inputs, ds, params)
    _add_settings(inputs)
    if params.get("vocab_source") == "preset":
        forms.notice(inputs, "trunk_note", "With a preset each method gets its official "
                     "window settings; methods whose windows differ do not share the "
                     "trunk. Set short side, window size and stride to share it.")

    # -- output -------------------------------------------------------------------------
    inputs.view("output_header", types.Header(label="Output", divider=True))
    inputs.str("field_prefix", default="ovss_", required=False, label="Field prefix",
               description="Each method writes the field <prefix><method>")
    fields = [method_field(params.get("field_prefix") or "ovss_", m) for m in chosen]
    if fields:
        forms.notice(inputs, "fields_note", "Fields: " + ", ".join(fields))
    _check_output_fields(inputs, ds, fields, "field_prefix")
    _add_resume_and_mask_folder(inputs, ds)

    # -- evaluation ---------------------------------------------------------------------
    inputs.view("eval_header", types.Header(label="Evaluation", divider=True))
    gts = [f for f in forms.segmentation_fields(ds) if f not in fields]
    gt_guess = next((f for f in gts if "ground" in f or f in ("gt", "labels")), _NO_GT)
    forms.add_choice(inputs, "gt_field", [_NO_GT] + gts, default=gt_guess,
                     label="Ground truth (optional)",
                     description="Evaluate every method's field against it (mIoU); the "
                                 "OVSS evaluations panel then compares them")
    if _gt_param(params.get("gt_field", gt_guess)):
        inputs.str("eval_prefix", default="eval_", required=False,
                   label="Evaluation key prefix", description="Keys are <prefix><field>")
        keys = [(params.get("eval_prefix") or "eval_") + f for f in fields]
        existing = [k for k in keys if ds is not None and k in ds.list_evaluations()]
        if existing:
            forms.add_overwrite(inputs, "evals_exist", "Evaluations " + ", ".join(existing)
                                + " exist.", "Replace them", name="overwrite_evaluations")
        _add_eval_protocol(inputs)
    _add_delegate_note(inputs, ctx)


class CompareMethods(foo.Operator):
    @property
    def config(self):
        return _operator_config(
            "compare_ovss_methods", "Compare OVSS methods",
            "Pre-label several methods in one pass on a shared CLIP trunk (each field identical "
            "to that method run alone) and evaluate each against the ground truth")

    def resolve_execution_options(self, ctx):
        return _execution_options(ctx, DELEGATE_ABOVE)

    def resolve_input(self, ctx):
        return forms.operator_form(ctx, "Compare OVSS methods", _compare_form)

    def execute(self, ctx):
        from tfovss_fiftyone.compare import compare_methods
        from tfovss_fiftyone.evaluation import EvaluationInputError
        from tfovss_fiftyone.prelabel import PrelabelInputError

        import tfovss_core as tc

        p = ctx.params
        classes, vocab_src = _read_vocabulary(ctx)
        gt = _gt_param(p.get("gt_field"))
        try:
            out = compare_methods(
                ctx.target_view(), _chosen_methods(p, []), classes=classes,
                field_prefix=p.get("field_prefix") or "ovss_", gt_field=gt,
                eval_prefix=p.get("eval_prefix") or "eval_",
                background=p.get("background") or "class",
                ignore_index=int(p.get("ignore_index", 255)),
                overwrite_evaluations=bool(p.get("overwrite_evaluations")),
                progress=forms.Progress(ctx), vocabulary_source=vocab_src, **_run_params(p))
        except (PrelabelInputError, EvaluationInputError, tc.TfovssError) as e:
            _fail(f"Comparison not started: {e}")
        if not ctx.delegated:
            ctx.trigger("reload_dataset")
        rows = [{**r, "mIoU": _pct(r["mIoU"]), "mAcc": _pct(r["mAcc"]), "aAcc": _pct(r["aAcc"])}
                for r in out.rows()]
        summary = []
        for r in rows:
            done = f"{r['num_labelled']} labelled, {r['num_skipped']} skipped, " \
                   f"{r['num_failed']} failed"
            if r["error"]:
                done += f"; not evaluated: {r['error']}"
            elif r["eval_key"]:
                done = f"mIoU {r['mIoU']} % ({r['eval_key']}); " + done
            summary.append(f"{r['method']} -> {r['field']}: {done}")
        return {"per_method": rows, "summary": summary, "gt_field": gt,
                "trunk_runs": out.prelabel.trunk_runs,
                "failures": [f"{f['filepath']}: {f['error']}" for f in out.prelabel.failures]}

    def resolve_output(self, ctx):
        # the per-method sentences ("summary") stay in the result for Python callers: the App
        # shows lists of strings as one-line chips, which cut long evaluation errors short
        outputs = types.Object()
        table = types.TableView()
        for col, label in (("method", "Method"), ("field", "Field"), ("mIoU", "mIoU %"),
                           ("aAcc", "aAcc %"), ("mAcc", "mAcc %"), ("eval_key", "Eval key"),
                           ("num_labelled", "Labelled"), ("num_skipped", "Skipped"),
                           ("num_failed", "Failed")):
            table.add_column(col, label=label)
        outputs.list("per_method", types.Object(), view=table, label="Methods")
        results = ctx.results or {}
        for n, row in enumerate(results.get("per_method") or []):
            if row.get("error"):
                forms.warning(outputs, f"not_evaluated_{n}", f"{row['method']} "
                              f"({row['field']}) not evaluated: {row['error']}")
        rows = [("trunk_runs", "int", "Shared trunk passes (batches of windows)")]
        if results.get("failures"):
            rows.append(("failures", "strings", "Failures"))
        return forms.result_view("Comparison finished", rows, outputs)


def _chosen_methods(params, default) -> list[str]:
    """The ``methods`` parameter: a list, or a comma-separated string from Python callers."""
    value = params.get("methods", default)
    if isinstance(value, str):
        value = value.split(",")
    return [str(m).strip() for m in (value or []) if str(m).strip()]


def _gt_param(value):
    return None if value in (None, "", _NO_GT) else value


def _pct(v):
    import math

    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return round(100.0 * float(v), 2)


def _export_form(inputs, ctx) -> None:
    """The export form: field, path, encoding, one annotation per class or per region."""
    import os

    import fiftyone as fo

    ds = ctx.dataset
    params = ctx.params
    field = forms.get_segmentation_field(ctx, inputs,
                                         "The dataset has no Segmentation field to export")
    if field is None:
        return
    default_path = os.path.join(fo.config.default_dataset_dir, "tfovss_export", ds.name,
                                f"{field}_coco.json")
    inputs.str("labels_path", default=default_path, required=True, label="COCO JSON path")
    forms.add_choice(inputs, "encoding", ["rle", "polygon"], default="rle", label="Encoding",
                     radio=True, labels={"rle": "Compressed RLE (exact)",
                                         "polygon": "Polygons (pixel-edge outlines, exact "
                                                    "unless simplified)"})
    if params.get("encoding") == "polygon":
        inputs.float("tolerance", default=0.0, min=0.0, label="Simplification tolerance "
                     "(px, 0 = exact)")
    forms.add_choice(inputs, "split", ["class", "component"], default="class",
                     label="Annotations", radio=True,
                     labels={"class": "One per class per image",
                             "component": "One per connected region"})
    forms.add_checkbox(inputs, "include_background", "Export value 0 (background) as a "
                       "category too")
    path = params.get("labels_path") or default_path
    if os.path.exists(path):
        forms.add_overwrite(inputs, "path_exists", f"'{path}' exists.", "Overwrite it")
    if not ((ds.mask_targets or {}).get(field) or ds.default_mask_targets):
        forms.error(inputs, "no_targets", f"'{field}' has no mask_targets: set its class "
                    "names first")


def _export_args(p) -> dict:
    """The form's parameters as the arguments of ``export_coco_masks``."""
    return dict(label_field=p.get("label_field"),
                labels_path=forms.path_param(p.get("labels_path")),
                encoding=p.get("encoding") or "rle", split=p.get("split") or "class",
                include_background=bool(p.get("include_background")),
                tolerance=float(p.get("tolerance") or 0.0), overwrite=bool(p.get("overwrite")))


class ExportCocoMasks(foo.Operator):
    @property
    def config(self):
        return _operator_config(
            "export_coco_masks", "Export COCO masks",
            "Write a Segmentation field as COCO annotations (compressed RLE or polygons) with "
            "pycocotools")

    def resolve_input(self, ctx):
        return forms.operator_form(ctx, "Export COCO masks", _export_form)

    def execute(self, ctx):
        from tfovss_fiftyone.export import ExportInputError, export_coco_masks

        try:
            return export_coco_masks(ctx.target_view(), **_export_args(ctx.params),
                                     progress=forms.Progress(ctx))
        except ExportInputError as e:
            _fail(f"Export not written: {e}")

    def resolve_output(self, ctx):
        return forms.result_view("COCO export finished", (
            ("labels_path", "str", "Written"),
            ("num_images", "int", "Images"),
            ("num_annotations", "int", "Annotations"),
            ("num_categories", "int", "Categories")))


# -- Label Studio round trip (tfovss_fiftyone.labelstudio) ------------------------------------------

def _labelstudio_connection(inputs, ctx):
    import os

    from tfovss_fiftyone.labelstudio import API_KEY_ENV, URL_ENV

    inputs.str("url", default=ctx.secrets.get(URL_ENV) or os.environ.get(URL_ENV) or
               "http://127.0.0.1:8080", required=True, label="Label Studio URL")
    if not (ctx.secrets.get(API_KEY_ENV) or os.environ.get(API_KEY_ENV)):
        forms.warning(inputs, "no_key", f"Set the {API_KEY_ENV} secret (or environment "
                      "variable) of the FiftyOne server: the API key is never a form field.")


def _labelstudio_key(ctx):
    from tfovss_fiftyone.labelstudio import API_KEY_ENV

    return ctx.secrets.get(API_KEY_ENV) or None  # None: the library reads the environment


def _send_form(inputs, ctx) -> None:
    """The send form: field, connection, project, how Label Studio gets the images."""
    from tfovss_fiftyone.labelstudio import IMAGE_ROUTES

    ds = ctx.dataset
    field = forms.get_segmentation_field(ctx, inputs,
                                         "The dataset has no Segmentation field to send")
    if field is None:
        return
    _labelstudio_connection(inputs, ctx)
    inputs.str("project", default=f"tfovss {ds.name} {field}", required=True,
               label="Project title", description="Created if no project has this title")
    forms.add_choice(inputs, "image_route", list(IMAGE_ROUTES), default="upload",
                     label="Images", radio=True,
                     labels={"upload": "Upload them to Label Studio",
                             "local-files": "Label Studio serves them from its local-files "
                                            "document root"})
    if ctx.params.get("image_route") == "local-files":
        inputs.str("document_root", required=True, label="Document root",
                   description="The server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
    inputs.int("batch_size", default=20, min=1, label="Tasks per request")


class SendToLabelStudio(foo.Operator):
    @property
    def config(self):
        cfg = _operator_config(
            "send_to_labelstudio", "Send pre-labels to Label Studio",
            "Send a Segmentation field to a Label Studio project as predictions (one brush "
            "region per class) for annotators to correct; a re-send updates the tasks")
        return cfg

    def resolve_input(self, ctx):
        return forms.operator_form(ctx, "Send to Label Studio", _send_form)

    def execute(self, ctx):
        from tfovss_fiftyone.labelstudio import LabelStudioError, send_for_review

        p = ctx.params
        try:
            report = send_for_review(
                ctx.target_view(), p.get("label_field"), url=p.get("url"),
                api_key=_labelstudio_key(ctx), project=p.get("project"),
                image_route=p.get("image_route") or "upload",
                document_root=forms.path_param(p.get("document_root")),
                batch_size=int(p.get("batch_size") or 20), progress=forms.Progress(ctx))
        except LabelStudioError as e:
            _fail(f"Nothing sent: {e}")
        out = report.to_dict()
        out["num_tasks"] = len(out.pop("tasks"))
        return out

    def resolve_output(self, ctx):
        return forms.result_view("Sent to Label Studio", (
            ("project_title", "str", "Project"),
            ("project_id", "int", "Project id"),
            ("num_created", "int", "Tasks created"),
            ("num_updated", "int", "Tasks updated"),
            ("num_unlabelled", "int", "Samples without a label (not sent)"),
            ("model_version", "str", "Model version (settings hash)")))


def _load_form(inputs, ctx) -> None:
    """The load form: a sent field, output field, connection, unlabelled pixels."""
    from tfovss_fiftyone.labelstudio import RUN_PREFIX, UNLABELLED

    ds = ctx.dataset
    sent = [k[len(RUN_PREFIX):] for k in (ds.list_runs() if ds is not None else [])
            if k.startswith(RUN_PREFIX) and not k.startswith(RUN_PREFIX + "effort_")]
    field = forms.choose_one(ctx, inputs, "label_field", sent, "Sent field",
                             missing="No field of this dataset was sent to Label Studio",
                             missing_name="none_sent")
    if field is None:
        return
    inputs.str("out_field", default=f"{field}_corrected", required=True,
               label="Output field")
    _labelstudio_connection(inputs, ctx)
    forms.add_choice(inputs, "unlabelled", list(UNLABELLED), default="background",
                     label="Pixels no region covers", radio=True)
    if ctx.params.get("unlabelled") == "ignore":
        inputs.int("ignore_value", default=255, label="Ignore value")
    forms.add_checkbox(inputs, "include_unreviewed", "Also load tasks nobody submitted yet "
                       "(their pre-label)")
    forms.add_checkbox(inputs, "skip_missing", "Skip tasks of deleted samples")
    out = ctx.params.get("out_field") or f"{field}_corrected"
    if ds is not None and out in ds.get_field_schema():
        forms.add_checkbox(inputs, "overwrite", f"Replace '{out}'")


class LoadFromLabelStudio(foo.Operator):
    @property
    def config(self):
        return _operator_config(
            "load_from_labelstudio", "Load corrections from Label Studio",
            "Load the submitted annotations of a sent field into a new Segmentation field and "
            "measure how much of the pre-label the annotators kept")

    def resolve_input(self, ctx):
        return forms.operator_form(ctx, "Load from Label Studio", _load_form)

    def execute(self, ctx):
        from tfovss_fiftyone.labelstudio import LabelStudioError, load_corrections

        p = ctx.params
        try:
            report = load_corrections(
                ctx.target_view(), p.get("label_field"), p.get("out_field"), url=p.get("url"),
                api_key=_labelstudio_key(ctx), unlabelled=p.get("unlabelled") or "background",
                ignore_value=int(p.get("ignore_value", 255)),
                include_unreviewed=bool(p.get("include_unreviewed")),
                skip_missing=bool(p.get("skip_missing")), overwrite=bool(p.get("overwrite")),
                progress=forms.Progress(ctx))
        except LabelStudioError as e:
            _fail(f"Nothing loaded: {e}")
        if not ctx.delegated:
            ctx.trigger("reload_dataset")
        out = report.to_dict()
        out.pop("per_sample")
        out["share_kept_pct"] = _pct(report.share_kept)
        out["per_class_summary"] = [f"{n}: IoU {_pct(c['iou'])} %, kept {_pct(c['share_kept'])} %"
                                    for n, c in report.per_class.items()]
        return out

    def resolve_output(self, ctx):
        return forms.result_view("Corrections loaded", (
            ("num_reviewed", "int", "Reviewed tasks"),
            ("num_unreviewed", "int", "Not yet reviewed"),
            ("num_loaded", "int", "Loaded"),
            ("share_kept_pct", "float", "Pixels the annotators kept (%)"),
            ("pixels_changed", "int", "Pixels changed"),
            ("per_class_summary", "strings", "Per class")))
