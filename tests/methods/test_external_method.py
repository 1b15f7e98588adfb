"""A method registered from outside the package (a module plus its card, nothing else edited) is
seen by ``tfovss methods``, a ``Segmenter``, a benchmark run and the pre-label form."""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from support.paths import DATA, REPO_ROOT

MODULE = "tfovss_test_keyclip"

# K-K attention in the last block without residual or FFN: ClearCLIP's "kk" ablation, so the
# outputs can be checked against a built-in method. ``probe_idx`` exercises per-backbone constants.
SOURCE = textwrap.dedent('''
    from __future__ import annotations

    from dataclasses import dataclass

    from tfovss_core.methods import LastBlockMethod, MethodCard, MethodInfo, option, register_method


    class KeyCLIP(LastBlockMethod):
        name = "keyclip"
        info = MethodInfo(title="KeyCLIP (outside method)", paper="-", official_code=None,
                          summary="softmax(k k^T) in the last block, no residual, no FFN.")

        @dataclass
        class Options:
            probe_idx: int | None = option(None, "A block index looked up per backbone.", source="backbone")

        def attention(self, q, k, v, grid):
            return self.backbone.similarity_attention(k, k)


    CARD = MethodCard(
        method=KeyCLIP,
        aliases=("key-clip",),
        protocol=dict(short_side=64, crop=64, stride=64, logit_scale=30.0),
        constants={"ViT-B/16": dict(probe_idx=7), "ViT-L/14": dict(probe_idx=15)},
        datasets={
            "voc21": {"short_side": 64, "max_long_side": 2048, "crop": 64, "stride": 64, "logit_scale": 33,
                      "prob_thd": 0.0, "area_thd": None, "pamr_steps": 0, "pamr_dilations": [8, 16],
                      "class_file": "voc21.txt", "source": "keyclip card: voc21"},
        },
    )
    register_method(CARD)
''')


@pytest.fixture
def module_dir(tmp_path):
    (tmp_path / f"{MODULE}.py").write_text(SOURCE)
    return tmp_path


@pytest.fixture
def keyclip(module_dir, monkeypatch):
    """The outside method, imported and registered in this process (removed afterwards)."""
    from tfovss_core.methods import list_methods, unregister_method

    list_methods()   # the built-ins first, as in any process
    monkeypatch.syspath_prepend(str(module_dir))
    module = importlib.import_module(MODULE)
    yield module
    unregister_method("keyclip")
    sys.modules.pop(MODULE, None)


def _cli(module_dir, *args, modules=MODULE):
    env = {**os.environ, "TFOVSS_METHOD_MODULES": modules,
           "PYTHONPATH": os.pathsep.join([str(module_dir), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "tfovss_core.cli", *args], capture_output=True, text=True,
                          env=env, cwd=str(REPO_ROOT), timeout=300)


def test_cli_methods_lists_the_outside_method(module_dir):
    proc = _cli(module_dir, "methods", "--json")
    assert proc.returncode == 0, proc.stderr
    infos = {info["name"]: info for info in json.loads(proc.stdout)}
    assert {"sclip", "clearclip+lht", "keyclip"} <= set(infos)
    info = infos["keyclip"]
    assert info["title"] == "KeyCLIP (outside method)" and info["aliases"] == ["key-clip"]
    assert info["default_settings"] == {"short_side": 64, "crop": 64, "stride": 64, "logit_scale": 30.0}
    assert info["constants"] == {"ViT-B/16": {"probe_idx": 7}, "ViT-L/14": {"probe_idx": 15}}
    assert info["dataset_sources"]["voc21"] == "keyclip card: voc21"
    assert "no preset for method 'keyclip'" in info["dataset_sources"]["ade20k"]
    assert [o["name"] for o in info["options"]] == ["probe_idx"] and info["options"][0]["source"] == "backbone"

    plain = _cli(module_dir, "methods")
    assert plain.returncode == 0 and "keyclip" in plain.stdout and "KeyCLIP (outside method)" in plain.stdout


def test_entry_point_registers_the_outside_method(module_dir):
    """An installed distribution declaring ``[tfovss.methods] keyclip = <module>``: no env var."""
    dist = module_dir / "tfovss_keyclip_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tfovss-keyclip-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[tfovss.methods]\nkeyclip = {MODULE}\n")
    proc = _cli(module_dir, "methods", "keyclip", modules="")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("keyclip") and "--set probe_idx=null  (int | None; backbone)" in proc.stdout
    (dist / "entry_points.txt").unlink()            # the same module, no longer declared: unknown
    gone = _cli(module_dir, "methods", "keyclip", modules="")
    assert gone.returncode != 0 and "unknown method 'keyclip'" in gone.stderr


def test_cli_names_a_method_module_that_does_not_import(module_dir):
    proc = _cli(module_dir, "methods", modules=f"{MODULE},tfovss_no_such_module")
    assert proc.returncode != 0
    assert "tfovss_no_such_module" in proc.stderr and "TFOVSS_METHOD_MODULES" in proc.stderr


def test_card_settings_aliases_and_constants(keyclip):
    from tfovss_core.methods import get_method_class, method_card, method_settings
    from tfovss_core.spec import presets

    assert get_method_class("Key-CLIP") is keyclip.KeyCLIP and method_card("keyclip") is keyclip.CARD
    s = method_settings("key-clip", "voc21")
    assert (s["logit_scale"], s["crop"], s["official"], s["source"]) == (33, 64, True, "keyclip card: voc21")
    assert presets.method_settings("keyclip", "voc21") == {**s, "method": "keyclip"}   # the alias delegates
    other = method_settings("keyclip", "context60")         # no entry: the default protocol
    assert other["official"] is False and other["logit_scale"] == 40
    with pytest.raises(ValueError):                         # a second card may not take a name
        from tfovss_core.methods import MethodCard, register_method
        register_method(MethodCard(method=get_method_class("sclip"), aliases=("key_clip",)))


def test_segmenter_runs_the_outside_method(keyclip):
    import tfovss_core as tc
    from tfovss_core.clip.synthetic import tiny_clip

    model = tiny_clip()
    image = np.random.default_rng(0).integers(0, 256, size=(48, 80, 3), dtype=np.uint8)
    seg = tc.Segmenter(model, "keyclip", "voc21", templates=["a photo of a {}."])
    assert type(seg.method) is keyclip.KeyCLIP
    assert (seg.settings.logit_scale, seg.settings.short_side, seg.settings.crop) == (33, 64, 64)
    # a 3-block tiny CLIP has no published profile: the ViT-B/16 constant rescaled (7 * 3/12 -> 2,
    # capped at depth - 2)
    assert seg.method.options.probe_idx == 1
    own = tc.Segmenter(model, "keyclip", ["cat", "dog", "sky"], templates=["a photo of a {}."])
    assert (own.settings.logit_scale, own.settings.crop) == (30.0, 64)

    reference = tc.Segmenter(model, "clearclip", ["cat", "dog", "sky"], templates=["a photo of a {}."],
                             attention="kk", logit_scale=30.0, short_side=64, crop=64, stride=64,
                             pad_to_patch=own.settings.pad_to_patch)
    got, want = own.predict(image), reference.predict(image)
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_allclose(got.probs, want.probs, atol=1e-6, rtol=0)
    assert len(np.unique(got.mask)) > 1


@pytest.mark.skipif(not DATA.is_dir(), reason="shared sample data not found")
def test_benchmark_runs_the_outside_method(keyclip, tmp_path):
    from tfovss_core.eval import benchmark as bm
    from tfovss_core.eval.datasets import get_importer

    weights = bm.resolve_weights("ViT-B/16", "tiny:seed0")
    runner = bm.BenchmarkRunner(["keyclip"], {"voc21": get_importer("voc21", DATA)}, weights, tmp_path,
                                limit=1, overrides={"templates": "single", "short_side": 64},
                                progress=False, log=lambda s: None, model=weights.load("cpu"))
    (result,) = runner.run()
    assert (result.spec.method, result.spec.dataset, result.computed, result.evaluated) == ("keyclip", "voc21", 1, 1)
    assert result.describe["method"]["method"] == "keyclip"
    assert result.describe["settings"]["logit_scale"] == 33          # the card's VOC21 entry
    assert 0.0 <= result.metrics["mIoU"] <= 100.0
    assert len(bm.read_records(result.spec.records_path)) == 1


def test_prelabel_form_offers_the_outside_method(keyclip):
    import support.fo  # noqa: F401  (isolated FiftyOne database; before fiftyone is imported)
    import fiftyone as fo
    from fiftyone.operators.executor import ExecutionContext

    from tfovss_core.methods import describe_method
    from tfovss_fiftyone import forms
    from tfovss_fiftyone.operators import PrelabelSegmentation

    dataset = fo.Dataset()
    try:
        def form(**params):
            ctx = ExecutionContext(request_params={"dataset_name": dataset.name, "params": params})
            return PrelabelSegmentation().resolve_input(ctx).type.properties

        inputs = form(method="keyclip")
        assert "keyclip" in inputs["method"].type.values and "sclip" in inputs["method"].type.values
        assert not any(name.startswith("addon_") for name in inputs)          # keyclip hosts no add-on
        assert "opt_probe_idx" in inputs                                       # its option, from the card
        sclip = form(method="sclip")
        assert {"addon_lht", "addon_ssr", "addon_atr", "addon_she"} <= set(sclip)
        ticked = {"addon_atr": True, "addon_ssr": True}
        assert forms.composed_method("sclip", ticked, describe_method("sclip")["addons"]) == "sclip+ssr+atr"
        assert forms.composed_method("keyclip", ticked, describe_method("keyclip")["addons"]) == "keyclip"
    finally:
        dataset.delete()
