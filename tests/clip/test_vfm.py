"""The second frozen backbone: VFM registry, loading (file, state dict, no download), caching, input."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import tfovss_core as tc
from tfovss_core.clip import vfm as vfm_module
from tfovss_core.clip.vfm import DinoViT, VFM_REGISTRY, load_vfm, vfm_spec
from tfovss_core.io.images import CLIP_MEAN, CLIP_STD

# a 2-block DINO-style ViT, registered for the duration of a test only
TINY = dataclasses.replace(vfm_spec("dino_vits16"), name="tiny_dino_test", embed_dim=64, depth=2, num_heads=2,
                           patch_size=8, img_size=32, checkpoint_file="tiny_dino_test_pretrain.pth")


@pytest.fixture
def tiny_spec(monkeypatch):
    monkeypatch.setitem(VFM_REGISTRY, TINY.name, TINY)
    yield TINY
    vfm_module.clear_vfm_cache()


def _state_dict(seed=0):
    torch.manual_seed(seed)
    module = DinoViT(TINY)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_the_four_dino_hub_models_are_registered_with_their_official_shapes():
    shapes = {n: (vfm_spec(n).embed_dim, vfm_spec(n).num_heads, vfm_spec(n).patch_size) for n in tc.get_method_class(
        "proxyclip").Options.__dataclass_fields__["vfm"].metadata["choices"]}
    assert shapes == {"dino_vits16": (384, 6, 16), "dino_vits8": (384, 6, 8), "dino_vitb16": (768, 12, 16),
                      "dino_vitb8": (768, 12, 8)}
    keys = DinoViT(vfm_spec("dino_vits16")).state_dict()
    assert keys["pos_embed"].shape == (1, 197, 384) and keys["blocks.11.attn.qkv.bias"].shape == (3 * 384,)
    assert "head.weight" not in keys


def test_local_file_roundtrip_is_cached_and_equals_the_state_dict(tiny_spec, tmp_path):
    sd = _state_dict()
    path = tmp_path / "tiny.pth"
    torch.save(sd, path)
    from_file = load_vfm(TINY.name, str(path), "cpu")
    assert load_vfm(TINY.name, path, "cpu") is from_file            # cached per process
    for k, v in from_file.module.state_dict().items():
        assert torch.equal(v, sd[k]), k
    x = torch.randn(2, 3, 48, 40)
    from_dict = load_vfm(TINY.name, sd, "cpu")
    with torch.inference_mode():
        a, grid = from_file.patch_features(x)
        b, _ = from_dict.patch_features(x)
    assert grid == (6, 5) and a.shape == (2, 30, 64)
    assert torch.equal(a, b)
    assert from_file.label == "file:tiny.pth" and from_dict.label == "state-dict"
    # a DINO training checkpoint nests the backbone under "teacher" with prefixes; its head is dropped
    wrapped = {"teacher": {**{f"module.backbone.{k}": v for k, v in sd.items()}, "head.mlp.0.weight": torch.ones(1)}}
    torch.save(wrapped, tmp_path / "train.pth")
    with torch.inference_mode():
        c, _ = load_vfm(TINY.name, tmp_path / "train.pth", "cpu").patch_features(x)
    assert torch.equal(a, c)


def test_bad_files_fail_with_the_path_and_the_problem(tiny_spec, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(tc.WeightsError, match="cannot read VFM weights file .*garbage.pth"):
        load_vfm(TINY.name, garbage, "cpu")
    with pytest.raises(tc.WeightsError, match="does not exist"):
        load_vfm(TINY.name, tmp_path / "absent.pth", "cpu")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(tc.WeightsError, match="does not hold a state dict"):
        load_vfm(TINY.name, tmp_path / "tensor.pth", "cpu")
    sd = _state_dict()
    sd["pos_embed"] = torch.zeros(1, 10, 64)
    with pytest.raises(tc.WeightsError, match=r"do not fit tiny_dino_test: 1 tensors of the wrong shape \(e\.g\. pos_embed"):
        load_vfm(TINY.name, sd, "cpu")
    with pytest.raises(tc.WeightsError, match="do not fit dino_vits16"):
        load_vfm("dino_vits16", _state_dict(), "cpu")
    with pytest.raises(tc.ConfigError, match="unknown vision foundation model 'dinov3'.*dino_vitb8"):
        load_vfm("dinov3", None, "cpu")


def _serve(directory):
    """A loopback HTTP server over ``directory`` (stopped by the caller): ``(server, base URL)``."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_the_official_checkpoint_is_downloaded_once_into_torch_hubs_folder(tiny_spec, tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    torch.save(_state_dict(), served / TINY.checkpoint_file)
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    server, base = _serve(served)
    try:
        monkeypatch.setitem(VFM_REGISTRY, TINY.name, dataclasses.replace(TINY, url=f"{base}/{TINY.checkpoint_file}"))
        model = load_vfm(TINY.name, None, "cpu")
        target = hub / "checkpoints" / TINY.checkpoint_file
        assert target.read_bytes() == (served / TINY.checkpoint_file).read_bytes()
        assert model.label == f"file:{TINY.checkpoint_file}"
        assert [p for p in (hub / "checkpoints").iterdir()] == [target]    # no partial file left
    finally:
        server.shutdown()
    # the server is gone: the file already downloaded is used, nothing is fetched again
    vfm_module.clear_vfm_cache()
    assert load_vfm(TINY.name, "official", "cpu").label == f"file:{TINY.checkpoint_file}"


def test_a_failed_download_names_the_cause_and_the_fix_and_leaves_no_file(tiny_spec, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    server, base = _serve(tmp_path)
    server.shutdown()
    server.server_close()                      # a loopback port nothing listens on any more
    monkeypatch.setitem(VFM_REGISTRY, TINY.name, dataclasses.replace(TINY, url=f"{base}/{TINY.checkpoint_file}"))
    for weights in (None, TINY.name):
        with pytest.raises(tc.WeightsError) as err:
            load_vfm(TINY.name, weights, "cpu")
        msg = str(err.value)
        assert f"could not download the {TINY.name} weights from {base}" in msg
        assert "URLError" in msg or "ConnectionRefused" in msg, msg
        assert "vfm_weights=/path/to/" in msg and "facebookresearch/dino" in msg
        assert not (tmp_path / "checkpoints" / TINY.checkpoint_file).exists()


def test_the_official_dino_urls_are_those_of_facebookresearch_dino():
    assert vfm_spec("dino_vitb8").url == "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"
    assert vfm_spec("dino_vits16").url == ("https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/"
                                          "dino_deitsmall16_pretrain.pth")


def test_a_local_file_never_touches_the_network(tiny_spec, tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    path = tmp_path / "weights.pth"
    torch.save(_state_dict(), path)
    assert load_vfm(TINY.name, str(path), "cpu").label == "file:weights.pth"


def test_input_is_clip_unnormalised_then_imagenet_normalised_without_resize(tiny_spec):
    model = load_vfm(TINY.name, _state_dict(), "cpu")
    rgb = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 40, 56)).astype(np.float32))
    clip_x = ((rgb - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1))[None]
    imagenet = (rgb / 255 - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(3, 1, 1)
    out = model.input_from_clip(clip_x)
    assert out.shape == (1, 3, 40, 56)
    torch.testing.assert_close(out[0], imagenet, atol=2e-5, rtol=0)


def test_positional_table_native_when_square_and_dino_interpolated_otherwise(tiny_spec):
    module = load_vfm(TINY.name, _state_dict(), "cpu").module
    native = module.positional_embedding((4, 4), True, torch.float32)
    assert native is module.pos_embed or torch.equal(native, module.pos_embed)
    # the +0.1 trick: sampled with scale (n + 0.1) / native, not n / native
    grid = module.positional_embedding((6, 5), False, torch.float32)
    table = module.pos_embed[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    plain = torch.nn.functional.interpolate(table, size=(6, 5), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 30, -1)
    assert grid.shape == (1, 31, 64) and torch.equal(grid[:, 0], module.pos_embed[:, 0])
    assert not torch.allclose(grid[:, 1:], plain, atol=1e-4)
    trick = torch.nn.functional.interpolate(table, scale_factor=(6.1 / 4, 5.1 / 4), mode="bicubic")
    assert torch.equal(grid[:, 1:], trick.permute(0, 2, 3, 1).reshape(1, 30, -1))


def test_random_weights_are_seeded_and_labelled(tiny_spec):
    a = load_vfm(TINY.name, "random:3", "cpu")
    assert a is load_vfm(TINY.name, "random:3", "cpu") and a.label == "random:3"
    b = load_vfm(TINY.name, "random:4", "cpu")
    assert not torch.equal(a.module.pos_embed, b.module.pos_embed)
    with pytest.raises(tc.WeightsError, match="random:<integer seed>"):
        load_vfm(TINY.name, "random:x", "cpu")


def test_proxyclip_pads_windows_to_56_and_outputs_the_vfm_grid(tmp_path):
    from tfovss_core.clip.synthetic import tiny_clip
    model = tiny_clip()
    image = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    seg = tc.Segmenter(model, "proxyclip", ["cat", "dog"], short_side=90, crop=100, stride=60,
                       templates=["a photo of a {}."], vfm="dino_vits16", vfm_weights="random")
    assert seg.window_padding(90, 100) == (6, 6, 11, 11)           # 90 x 100 -> 112 x 112
    _, x = seg.prepare(image)
    with torch.inference_mode():
        out = next(seg.windows(x))
    assert out.grid == (7, 7) and out.logits.shape[-2:] == (7, 7)  # dino_vits16 on 112 x 112
    res = seg.predict(image)
    assert res.probs.shape == (2, 90, 120) and np.isfinite(res.probs).all()
    assert seg.describe()["method"]["vfm"]["weights"] == "random:0"
    with pytest.raises(tc.ConfigError, match="vfm.*must be one of"):
        tc.Segmenter(model, "proxyclip", ["cat"], vfm="sam")
