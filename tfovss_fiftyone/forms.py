"""Small helpers that build operator forms and read their parameters (no heavy imports)."""
from __future__ import annotations

import time

from fiftyone.operators import types

#: parameter-name prefix of method options in the pre-label form
OPT_PREFIX = "opt_"

DRIVER_SETTINGS = (
    # name, type, label, description
    ("prob_thd", "float", "Background threshold",
     "Pixels whose top class probability is below this go to the first class (background). "
     "Empty: the method's / preset's default."),
    ("short_side", "int", "Short side", "Resize the image's short side to this before CLIP "
     "(empty: method default, e.g. 336)."),
    ("crop", "int", "Window size", "Sliding-window size in pixels (0: whole image at once)."),
    ("stride", "int", "Window stride", "Sliding-window stride in pixels."),
    ("logit_scale", "float", "Logit scale", "Softmax temperature on cosine similarities."),
    ("area_thd", "float", "Area threshold", "Drop foreground classes covering at most this "
     "share of the foreground."),
    ("pamr_steps", "int", "PAMR steps", "Pixel-adaptive mask refinement iterations (0: off)."),
    ("templates", "str", "Prompt templates", "Template set name (e.g. openai_imagenet) or "
     "templates separated by '|', each with {}."),
)


def operator_form(ctx, label: str, build) -> types.Property:
    """An operator's form titled ``label``: the target (dataset, current view or selected samples)
    is resolved first, then ``build(inputs, ctx)`` adds the inputs (it may stop after an error)."""
    inputs = types.Object()
    ctx.target_view()
    build(inputs, ctx)
    return types.Property(inputs, view=types.View(label=label))


#: how each kind of :func:`result_view` row is shown
_RESULT_KINDS = {
    "str": lambda outputs, name, label: outputs.str(name, label=label),
    "int": lambda outputs, name, label: outputs.int(name, label=label),
    "float": lambda outputs, name, label: outputs.float(name, label=label),
    # a list of strings renders as one-line chips that cut long messages: Markdown for those
    "markdown": lambda outputs, name, label: outputs.str(name, label=label,
                                                         view=types.MarkdownView()),
    "strings": lambda outputs, name, label: outputs.list(name, types.String(), label=label),
}


def result_view(label: str, rows, outputs=None) -> types.Property:
    """An operator's result titled ``label``: after what ``outputs`` already shows, one read-only
    output per ``(name, kind, label)`` row, kind one of "str", "int", "float", "markdown" and
    "strings" (a list of strings)."""
    outputs = types.Object() if outputs is None else outputs
    for name, kind, row_label in rows:
        _RESULT_KINDS[kind](outputs, name, row_label)
    return types.Property(outputs, view=types.View(label=label))


def add_checkbox(inputs, name: str, label: str, *, default: bool = False, description=None):
    return inputs.bool(name, default=default, label=label, description=description,
                       view=types.CheckboxView())


def add_overwrite(inputs, warning_name: str, message: str, label: str, *,
                  name: str = "overwrite"):
    """Something the run would replace exists: says so (``message``) and offers the checkbox
    ``name`` that allows replacing it (off by default)."""
    warning(inputs, warning_name, message)
    add_checkbox(inputs, name, label)


def choose_one(ctx, inputs, name: str, choices, label: str, *, missing: str,
               missing_name: str = "no_fields"):
    """Offers ``choices`` as the dropdown ``name`` (the first by default) and returns the chosen
    one; with no choices, shows ``missing`` as the error ``missing_name`` and returns None (the
    form stops there)."""
    choices = list(choices)
    if not choices:
        error(inputs, missing_name, missing)
        return None
    add_choice(inputs, name, choices, default=choices[0], label=label)
    return ctx.params.get(name) or choices[0]


def get_segmentation_field(ctx, inputs, missing: str, *, name: str = "label_field",
                           label: str = "Field"):
    """:func:`choose_one` of the dataset's Segmentation fields."""
    return choose_one(ctx, inputs, name, segmentation_fields(ctx.dataset), label, missing=missing)


def segmentation_fields(dataset) -> list[str]:
    import fiftyone as fo

    if dataset is None:
        return []
    return sorted(dataset.get_field_schema(embedded_doc_type=fo.Segmentation).keys())


def add_choice(inputs, name, values, *, default=None, label=None, description=None,
               required=None, radio=False, labels=None):
    """An enum with a dropdown (or radio group) whose choice labels may differ from values.

    Required only when it has no default (the operators apply the same defaults themselves, so
    Python callers of ``execute_operator`` may leave such parameters out)."""
    if required is None:
        required = default is None
    view = types.RadioGroup() if radio else types.DropdownView()
    for v in values:
        view.add_choice(v, label=(labels or {}).get(v, v))
    return inputs.enum(name, list(values), default=default, label=label,
                       description=description, required=required, view=view)


def add_multi_choice(inputs, name, values, *, default=None, label=None, description=None):
    """A list of several of ``values`` (a multi-select dropdown); required when no default.

    The App shows the chosen values as chips; its list offers only the others."""
    view = types.DropdownView(multiple=True, filter_selected_options=True)
    for v in values:
        view.add_choice(v, label=v)
    return inputs.list(name, types.String(), default=list(default or []), label=label,
                       description=description, required=not default, view=view)


#: parameter-name prefix of the add-on checkboxes in the pre-label form
ADDON_PREFIX = "addon_"


def addon_names(addons: list[dict]) -> list[str]:
    """The names that can follow a method's ``+``, from ``describe_method(m)["addons"]`` (the
    registry's add-on cards): each add-on as a whole, then each of its components."""
    return [n for addon in addons for n in (addon["name"], *addon["components"])]


def add_addon_choices(inputs, addons: list[dict]) -> None:
    """One checkbox per add-on name the method's host accepts (none for a method without add-ons)."""
    for addon in addons:
        for n in (addon["name"], *addon["components"]):
            add_checkbox(inputs, ADDON_PREFIX + n, f"{addon['title']} add-on: {n.upper()}")


def composed_method(method: str, params, addons: list[dict]) -> str:
    """``method`` with the ticked add-on names appended (``"clearclip+lht"``)."""
    chosen = [n for n in addon_names(addons) if params.get(ADDON_PREFIX + n)]
    return "+".join([method, *chosen]) if chosen else method


def add_optional_number(inputs, name, kind, label, description, default=None):
    if kind == "int":
        return inputs.int(name, label=label, description=description, default=default,
                          required=False)
    if kind == "float":
        return inputs.float(name, label=label, description=description, default=default,
                            required=False)
    return inputs.str(name, label=label, description=description, default=default,
                      required=False)


def option_help(opt: dict) -> str:
    """An option's form help: its doc, where its default comes from, and the reading it labels."""
    parts = [opt.get("doc") or ""]
    if opt.get("source"):
        parts.append(f"[default: {opt['source']}]")
    if opt.get("reading"):
        parts.append(f"Reading: {opt['reading']}")
    return " ".join(p for p in parts if p)


def add_method_options(inputs, options: list[dict]) -> None:
    """One input per method option (``tfovss_core.describe_method(m)["options"]``)."""
    for opt in options:
        name = OPT_PREFIX + opt["name"]
        typ = str(opt.get("type", ""))
        doc = option_help(opt)
        default = opt.get("default")
        label = opt["name"].replace("_", " ")
        if opt.get("choices"):
            choices = [str(c) for c in opt["choices"]]
            add_choice(inputs, name, choices, default=str(default) if default is not None
                       else None, label=label, description=doc, required=False)
        elif "bool" in typ:
            add_checkbox(inputs, name, label, default=bool(default), description=doc)
        elif "int" in typ and "float" not in typ and "tuple" not in typ:
            inputs.int(name, default=default, label=label, description=doc, required=False)
        elif "float" in typ:
            inputs.float(name, default=default, label=label, description=doc, required=False)
        else:
            inputs.str(name, default=None if default is None else _to_text(default), label=label,
                       description=doc, required=False)


def read_method_options(params: dict, options: list[dict]) -> dict:
    out = {}
    for opt in options:
        key = OPT_PREFIX + opt["name"]
        if key not in params or params[key] is None or params[key] == "":
            continue
        value = params[key]
        default = opt.get("default")
        if opt.get("choices") and default is not None and not isinstance(default, str):
            for c in opt["choices"]:
                if str(c) == str(value):
                    value = c
        out[opt["name"]] = value
    return out


def read_settings(params: dict) -> dict:
    out = {}
    for name, kind, _, _ in DRIVER_SETTINGS:
        v = params.get(name)
        if v is None or v == "":
            continue
        if name == "templates" and isinstance(v, str) and ("|" in v or "{}" in v):
            v = [t.strip() for t in v.split("|") if t.strip()]
        out[name] = v
    return out


def _to_text(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)


def error(inputs, name: str, message: str):
    inputs.view(name, types.Error(label=message))


def invalid(inputs, name: str, message: str):
    """Marks input ``name`` invalid: the App shows ``message`` under it and disables Execute."""
    prop = inputs.get_property(name)
    prop.invalid = True
    prop.error_message = message


def warning(inputs, name: str, message: str):
    inputs.view(name, types.Warning(label=message))


def notice(inputs, name: str, message: str):
    inputs.view(name, types.Notice(label=message))


def path_param(value):
    """A path from a str or a FileExplorerView value ``{"absolute_path": ...}``."""
    if isinstance(value, dict):
        return value.get("absolute_path") or value.get("path")
    return value


class Progress:
    """Throttled ``ctx.set_progress`` (immediate runs would otherwise flood the App log)."""

    def __init__(self, ctx, every_s: float = 2.0):
        self.ctx = ctx
        self.every = 0.5 if getattr(ctx, "delegated", False) else every_s
        self.last = 0.0

    def __call__(self, done, total, label=None):
        now = time.time()
        if done < total and now - self.last < self.every:
            return
        self.last = now
        try:
            self.ctx.set_progress(progress=(done / total) if total else 1.0,
                                  label=label or f"{done}/{total}")
        except Exception:  # progress is cosmetic: never kill a run for it
            pass
