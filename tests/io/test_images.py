"""Image reading: one EXIF orientation rule (the displayed image, as FiftyOne's metadata, the
App and cv2 see it) for files and PIL images, through load_image and Segmenter.predict; errors
that name the image once."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

import tfovss_core as tc
from tfovss_core.clip.synthetic import tiny_clip
from tfovss_core.io.images import displayed_size, load_image
from support.exif import DISPLAYED, ORIENTATION_TAG, sensor_image, write_oriented

ORIENTATIONS = range(1, 9)
CLASSES = ["red", "blue", "green", "sky", "person"]


@pytest.fixture(scope="module")
def segmenter():
    return tc.Segmenter(tiny_clip(seed=0), "sclip", CLASSES, short_side=None, crop=0)


def test_orientation_table_is_pils_exif_transpose():
    stored = sensor_image()
    for o in ORIENTATIONS:
        im = Image.fromarray(stored)
        im.getexif()[ORIENTATION_TAG] = o
        exif = im.getexif()
        im.info["exif"] = exif.tobytes()
        np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(im)), DISPLAYED[o](stored),
                                      err_msg=f"orientation {o}")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_files_are_read_as_displayed_and_as_cv2_reads_them(tmp_path, fmt):
    stored = sensor_image()
    for o in ORIENTATIONS:
        path = tmp_path / f"o{o}.{fmt.lower()}"
        shown = write_oriented(path, stored, o, fmt)
        rgb = load_image(path)
        expected_hw = stored.shape[:2] if o <= 4 else stored.shape[1::-1]
        assert rgb.shape[:2] == shown.shape[:2] == expected_hw, (fmt, o)
        np.testing.assert_array_equal(rgb, shown, err_msg=f"{fmt} orientation {o}")
        # the official pipelines read with cv2 (mmcv's "color" flag): the same pixels
        np.testing.assert_array_equal(rgb, cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR),
                                                        cv2.COLOR_BGR2RGB), err_msg=f"{fmt} {o} cv2")
        assert displayed_size(path) == (rgb.shape[1], rgb.shape[0])
        with Image.open(path) as im:                   # a PIL image follows the same rule
            np.testing.assert_array_equal(load_image(im), shown)


def test_segmenter_masks_have_the_displayed_size_and_align_with_it(tmp_path, segmenter):
    stored = sensor_image()
    for o in ORIENTATIONS:
        path = tmp_path / f"o{o}.jpg"
        shown = write_oriented(path, stored, o)
        got = segmenter.predict(path)
        want = segmenter.predict(shown)                # the pre-rotated array
        assert got.mask.shape == shown.shape[:2]
        assert len(np.unique(want.mask)) >= 3          # a mask with structure: misalignment shows
        np.testing.assert_array_equal(got.mask, want.mask, err_msg=f"orientation {o}")
        np.testing.assert_array_equal(got.probs, want.probs)
        if o != 1:                                     # the stored pixels would give another mask
            raw = segmenter.predict(np.array(Image.open(path).convert("RGB")))
            assert raw.mask.shape != got.mask.shape or not np.array_equal(raw.mask, got.mask)


def test_decode_errors_name_the_image_once(tmp_path, segmenter):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not an image")
    for read in (load_image, segmenter.predict):
        with pytest.raises(tc.InputError) as err:
            read(bad)
        msg = str(err.value)
        assert msg.count("x.png") == 1 and "cannot decode the image file" in msg
    truncated = tmp_path / "cut.jpg"                   # a decoder error (not an unknown format)
    write_oriented(tmp_path / "whole.jpg", sensor_image(), 6)
    truncated.write_bytes((tmp_path / "whole.jpg").read_bytes()[:400])
    with pytest.raises(tc.InputError) as err:
        load_image(truncated)
    assert str(err.value).count("cut.jpg") == 1 and "cannot decode the image file" in str(err.value)
