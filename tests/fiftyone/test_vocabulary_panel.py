"""The vocabulary studio panel, headless: its methods called with a fake ctx."""
from __future__ import annotations

import numpy as np
import pytest

from support.fo import URI_PRELABEL, needs_core

pytestmark = needs_core

FAST = {"short_side": 64, "crop": 64, "stride": 64, "templates": "a photo of a {}."}
VOCAB = "background\ncat, kitten\nperson, man, woman\naeroplane, airplane"


class FakePanel:
    def __init__(self, state):
        self.state, self.data = dict(state), {}

    def get_state(self, key):
        return self.state.get(key)

    def set_state(self, key, value):
        self.state[key] = value

    def set_data(self, key, value):
        self.data[key] = value


class FakeOps:
    def __init__(self):
        self.calls = []

    def reload_samples(self):
        self.calls.append("reload_samples")

    def reload_dataset(self):
        self.calls.append("reload_dataset")

    def set_active_fields(self, fields=None):
        self.calls.append(("set_active_fields", list(fields or [])))


class FakeCtx:
    def __init__(self, dataset, sample_id, state, params=None):
        self.dataset, self.current_sample = dataset, sample_id
        self.panel, self.ops, self.params = FakePanel(state), FakeOps(), params or {}
        self.prompts = []

    def prompt(self, uri, params=None):
        self.prompts.append((uri, params))


def test_preview_equals_a_prelabel_of_the_sample_and_is_removed(fo, foo, voc_ds, tmp_path):
    from tfovss_fiftyone.vocabulary_panel import PREVIEW_FIELD, VocabularyStudioPanel, shares_key

    panel = VocabularyStudioPanel()
    sample = voc_ds.first()
    state = {"pretrained": "tiny:seed0", "device": "cpu", "vocab_source": "text", "vocabulary": VOCAB,
             "prob_thd": 0.1, **FAST}
    ctx = FakeCtx(voc_ds, sample.id, state)
    panel.on_load(ctx)
    assert ctx.panel.state["error"] is None, ctx.panel.state["error"]
    # the new field: the App reloads the schema and shows it (the overlay)
    assert PREVIEW_FIELD in voc_ds.get_field_schema()
    assert ctx.ops.calls == ["reload_dataset", ("set_active_fields", [PREVIEW_FIELD])]
    first = voc_ds[sample.id][PREVIEW_FIELD].mask.copy()
    shares = ctx.panel.data[shares_key(ctx.panel.state["shares_version"])]
    assert sorted(r["class"] for r in shares) == ["aeroplane", "background", "cat", "person"]
    assert sum(r["share"] for r in shares) == pytest.approx(100.0, abs=0.05)
    by_value = {r["value"]: r["share"] for r in shares}
    for value, share in by_value.items():
        assert share == pytest.approx(100.0 * (first == value).mean(), abs=0.01)

    # a synonym changes: re-segmented from the cached features
    ctx.params = {"path": "vocabulary", "value": VOCAB.replace("cat, kitten", "cat, kitten, tabby")}
    panel.on_change_setting(ctx)
    assert ctx.panel.state["vocabulary"].count("tabby") == 1 and ctx.panel.state["error"] is None
    assert ctx.ops.calls[-1] == "reload_samples"   # the field exists: only the samples change

    # apply: the pre-label operator, pre-filled; the preview field is gone
    panel.on_apply(ctx)
    assert PREVIEW_FIELD not in voc_ds.get_field_schema()
    assert PREVIEW_FIELD not in (voc_ds.mask_targets or {})
    uri, params = ctx.prompts[-1]
    assert uri == URI_PRELABEL and params["vocabulary"].count("tabby") == 1
    preview_hash = ctx.panel.state["settings_hash"]
    preview_mask = None
    # the preview of the applied vocabulary, taken again (then applied for real)
    panel.on_change_current_sample(ctx)
    preview_mask = voc_ds[sample.id][PREVIEW_FIELD].mask.copy()
    panel.on_unload(ctx)
    assert PREVIEW_FIELD not in voc_ds.get_field_schema()

    run = foo.execute_operator(URI_PRELABEL, ctx={"dataset": voc_ds, "params": {
        **params, "label_field": "studio", "output_dir": str(tmp_path)}})
    assert run.result["settings_hash"] == preview_hash
    voc_ds.reload()
    labelled = voc_ds[sample.id].studio
    np.testing.assert_array_equal(labelled.get_mask(), preview_mask)
    assert voc_ds.mask_targets["studio"] == {0: "background", 1: "cat", 2: "person", 3: "aeroplane"}


def test_a_bad_vocabulary_is_reported_on_the_panel(fo, voc_ds):
    from tfovss_fiftyone.vocabulary_panel import PREVIEW_FIELD, VocabularyStudioPanel

    ctx = FakeCtx(voc_ds, voc_ds.first().id, {"pretrained": "tiny:seed0", "device": "cpu",
                                              "vocab_source": "mask_targets", "vocab_field": "nope", **FAST})
    VocabularyStudioPanel().on_load(ctx)
    assert "no mask_targets found for 'nope'" in ctx.panel.state["error"]
    assert PREVIEW_FIELD not in voc_ds.get_field_schema()
