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
from support.paths import REPO_ROOT

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

def _st(path):
    from safetensors.torch import load_file
    return load_file(str(path))


class _Holder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

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
