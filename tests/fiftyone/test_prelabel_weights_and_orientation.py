"""Pre-labelling real-photo cases: every synthetic weights spec (``tiny:``, ``random:``,
``synthetic:``) flags every label and the run as synthetic; photos with EXIF orientation get
masks of the size FiftyOne's metadata (and the App) show, aligned with the rotated image."""
from __future__ import annotations

import numpy as np
import pytest

import tfovss_core as tc
from tfovss_core.clip.synthetic import tiny_clip, tiny_state_dict
from tfovss_core.spec.weights import is_synthetic
from tfovss_fiftyone.prelabel import prelabel, prelabel_run_info
from support.exif import sensor_image, write_oriented
from support.fo import needs_core, unique_name
from support.paths import GOLDEN

pytestmark = needs_core

FAST = {"short_side": 32, "crop": 32, "stride": 32, "templates": ["a photo of a {}."]}
CLASSES = ["red", "blue", "green", "sky", "person"]


@pytest.fixture()
def photos(fo, tmp_path):
    stored = sensor_image()
    shown = {}
    samples = []
    for o in range(1, 9):
        path = tmp_path / f"o{o}.jpg"
        shown[str(path)] = write_oriented(path, stored, o)
        samples.append(fo.Sample(filepath=str(path)))
    ds = fo.Dataset(unique_name("exif"))
    ds.add_samples(samples)
    ds.compute_metadata()
    yield ds, shown
    ds.delete()


@pytest.mark.parametrize("pretrained", ["tiny:seed0", "random:1", "synthetic:0"])
def test_every_synthetic_spec_flags_every_label_and_the_run(photos, tmp_path, monkeypatch, pretrained):
    monkeypatch.setenv("TFOVSS_SYNTHETIC_WEIGHTS", str(GOLDEN / "make_weights.py"))
    ds, _ = photos
    view = ds.limit(2)
    report = prelabel(view, "ovss", classes=CLASSES, arch="ViT-B-16", pretrained=pretrained,
                      settings=FAST, device="cpu", output_dir=str(tmp_path / "masks"))
    assert report.num_labelled == 2 and report.synthetic is True
    labels = view.values("ovss")
    assert len(labels) == 2 and all(label.synthetic is True for label in labels)
    info = prelabel_run_info(ds, "ovss")
    assert info["report"]["synthetic"] is True
    assert is_synthetic(info["pretrained"])


def test_real_weights_are_not_flagged(photos, tmp_path):
    ds, _ = photos
    view = ds.limit(1)
    real = tc.load_clip("tiny", tiny_state_dict(0))      # a state dict: taken as real weights
    report = prelabel(view, "ovss", classes=CLASSES, model=real, settings=FAST, device="cpu",
                      output_dir=str(tmp_path / "masks"))
    assert report.synthetic is False and not view.first().ovss.has_attribute("synthetic")


def test_masks_follow_exif_orientation(photos, tmp_path):
    ds, shown = photos
    model = tiny_clip(seed=0)
    prelabel(ds, "ovss", classes=CLASSES, model=model, settings=FAST, device="cpu",
             output_dir=str(tmp_path / "masks"))
    reference = tc.Segmenter(model, "sclip", CLASSES, **FAST)
    for sample in ds:
        pixels = shown[sample.filepath]
        mask = sample.ovss.get_mask()
        assert (sample.metadata.width, sample.metadata.height) == (pixels.shape[1], pixels.shape[0])
        assert mask.shape == (sample.metadata.height, sample.metadata.width)
        np.testing.assert_array_equal(mask, reference.predict(pixels).mask, err_msg=sample.filepath)
        assert sample.ovss.synthetic is True            # a tiny_clip model passed in is flagged too
