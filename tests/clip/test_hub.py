"""Pretrained tags through the Hugging Face hub, offline: a real hub cache laid out on disk (the
``models--ORG--NAME/{blobs,snapshots,refs}`` layout that ``hf download`` writes) holding
synthetic ViT-B-32 weights for a hub-only tag and for ``openai`` by its hub id; and the five ways
loading a tag can fail, each with its own message and fix."""
from __future__ import annotations

import hashlib
import socket
import sys
import time
from types import SimpleNamespace

import huggingface_hub  # noqa: F401  (a declared dependency: scripts/setup.sh installs it)
import pytest
import torch

import tfovss_core as tc
from tfovss_core.clip.openclip import open_clip
from tfovss_core.clip.synthetic import tiny_state_dict

# open_clip 3.3.0's hub ids (open_clip/pretrained.py): "ViT-B-32" is the smallest ViT with
# hub-only tags, and with huggingface_hub installed open_clip fetches ``openai`` from timm's copy.
HUB_ONLY = ("laion2b_s34b_b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip_model.safetensors")
OPENAI = ("openai", "timm/vit_base_patch32_clip_224.openai", "open_clip_pytorch_model.bin")
NOT_CACHED = ("datacomp_xl_s13b_b90k", "laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K")
WRONG_SHAPE = ("datacomp_m_s128m_b4k", "laion/CLIP-ViT-B-32-DataComp.M-s128M-b4K", "open_clip_model.safetensors")
REVISION = "0123456789abcdef0123456789abcdef01234567"



def put_in_cache(hub_cache, repo_id: str, filename: str, write) -> None:
    """One file in the hub cache, as ``hf_hub_download`` leaves it: a content-addressed blob, a
    snapshot symlink to it, and ``refs/main`` naming the snapshot."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    tmp = repo / "blobs" / "incoming"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    write(tmp)
    blob = tmp.with_name(hashlib.sha256(tmp.read_bytes()).hexdigest())
    tmp.rename(blob)
    snap = repo / "snapshots" / REVISION / filename
    snap.parent.mkdir(parents=True, exist_ok=True)
    snap.symlink_to("../../blobs/" + blob.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Synthetic fp16 ViT-B-32 weights (two different sets) in a hub cache, plus a checkpoint
    of the wrong architecture under a third tag."""
    torch.manual_seed(7)
    model = open_clip.create_model("ViT-B-32")
    hub_only = {k: v.half() for k, v in model.state_dict().items()}
    del model
    openai = {k: -v for k, v in hub_only.items()}     # other values: proves which file was read
    home = tmp_path_factory.mktemp("hf_home")
    cache = home / "hub"
    from safetensors.torch import save_file
    put_in_cache(cache, HUB_ONLY[1], HUB_ONLY[2], lambda p: save_file(hub_only, str(p)))
    put_in_cache(cache, OPENAI[1], OPENAI[2], lambda p: torch.save(openai, p))
    tiny = {k: v.contiguous() for k, v in tiny_state_dict(seed=0).items()}
    put_in_cache(cache, WRONG_SHAPE[1], WRONG_SHAPE[2], lambda p: save_file(tiny, str(p)))
    return {"home": home, "cache": cache, HUB_ONLY[0]: hub_only, OPENAI[0]: openai}


class NetworkGuard:
    """Refuses (and counts) every outgoing connection and name lookup."""

    def __init__(self, monkeypatch):
        self.attempts: list[str] = []

        def refuse(what):
            def _refuse(*args, **kwargs):
                self.attempts.append(f"{what}{args[1:2] if what == 'connect' else args[:1]}")
                raise ConnectionRefusedError("outgoing connections refused by the test")
            return _refuse
        monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
        monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect"))
        monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))


def use_cache(monkeypatch, home, offline: bool) -> NetworkGuard:
    """HF_HOME / HF_HUB_OFFLINE as a user sets them (huggingface_hub reads them at import, so
    its constants are set too)."""
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(hc, "HF_HOME", str(home))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", offline)
    # huggingface_hub retries a failed request five times with exponential backoff (about 45 s):
    # its own pacing, not what is tested here
    import huggingface_hub.utils._http as hub_http
    monkeypatch.setattr(hub_http, "time", SimpleNamespace(
        **{**{n: getattr(time, n) for n in dir(time) if not n.startswith("_")}, "sleep": lambda s: None}))
    return NetworkGuard(monkeypatch)


def test_hub_ids_are_open_clips():
    for tag, repo, _ in (HUB_ONLY, OPENAI):
        cfg = open_clip.get_pretrained_cfg("ViT-B-32", tag)
        assert cfg["hf_hub"].rstrip("/") == repo
    assert not open_clip.get_pretrained_cfg("ViT-B-32", HUB_ONLY[0]).get("url")  # hub only


@pytest.mark.parametrize("tag", [HUB_ONLY[0], OPENAI[0]])
def test_tag_loads_offline_from_the_hub_cache_with_the_saved_weights(saved, monkeypatch, tag):
    guard = use_cache(monkeypatch, saved["home"], offline=True)
    model = tc.load_clip("ViT-B-32", tag)
    assert guard.attempts == []
    assert model.pretrained == tag
    loaded = model.model.state_dict()
    expected = saved[tag]
    assert set(expected) <= set(loaded)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value.float()), key
    # QuickGELU follows the tag: OpenAI's weights were trained with it, LAION's B-32 without
    act = type(model.model.visual.transformer.resblocks[0].mlp.gelu).__name__
    assert act == ("QuickGELU" if tag == "openai" else "GELU")


def test_file_missing_from_the_offline_cache(saved, monkeypatch):
    guard = use_cache(monkeypatch, saved["home"], offline=True)
    with pytest.raises(tc.WeightsError) as err:
        tc.load_clip("ViT-B-32", NOT_CACHED[0])
    msg = str(err.value)
    assert guard.attempts == []
    assert "not in the offline Hugging Face cache" in msg and NOT_CACHED[1] in msg
    assert str(saved["cache"]) in msg
    assert f"hf download {NOT_CACHED[1]}" in msg and "HF_HOME" in msg
    assert "no network" not in msg


def test_no_network(tmp_path, monkeypatch):
    guard = use_cache(monkeypatch, tmp_path, offline=False)
    with pytest.raises(tc.WeightsError) as err:
        tc.load_clip("ViT-B-32", NOT_CACHED[0])
    msg = str(err.value)
    assert guard.attempts, "the hub was never asked"
    assert "no network" in msg and NOT_CACHED[1] in msg
    assert "Fix: connect this machine" in msg and "HF_HUB_OFFLINE=1" in msg
    assert "offline Hugging Face cache" not in msg


def test_package_missing(saved, monkeypatch):
    guard = use_cache(monkeypatch, saved["home"], offline=True)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)   # `import huggingface_hub` fails
    with pytest.raises(tc.WeightsError) as err:
        tc.load_clip("ViT-B-32", HUB_ONLY[0])
    msg = str(err.value)
    assert guard.attempts == []
    assert "hosted only on the Hugging Face hub" in msg and "huggingface_hub package is not installed" in msg
    assert "Fix: pip install huggingface_hub" in msg
    assert "network" not in msg


def test_without_the_package_a_url_tag_tells_no_network_from_other_failures(tmp_path, monkeypatch):
    """Without huggingface_hub open_clip downloads ``openai`` from its URL."""
    guard = use_cache(monkeypatch, tmp_path, offline=False)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(tc.WeightsError) as err:
        tc.load_clip("ViT-B-32", "openai", cache_dir=str(tmp_path / "oc"))
    assert guard.attempts and "no network" in str(err.value) and "local path" in str(err.value)

    def corrupt(*args, **kwargs):
        raise RuntimeError("Model has been downloaded but the SHA256 checksum does not not match")
    monkeypatch.setattr(open_clip, "create_model", corrupt)
    with pytest.raises(tc.WeightsError) as err:
        tc.load_clip("ViT-B-32", "openai")
    msg = str(err.value)
    assert "checksum does not not match" in msg and "network" not in msg and "Fix:" in msg


def test_tag_unknown_for_this_architecture(saved, monkeypatch):
    guard = use_cache(monkeypatch, saved["home"], offline=True)
    with pytest.raises(tc.WeightsError) as err:
        tc.load_clip("ViT-B-32", "laion2b_s34b_b88k")           # a ViT-B-16 tag
    msg = str(err.value)
    assert guard.attempts == []
    assert "'laion2b_s34b_b88k' is not a pretrained tag of ViT-B-32" in msg
    assert "laion2b_s34b_b79k" in msg and "Fix: pick one of these tags" in msg
    assert "network" not in msg


def test_checkpoint_that_does_not_fit(saved, monkeypatch):
    use_cache(monkeypatch, saved["home"], offline=True)
    with pytest.raises(tc.WeightsError) as err:
        tc.load_clip("ViT-B-32", WRONG_SHAPE[0])
    msg = str(err.value)
    assert "does not fit architecture ViT-B-32" in msg and "tensors of the wrong shape" in msg
    assert WRONG_SHAPE[2] in msg and WRONG_SHAPE[0] in msg
    assert "Pick the architecture the checkpoint was trained with" in msg
    assert "network" not in msg
