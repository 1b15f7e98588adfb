"""Panel "Vocabulary studio", beside the sample modal: try a vocabulary on the current sample,
then apply it to the dataset or view.

You type classes (one per line, synonyms comma-separated), or pick a preset or a field's
``mask_targets``, choose the method and the background threshold; the current sample shows the
mask in the App's own segmentation rendering through a preview field (:data:`PREVIEW_FIELD`),
with per-class pixel shares. The first change on a sample encodes its dense features (the
model); later changes re-segment them (:mod:`tfovss_core.engine.features`: a text encoding per
new class and the post-processing). The preview is exactly what the pre-label run writes for that
sample: the same Segmenter construction, the same settings hash. "Apply to dataset / view"
opens the pre-label operator pre-filled with this vocabulary and these settings. The preview field
is deleted when the panel closes or the vocabulary is applied: it is never left as a user field.

A dataset can set the panel's starting values (weights, window settings, vocabulary...) in
``dataset.app_config.plugins["vocabulary_studio"]``, FiftyOne's per-dataset plugin settings: e.g.
``{"pretrained": "tiny:seed0", "short_side": 96}``; the panel's own defaults are the pre-label
operator's.
"""
from __future__ import annotations

import numpy as np

import fiftyone.operators as foo
from fiftyone.operators import types

from tfovss_fiftyone import forms
from tfovss_fiftyone.prelabel import parse_vocabulary, settings_hash

PLUGIN = "@tfovss/ovss"
PREVIEW_FIELD = "tfovss_vocabulary_preview"
DEFAULT_VOCABULARY = "background\nperson, man, woman, child\ncar\ntree\nsky"
# The pre-label operator's defaults: the preview must run the Segmenter it builds.
DEFAULTS = {"method": "sclip", "arch": "ViT-B-16", "pretrained": "openai", "device": None, "batch_size": 8,
            "prob_thd": 0.0, "vocab_source": "text", "vocabulary": DEFAULT_VOCABULARY}
SOURCES = ("text", "preset", "mask_targets")
APP_CONFIG_KEY = "vocabulary_studio"   # dataset.app_config.plugins[APP_CONFIG_KEY]: starting values

_CACHE = None


def feature_cache():
    """The process's feature cache of the panel (256 MiB of features: ~100 ViT-B/16 images)."""
    global _CACHE
    if _CACHE is None:
        from tfovss_core.engine.features import FeatureCache

        _CACHE = FeatureCache(max_bytes=256 << 20)
    return _CACHE


def vocabulary_classes(state: dict, dataset=None):
    """The classes of the panel's state, as the pre-label operator reads them from its form."""
    source = state.get("vocab_source") or "text"
    if source == "preset":
        return state.get("preset") or "voc21"
    if source == "mask_targets":
        field = state.get("vocab_field")
        targets = (dataset.mask_targets or {}).get(field) if dataset is not None else None
        if not targets:
            raise ValueError(f"no mask_targets found for '{field}'")
        return {int(k): v for k, v in targets.items()}
    text = state.get("vocabulary") or ""
    parse_vocabulary(text)      # raises on a malformed line, naming it
    return text


def build_segmenter(state: dict, dataset=None):
    """``(Segmenter, mask values, settings hash)`` as :func:`tfovss_fiftyone.prelabel.prelabel`
    builds them for the same parameters, with the panel's feature cache."""
    import tfovss_core as tc
    from tfovss_core.spec.classes import resolve_classes

    from tfovss_fiftyone.loading import get_clip

    s = {**DEFAULTS, **{k: v for k, v in state.items() if v is not None}}
    source = resolve_classes(vocabulary_classes(s, dataset), files=False)
    model = get_clip(s["arch"], s["pretrained"], s["device"])
    settings = {**forms.read_settings(s), "batch_size": int(s["batch_size"])}
    seg = tc.Segmenter(model, method=s["method"], classes=source.segmenter_classes(),
                       feature_cache=feature_cache(), **settings)
    rows = ([(i, [n]) for i, n in enumerate(seg.class_names)] if source.preset
            else [(v, list(names)) for v, names in source.rows])
    values = [v for v, _ in rows]
    description = seg.describe()
    description["weights_digest"] = model.weights_digest[:16]
    return seg, rows, settings_hash(description, values)


def preview(dataset, sample_id: str, state: dict) -> dict:
    """Segments the sample, writes the preview field on it, returns the per-class shares (and
    ``field_added``: the preview field was just created, so the App must reload the schema)."""
    import fiftyone as fo

    sample = dataset[sample_id]
    seg, rows, run_hash = build_segmenter(state, dataset)
    result = seg.predict(sample.filepath, output="mask")   # what the pre-label computes
    lut = np.asarray([v for v, _ in rows], dtype=np.int64)
    mask = lut[result.mask.astype(np.int64)].astype(np.uint8 if lut.max() <= 255 else np.uint16)
    field_added = PREVIEW_FIELD not in dataset.get_field_schema()
    if field_added:
        dataset.add_sample_field(PREVIEW_FIELD, fo.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation)
    targets = dict(dataset.mask_targets or {})
    targets[PREVIEW_FIELD] = {int(v): str(names[0]) for v, names in rows}
    dataset.mask_targets = targets
    dataset.save()
    sample[PREVIEW_FIELD] = fo.Segmentation(mask=mask)
    sample.save()
    counts = np.bincount(result.mask.ravel(), minlength=len(rows))
    shares = [{"class": names[0], "value": int(v), "share": round(100.0 * int(c) / mask.size, 2)}
              for (v, names), c in zip(rows, counts)]
    return {"shares": sorted(shares, key=lambda r: -r["share"]), "settings_hash": run_hash,
            "mean_confidence": round(float(result.confidence.mean()), 4),
            "from_features": bool(getattr(result, "from_features", False)), "field_added": field_added}


def starting_state(dataset) -> dict:
    """The panel's starting values: :data:`DEFAULTS` overlaid with the dataset's plugin settings
    (``dataset.app_config.plugins["vocabulary_studio"]``)."""
    configured = {}
    if dataset is not None:
        configured = dict((dataset.app_config.plugins or {}).get(APP_CONFIG_KEY) or {})
    return {**DEFAULTS, **configured}


def remove_preview(dataset) -> None:
    """Deletes the preview field and its mask targets (the panel never leaves them behind)."""
    if dataset is None:
        return
    if PREVIEW_FIELD in dataset.get_field_schema():
        dataset.delete_sample_field(PREVIEW_FIELD)
    targets = dict(dataset.mask_targets or {})
    if targets.pop(PREVIEW_FIELD, None) is not None:
        dataset.mask_targets = targets
        dataset.save()


def prelabel_params(state: dict) -> dict:
    """The pre-label operator's parameters for exactly this vocabulary and these settings."""
    s = {**DEFAULTS, **{k: v for k, v in state.items() if v is not None}}
    params = {"method": s["method"], "arch": s["arch"], "pretrained": s["pretrained"],
              "batch_size": int(s["batch_size"]), "prob_thd": float(s["prob_thd"]),
              "vocab_source": s["vocab_source"]}
    if s["device"]:
        params["device"] = s["device"]
    # any other driver setting set on the panel, as the form holds it (read_settings parses it there)
    params.update({name: s[name] for name, *_ in forms.DRIVER_SETTINGS if s.get(name) not in (None, "")})
    key = {"text": "vocabulary", "preset": "preset", "mask_targets": "vocab_field"}[s["vocab_source"]]
    params[key] = s.get(key)
    return params


def shares_key(version: int) -> str:
    """The panel data key of the per-class shares of update ``version``."""
    return f"shares_{int(version)}"


class VocabularyStudioPanel(foo.Panel):
    @property
    def config(self):
        return foo.PanelConfig(
            name="vocabulary_studio",
            label="Vocabulary studio",
            surfaces="modal",
            help_markdown="Try a vocabulary on the current sample (re-segmented from cached features "
                          "at each change), then apply it to the dataset or view.",
        )

    # -- state ---------------------------------------------------------------------------------
    def _state(self, ctx) -> dict:
        names = set(DEFAULTS) | {name for name, *_ in forms.DRIVER_SETTINGS} | {"preset", "vocab_field"}
        return {k: ctx.panel.get_state(k) for k in names}

    def _update(self, ctx):
        sample_id = ctx.current_sample
        if not sample_id or ctx.dataset is None:
            return
        try:
            out = preview(ctx.dataset, sample_id, self._state(ctx))
        except Exception as exc:    # a bad vocabulary or setting: say it, keep the panel open
            ctx.panel.set_state("error", str(exc))
            return
        ctx.panel.set_state("error", None)
        ctx.panel.set_state("settings_hash", out["settings_hash"])
        # each update under a new data key: the App merges a panel's list data by index, so a
        # shorter list written over a longer one would keep the longer one's last rows
        version = int(ctx.panel.get_state("shares_version") or 0) + 1
        ctx.panel.set_data(shares_key(version - 1), None)
        ctx.panel.set_data(shares_key(version), out["shares"])
        ctx.panel.set_state("shares_version", version)
        if out["field_added"]:
            # a new field: the App must reload the schema to draw it, and show it (the overlay)
            ctx.ops.reload_dataset()
            ctx.ops.set_active_fields([PREVIEW_FIELD])
        else:
            ctx.ops.reload_samples()

    # -- events --------------------------------------------------------------------------------
    def on_load(self, ctx):
        for k, v in starting_state(ctx.dataset).items():
            if ctx.panel.get_state(k) is None and v is not None:
                ctx.panel.set_state(k, v)
        self._update(ctx)

    def on_change_current_sample(self, ctx):
        self._update(ctx)

    def on_change_setting(self, ctx):
        ctx.panel.set_state(ctx.params.get("path") or ctx.params.get("name"), ctx.params.get("value"))
        self._update(ctx)

    def on_apply(self, ctx):
        params = prelabel_params(self._state(ctx))
        remove_preview(ctx.dataset)
        ctx.ops.reload_dataset()
        ctx.prompt(f"{PLUGIN}/prelabel_segmentation", params=params)

    def on_unload(self, ctx):
        remove_preview(ctx.dataset)
        ctx.ops.reload_dataset()

    # -- layout --------------------------------------------------------------------------------
    def render(self, ctx):
        import tfovss_core as tc

        panel = types.Object()
        source = ctx.panel.get_state("vocab_source") or "text"
        panel.enum("vocab_source", list(SOURCES), default=source, label="Classes from",
                   view=types.RadioGroup(), on_change=self.on_change_setting)
        if source == "preset":
            presets = tc.presets.list_presets()
            panel.enum("preset", presets, default=ctx.panel.get_state("preset") or "voc21", label="Preset",
                       on_change=self.on_change_setting)
        elif source == "mask_targets":
            fields = sorted((ctx.dataset.mask_targets or {}) if ctx.dataset is not None else {})
            fields = [f for f in fields if f != PREVIEW_FIELD]
            panel.enum("vocab_field", fields, default=ctx.panel.get_state("vocab_field"),
                       label="mask_targets of", on_change=self.on_change_setting)
        else:
            panel.str("vocabulary", default=ctx.panel.get_state("vocabulary"), label="Classes",
                      description="One class per line; synonyms separated by commas",
                      view=types.TextFieldView(multiline=True, rows=6), on_change=self.on_change_setting)
        panel.enum("method", tc.list_methods(), default=ctx.panel.get_state("method") or "sclip",
                   label="Method", on_change=self.on_change_setting)
        panel.float("prob_thd", default=ctx.panel.get_state("prob_thd") or 0.0, min=0.0, max=1.0,
                    label="Background threshold", view=types.SliderView(), on_change=self.on_change_setting)
        panel.str("pretrained", default=ctx.panel.get_state("pretrained"), label="Pretrained weights",
                  description=f"Of the model {ctx.panel.get_state('arch')}: an open_clip tag or a checkpoint",
                  on_change=self.on_change_setting)
        error = ctx.panel.get_state("error")
        if error:
            panel.view("error", types.Error(label=error))
        table = types.TableView()
        table.add_column("class", label="Class")
        table.add_column("share", label="Pixels %")
        panel.list(shares_key(ctx.panel.get_state("shares_version") or 0), types.Object(), view=table,
                   label="Per class")
        run_hash = ctx.panel.get_state("settings_hash")
        if run_hash and not error:
            panel.view("settings_hash", types.Notice(label=f"Settings hash {run_hash}"))
        panel.btn("apply", label="Apply to dataset / view…", on_click=self.on_apply, variant="contained")
        return types.Property(panel, view=types.GridView(orientation="vertical", height=100, width=100))
