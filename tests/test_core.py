"""Core engine: loading paths, backbone equivalences, text encoding, driver mechanics, bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import tfovss_core as tc
from tfovss_core.clip import loading as model_mod
from tfovss_core.clip.backbone import TrunkRequest
from tfovss_core.clip.synthetic import tiny_clip, tiny_state_dict
from conftest import REPO_ROOT

SAMPLES = REPO_ROOT / "samples"


@pytest.fixture(scope="module")
def tiny():
    return tiny_clip(seed=0)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(100, 140, 3), dtype=np.uint8)


def _sd_variants(tmp_path):
    """The same tiny weights in every file format load_clip accepts."""
    sd = tiny_state_dict(seed=1)
    ref = tc.load_clip("tiny", dict(sd))
    open_clip_sd = ref.model.state_dict()               # open_clip keys, fp16-rounded values
    paths = {}
    paths["pt"] = tmp_path / "w.pt"
    torch.save(open_clip_sd, paths["pt"])
    paths["wrapped"] = tmp_path / "w_wrapped.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in open_clip_sd.items()}}, paths["wrapped"])
    from safetensors.torch import save_file
    paths["safetensors"] = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in open_clip_sd.items()}, str(paths["safetensors"]))
    openai = {k: (v.half() if v.ndim >= 2 and "embedding" not in k else v) for k, v in sd.items()}
    openai.update(input_resolution=torch.tensor(64), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    paths["openai"] = tmp_path / "w_openai.pt"
    torch.save(openai, paths["openai"])
    return ref, paths


def test_every_local_format_loads_the_same_model(tmp_path, monkeypatch, image):
    ref, paths = _sd_variants(tmp_path)

    def no_network(*a, **k):  # a local file must never reach for a download
        raise AssertionError("network access attempted while loading a local file")
    monkeypatch.setattr(model_mod.open_clip.pretrained, "download_pretrained", no_network, raising=False)
    monkeypatch.setattr(model_mod.open_clip.pretrained, "download_pretrained_from_url", no_network, raising=False)

    seg_ref = tc.Segmenter(ref, "clearclip", ["a", "b"], short_side=None, crop=0)
    expected = seg_ref.predict(image).probs
    for kind, path in paths.items():
        # open_clip-format files need the architecture to exist in open_clip: only the OpenAI
        # format carries its own shape, so "tiny" is loaded from that one; others via the builder.
        if kind != "openai":
            loaded = tc.load_clip("tiny", dict(torch.load(path, weights_only=True))
                                  if kind != "safetensors" else _st(path))
        else:
            loaded = tc.load_clip("tiny", str(path))
        got = tc.Segmenter(loaded, "clearclip", ["a", "b"], short_side=None, crop=0).predict(image).probs
        np.testing.assert_array_equal(got, expected, err_msg=kind)


def _st(path):
    from safetensors.torch import load_file
    return load_file(str(path))


def test_open_clip_format_file_roundtrip_with_registered_arch(tmp_path, image):
    torch.manual_seed(0)
    a = tc.load_clip("ViT-B-32", None)        # random init: a real open_clip architecture
    torch.save(a.model.state_dict(), tmp_path / "b32.pt")
    torch.save({"state_dict": {"module." + k: v for k, v in a.model.state_dict().items()}}, tmp_path / "b32w.pt")
    for name in ("b32.pt", "b32w.pt"):
        b = tc.load_clip("ViT-B-32", str(tmp_path / name))
        for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
            assert torch.equal(va, vb), k
    with pytest.raises(tc.WeightsError, match="does not fit architecture ViT-B-16"):
        tc.load_clip("ViT-B-16", str(tmp_path / "b32.pt"))


def test_openai_state_dict_of_wrong_arch_is_refused():
    with pytest.raises(tc.WeightsError, match="does not fit architecture ViT-B-16.*vision layers"):
        tc.load_clip("ViT-B-16", tiny_state_dict())


def test_unknown_tag_and_failed_download_say_how_to_fix(monkeypatch):
    with pytest.raises(tc.WeightsError, match="not a pretrained tag of ViT-B-16"):
        tc.load_clip("ViT-B-16", "no_such_tag")

    def offline(*a, **k):
        raise RuntimeError("Failed to download weights for tag 'openai'")
    monkeypatch.setattr(model_mod.open_clip, "create_model", offline)
    with pytest.raises(tc.WeightsError) as err:
        tc.load_clip("ViT-B-16", "openai")
    msg = str(err.value)
    assert "Fix:" in msg and "local path" in msg and "network" in msg
    with pytest.raises(tc.WeightsError, match="does not exist"):
        tc.load_clip("ViT-B-16", "/no/such/file.pt")


def test_oai_weights_are_fp16_rounded_on_load():
    sd = tiny_state_dict(seed=2)
    m = tc.load_clip("tiny", dict(sd)).model.state_dict()
    key = "visual.transformer.resblocks.0.attn.in_proj_weight"
    assert torch.equal(m[key], sd[key].half().float())
    assert not torch.equal(sd[key].half().float(), sd[key])          # rounding did something
    assert torch.equal(m["visual.positional_embedding"], sd["visual.positional_embedding"])  # kept fp32


def test_stock_trunk_reproduces_encode_image(tiny):
    bb = tiny.visual
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        trunk = bb.run_trunk(x, TrunkRequest(depth=bb.depth))
        ours = bb.head(trunk.x[:, 0])
        ref = tiny.model.encode_image(x)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_custom_last_block_with_stock_settings_equals_stock_block(tiny):
    bb = tiny.visual
    x = torch.randn(3, 17, bb.width)
    with torch.inference_mode():
        ours = bb.last_block(x, lambda q, k, v: bb.similarity_attention(q, k), residual=True, ffn=True)
        ref = bb.blocks[-1](x)
    torch.testing.assert_close(ours, ref, atol=2e-6, rtol=1e-5)


def test_positional_embedding_interpolation(tiny):
    bb = tiny.visual
    table = bb.visual.positional_embedding
    assert torch.equal(bb.positional_embedding((4, 4), "cpu", torch.float32), table)
    pos = bb.positional_embedding((3, 7), "cpu", torch.float32)
    assert pos.shape == (1 + 21, bb.width)
    assert torch.equal(pos[0], table[0])
    grid = table[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, scale_factor=(3.1 / 4, 7.1 / 4), mode="bicubic",
                                               align_corners=False).permute(0, 2, 3, 1).reshape(21, -1)
    torch.testing.assert_close(pos[1:], expected)
    assert bb.positional_embedding((3, 7), "cpu", torch.float32) is pos   # cached


def test_truncated_text_equals_full_length(tiny):
    prompts = ["a photo of a cat.", "a very very long and detailed photograph of a small orange cat on a mat."]
    tokens = tiny.tokenizer(prompts)
    with torch.inference_mode():
        full = tiny.model.encode_text(tokens)
        short = tiny.text.encode_tokens(tokens)
    torch.testing.assert_close(short, full, atol=1e-6, rtol=1e-6)


def test_text_cache_hits_disk(tmp_path):
    m = tiny_clip(seed=0, text_cache_dir=tmp_path)
    first = m.text.encode_queries(["cat", "dog"], ["a photo of a {}.", "a {}."])
    assert len(list(tmp_path.rglob("*.pt"))) == 2
    m2 = tiny_clip(seed=0, text_cache_dir=tmp_path)
    m2.text._encode_uncached = lambda *a, **k: pytest.fail("should have been read from the cache")
    torch.testing.assert_close(m2.text.encode_queries(["dog", "cat"], ["a photo of a {}.", "a {}."]), first.flip(0))
    other = tiny_clip(seed=3, text_cache_dir=tmp_path)      # other weights -> other cache key
    assert not torch.allclose(other.text.encode_queries(["cat"], ["a {}."]), first[:1])


def test_sliding_windows_cover_and_stay_inside():
    boxes = tc.sliding_windows(336, 448, 224, 112)
    assert len(boxes) == 2 * 3
    cover = np.zeros((336, 448), int)
    for y1, y2, x1, x2 in boxes:
        assert (y2 - y1, x2 - x1) == (224, 224) and y2 <= 336 and x2 <= 448
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1
    assert boxes[-1] == (112, 336, 224, 448)                   # the last window is flush with the border
    assert tc.sliding_windows(100, 150, 224, 112) == [(0, 100, 0, 150)]  # smaller image: one shrunken window
    assert tc.sliding_windows(500, 700, 0, 0) == [(0, 500, 0, 700)]


@pytest.mark.parametrize("method", tc.list_methods(include_composed=True))
def test_every_method_batched_equals_single_and_is_deterministic(tiny, image, method):
    kw = dict(short_side=64, crop=32, stride=16)
    one = tc.Segmenter(tiny, method, ["cat", ["dog", "puppy"], "grass"], batch_size=1, **kw).predict(image)
    many = tc.Segmenter(tiny, method, ["cat", ["dog", "puppy"], "grass"], batch_size=64, **kw).predict(image)
    again = tc.Segmenter(tiny, method, ["cat", ["dog", "puppy"], "grass"], batch_size=64, **kw).predict(image)
    assert one.probs.shape == (3, 100, 140) and one.mask.shape == (100, 140)
    np.testing.assert_allclose(many.probs, one.probs, atol=2e-6, rtol=0)
    np.testing.assert_array_equal(many.probs, again.probs)
    assert np.isfinite(one.probs).all() and (one.probs >= 0).all()


def test_synonyms_take_the_max_and_thresholds_apply(tiny, image):
    base = tc.Segmenter(tiny, "sclip", ["cat", "dog", "puppy"], short_side=64, crop=0).predict(image)
    merged = tc.Segmenter(tiny, "sclip", ["cat", ["dog", "puppy"]], short_side=64, crop=0).predict(image)
    np.testing.assert_allclose(merged.probs[1], np.maximum(base.probs[1], base.probs[2]), atol=1e-6)
    strict = tc.Segmenter(tiny, "sclip", ["cat", ["dog", "puppy"]], short_side=64, crop=0, prob_thd=0.99).predict(image)
    assert (strict.mask == 0).all()
    assert strict.mask.dtype == np.uint8


def test_area_threshold_drops_small_foreground_classes():
    from tfovss_core.ops.postprocess import apply_area_threshold
    probs = torch.zeros(3, 10, 10)
    probs[0] = 0.2
    probs[1, :, :9] = 0.9            # class 1 wins 90 pixels
    probs[2, :, 9] = 0.8             # class 2 wins 10 pixels = 10 % of the foreground
    out = apply_area_threshold(probs, 0.1)
    assert torch.equal(out[1], probs[1]) and (out[2] == 0).all() and torch.equal(out[0], probs[0])
    assert torch.equal(apply_area_threshold(probs, 0.09)[2], probs[2])


def test_mask_takes_the_first_class_on_ties_and_the_top_probability():
    from tfovss_core.ops.postprocess import probabilities_and_mask
    logits = torch.zeros(4, 3, 5)
    logits[2, 0] = 1.0
    logits[3, 0] = 1.0               # row 0: queries 2 and 3 tie -> the first (class 1 via synonyms)
    logits[1, 1] = 2.0               # row 1: class 1 (query 1) wins
    query_class = torch.tensor([0, 1, 1, 2])
    probs, mask = probabilities_and_mask(logits, query_class, 3, logit_scale=10.0)
    assert mask[0].tolist() == [1] * 5 and mask[1].tolist() == [1] * 5
    assert mask[2].tolist() == [0] * 5                        # all-equal row -> class 0
    torch.testing.assert_close(probs, torch.stack([torch.softmax(logits * 10, 0)[0],
                                                   torch.softmax(logits * 10, 0)[1:3].amax(0),
                                                   torch.softmax(logits * 10, 0)[3]]))
    _, strict = probabilities_and_mask(logits, query_class, 3, logit_scale=10.0, prob_thd=0.6)
    assert strict[1].tolist() == [1] * 5 and strict[0].tolist() == [0] * 5  # 0.5 top prob < 0.6


def test_pamr_keeps_constant_masks_and_smooths_towards_edges():
    from tfovss_core.ops.pamr import pamr
    img = torch.zeros(1, 3, 20, 20)
    img[..., :, 10:] = 1.0
    const = torch.full((1, 2, 20, 20), 0.3)
    torch.testing.assert_close(pamr(img, const, 5, (1, 2)), const)
    noisy = torch.zeros(1, 1, 20, 20)
    noisy[..., :, 10:] = 1.0
    noisy[..., 5, 3] = 1.0                       # an outlier inside the left region
    out = pamr(img, noisy, 10, (1, 2))
    assert out[0, 0, 5, 3] < 0.5 and out[0, 0, :, 12:].min() > 0.9


@pytest.mark.parametrize("bad,match", [
    (np.zeros((50, 50), np.uint8), "greyscale"),
    (np.zeros((50, 50, 4), np.uint8), "RGBA"),
    (np.zeros((50, 50, 3), np.uint16), "uint16"),
    (np.zeros((8, 8, 3), np.uint8), "smaller than one"),
])
def test_bad_arrays_give_clear_errors(tiny, bad, match):
    seg = tc.Segmenter(tiny, "clearclip", ["a", "b"], short_side=None, crop=0)
    with pytest.raises(tc.InputError, match=match):
        seg.predict(bad, name="sample-42")
    with pytest.raises(tc.InputError, match="sample-42"):
        seg.predict(bad, name="sample-42")


def test_bad_files_give_clear_errors(tiny, tmp_path):
    seg = tc.Segmenter(tiny, "clearclip", ["a", "b"], short_side=64, crop=0)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(tc.InputError, match="corrupt.jpg.*cannot decode"):
        seg.predict(corrupt)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(deep)
    with pytest.raises(tc.InputError, match="deep.png.*16-bit"):
        seg.predict(deep)
    grey = tmp_path / "grey.png"                     # 8-bit greyscale files are converted, like loaders do
    Image.fromarray(np.full((40, 60), 90, np.uint8)).save(grey)
    assert seg.predict(grey).mask.shape == (40, 60)
    with pytest.raises(tc.InputError, match="no such image"):
        seg.predict(tmp_path / "missing.jpg")


def test_bad_configuration_gives_clear_errors(tiny):
    with pytest.raises(tc.ConfigError, match="empty"):
        tc.Segmenter(tiny, "sclip", [])
    with pytest.raises(tc.ConfigError, match="unknown method 'nope'.*sclip"):
        tc.Segmenter(tiny, "nope", ["a"])
    with pytest.raises(tc.ConfigError, match="unknown setting.*'gaussian_sd'.*gaussian_std"):
        tc.Segmenter(tiny, "naclip", ["a"], gaussian_sd=3)
    with pytest.raises(tc.ConfigError, match="neither a preset"):
        tc.Segmenter(tiny, "sclip", "not-a-preset")
    with pytest.raises(tc.ConfigError, match="prob_thd"):
        tc.Segmenter(tiny, "sclip", ["a"], prob_thd=2)
    with pytest.raises(tc.ConfigError, match="one '\\{\\}'"):
        tc.Segmenter(tiny, "sclip", ["a"], templates=["no placeholder"]).text_features
    with pytest.raises(tc.ConfigError, match="must be one of"):
        tc.Segmenter(tiny, "clearclip", ["a"], attention="xx")


def test_presets_apply_official_settings(tiny):
    seg = tc.Segmenter(tiny, "sclip", "voc21")
    s = seg.settings
    assert (s.short_side, s.crop, s.stride, s.logit_scale, s.prob_thd, s.area_thd) == (336, 224, 112, 65, 0.1, 0.1)
    assert seg.num_classes == 21 and len(seg.vocabulary.queries) == 56
    assert tc.Segmenter(tiny, "sclip", "voc21", logit_scale=30).settings.logit_scale == 30  # explicit wins
    cc = tc.Segmenter(tiny, "clearclip", "voc21").settings
    assert (cc.short_side, cc.crop, cc.stride, cc.logit_scale, cc.prob_thd, cc.pad_to_patch) == (448, 448, 224, 50, 0.5, True)
    desc = json.loads(json.dumps(seg.describe()))
    assert desc["preset"] == "voc21" and desc["settings"]["logit_scale"] == 65


def test_weight_edit_is_reverted_bit_for_bit(tiny):
    w = tiny.visual.blocks[1].mlp.c_proj.weight
    before = w.detach().clone()
    with tiny.visual.weight_edit([(w, lambda t: t * 0)]):
        assert (w == 0).all()
    assert torch.equal(w, before)
    with pytest.raises(RuntimeError):
        with tiny.visual.weight_edit([(w, lambda t: t + 1)]):
            raise RuntimeError("boom")
    assert torch.equal(w, before)


def test_cli_segment_continues_after_bad_images_and_reports_them(tmp_path):
    weights = tmp_path / "tiny_openai.pt"
    sd = tiny_state_dict(seed=0)
    sd["input_resolution"] = torch.tensor(64)
    torch.save(sd, weights)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tfovss_core.cli", "segment", str(SAMPLES / "chelsea.jpg"), str(bad),
           str(SAMPLES / "coffee.jpg"), "--arch", "tiny", "--pretrained", str(weights), "--classes",
           "cat; cup, mug; background", "--method", "clearclip", "--out", str(out), "--quiet",
           "--set", "short_side=64", "--set", "crop=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 1, proc.stderr
    assert "broken.jpg" in proc.stderr and "cannot decode" in proc.stderr
    run = json.loads((out / "run.json").read_text())
    assert [im["mask"] for im in run["images"]] == ["chelsea_mask.png", "coffee_mask.png"]
    assert run["failures"][0]["image"].endswith("broken.jpg")
    assert run["settings"]["short_side"] == 64 and run["method"]["method"] == "clearclip"
    mask = np.array(Image.open(out / "chelsea_mask.png"))
    assert mask.shape == (300, 451) and mask.max() <= 2
    # existing outputs are not overwritten unless asked
    proc2 = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc2.returncode == 1 and "exists" in proc2.stderr
    assert subprocess.run(cmd[:-4] + ["--overwrite", "--set", "short_side=64", "--set", "crop=0"],
                          capture_output=True, text=True, cwd=REPO_ROOT).returncode == 1  # only broken.jpg fails


def test_cli_methods_lists_every_method_with_options():
    proc = subprocess.run([sys.executable, "-m", "tfovss_core.cli", "methods", "--json"], capture_output=True,
                          text=True, cwd=REPO_ROOT)
    infos = json.loads(proc.stdout)
    names = {i["name"] for i in infos}
    assert set(tc.list_methods()) <= names
    scclip = next(i for i in infos if i["name"] == "scclip")
    assert {o["name"] for o in scclip["options"]} >= {"pre_adjust_idx", "beta", "res_cls"}


class _Holder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_torchscript_archive_loads_like_openai_weights(tmp_path):
    """OpenAI shipped TorchScript archives: their state dict (fp16 linear weights) must load."""
    sd = tiny_state_dict(seed=4)
    root = _Holder()
    for key, value in sd.items():
        *mods, leaf = key.split(".")
        m = root
        for name in mods:
            if not hasattr(m, name):
                m.add_module(name, _Holder())
            m = getattr(m, name)
        v = value.half() if value.ndim >= 2 and "embedding" not in key else value
        m.register_parameter(leaf, torch.nn.Parameter(v.clone(), requires_grad=False))
    path = tmp_path / "ViT-tiny.pt"
    torch.jit.save(torch.jit.script(root), str(path))
    loaded = tc.load_clip("tiny", str(path)).model.state_dict()
    reference = tc.load_clip("tiny", dict(sd)).model.state_dict()
    assert loaded.keys() == reference.keys()
    for k in reference:
        assert torch.equal(loaded[k], reference[k]), k
