"""``tfovss segment`` on photos with EXIF orientation (masks and overlays as displayed, aligned
with the rotated image), synthetic weights labelled with the one banner, and failures that name
the image once."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

import tfovss_core as tc
from tfovss_core.cli import main, parse_classes
from tfovss_core.clip.synthetic import tiny_clip
from tfovss_core.spec.weights import SYNTHETIC_BANNER
from support.exif import sensor_image, write_oriented

CLASSES = "red; blue; green; sky; person"
SETTINGS = {"short_side": 64, "crop": 32, "stride": 16}


def test_segment_follows_exif_orientation_and_names_failures_once(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    stored = sensor_image()
    shown = {o: write_oriented(images / f"o{o}.jpg", stored, o) for o in range(1, 9)}
    (images / "x.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    argv = ["segment", str(images), "--classes", CLASSES, "--pretrained", "tiny:0", "--out", str(out),
            "--device", "cpu", "--quiet"] + [a for k, v in SETTINGS.items() for a in ("--set", f"{k}={v}")]
    assert main(argv) == 1                              # x.png failed, the others were written
    err = capsys.readouterr().err
    assert f"NOTE: {SYNTHETIC_BANNER}" in err
    failure_lines = [line for line in err.splitlines() if "x.png" in line]
    assert len(failure_lines) == 1 and failure_lines[0].count("x.png") == 1
    assert "cannot decode the image file" in failure_lines[0]

    reference = tc.Segmenter(tiny_clip(seed=0), "sclip", parse_classes(CLASSES), **SETTINGS)
    for o, pixels in shown.items():
        mask = np.array(Image.open(out / f"o{o}_mask.png"))
        want = reference.predict(pixels).mask
        assert mask.shape == pixels.shape[:2], o
        assert len(np.unique(want)) >= 3
        np.testing.assert_array_equal(mask, want, err_msg=f"orientation {o}")
        overlay = Image.open(out / f"o{o}_overlay.jpg")
        assert overlay.width == pixels.shape[1] and overlay.height > pixels.shape[0]
    run = json.loads((out / "run.json").read_text())
    assert run["synthetic_weights"] is True and run["warning"] == SYNTHETIC_BANNER
    (failure,) = run["failures"]
    assert failure["image"].endswith("x.png") and failure["error"].count("x.png") == 1
