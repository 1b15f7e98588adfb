"""Loading CLIP weights: every local file format loads the same model, without the network; wrong
architectures and unknown tags are refused with a fix; OpenAI weights are fp16-rounded."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tfovss_core as tc
from tfovss_core.clip import loading as model_mod
from tfovss_core.clip.synthetic import tiny_state_dict


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

def _st(path):
    from safetensors.torch import load_file
    return load_file(str(path))


class _Holder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


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


def test_unknown_tag_and_missing_file_say_how_to_fix():
    """(Failed downloads, offline caches and the hub: tests/clip/test_hub.py.)"""
    with pytest.raises(tc.WeightsError, match="not a pretrained tag of ViT-B-16.*Fix:"):
        tc.load_clip("ViT-B-16", "no_such_tag")
    with pytest.raises(tc.WeightsError, match="does not exist"):
        tc.load_clip("ViT-B-16", "/no/such/file.pt")


def test_oai_weights_are_fp16_rounded_on_load():
    sd = tiny_state_dict(seed=2)
    m = tc.load_clip("tiny", dict(sd)).model.state_dict()
    key = "visual.transformer.resblocks.0.attn.in_proj_weight"
    assert torch.equal(m[key], sd[key].half().float())
    assert not torch.equal(sd[key].half().float(), sd[key])          # rounding did something
    assert torch.equal(m["visual.positional_embedding"], sd["visual.positional_embedding"])  # kept fp32


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
