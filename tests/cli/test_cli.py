"""The `tfovss` command line: `segment` keeps going past bad images and reports them; `methods`
lists every method."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

import tfovss_core as tc
from tfovss_core.clip.synthetic import tiny_state_dict
from support.paths import REPO_ROOT, SAMPLES


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
