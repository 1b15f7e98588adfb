"""End to end: the "Vocabulary studio" panel in the real FiftyOne App (headless Debian Chromium,
Python Playwright), with the tiny synthetic CLIP (``tiny:seed0``) on the two shared VOC samples.

Opens a sample, opens the panel beside it (the modal split in two), types a vocabulary: the preview
field on that sample and the per-class shares the panel shows equal ``Segmenter.predict`` with the
same settings. Changes a synonym: both change as predicted. "Apply to dataset / view" opens the
pre-label form pre-filled; executed, its field on that sample equals the last preview, with the
settings hash the panel showed, and the preview field is gone. Screenshots go to
``test-artifacts/e2e/vocabulary/`` (gitignored).
"""
from __future__ import annotations

import re
import time

import numpy as np
import pytest

from support.app import ARTIFACTS, Shots, dataset_page, wait_until
from support.fo import needs_core

pytestmark = [pytest.mark.e2e, needs_core]

SHOTS = ARTIFACTS / "vocabulary"
# what the panel starts with on this dataset (its per-dataset plugin settings): small and fast
STUDIO_SETTINGS = {"pretrained": "tiny:seed0", "device": "cpu", "short_side": 96, "crop": 64,
                   "stride": 64, "templates": "a photo of a {}."}
VOCABULARY = "background\naeroplane, airplane\nperson, man\nsky"
WITH_SYNONYM = VOCABULARY.replace("person, man", "person, people")   # a synonym changed
PANEL = "[data-cy='panel-content-vocabulary_studio']"


def predicted_mask(filepath: str, vocabulary: str) -> np.ndarray:
    """What ``Segmenter.predict`` gives for the sample with the panel's settings (text classes:
    mask values are the line indices)."""
    import tfovss_core as tc
    from tfovss_core.spec.classes import resolve_classes
    from tfovss_fiftyone.loading import get_clip

    model = get_clip("ViT-B-16", STUDIO_SETTINGS["pretrained"], STUDIO_SETTINGS["device"])
    seg = tc.Segmenter(model, method="sclip", classes=resolve_classes(vocabulary, files=False).segmenter_classes(), prob_thd=0.0,
                       short_side=STUDIO_SETTINGS["short_side"], crop=STUDIO_SETTINGS["crop"],
                       stride=STUDIO_SETTINGS["stride"], templates=[STUDIO_SETTINGS["templates"]])
    return seg.predict(filepath).mask.astype(np.uint8)


def expected_shares(mask: np.ndarray, vocabulary: str) -> dict[str, float]:
    """``{first name: pixel %}`` as the panel rounds them."""
    counts = np.bincount(mask.ravel(), minlength=len(vocabulary.splitlines()))
    return {line.split(",")[0].strip(): round(100.0 * int(c) / mask.size, 2)
            for line, c in zip(vocabulary.splitlines(), counts)}


def shown_shares(page) -> dict[str, float]:
    """The panel's "Per class" table, ``{class: pixel %}`` (a class shown twice, e.g. a stale
    row of an earlier vocabulary, comes back as ``{"(rows)": rows}`` and never equals a want)."""
    table = page.locator(PANEL).locator("table").first
    if not table.count():
        return {}
    rows = [tr.locator("td").all_inner_texts() for tr in table.locator("tbody tr").all()]
    shares = {cells[0]: float(cells[1]) for cells in rows if len(cells) >= 2}
    return shares if len(shares) == len(rows) else {"(rows)": rows}


def shown_hash(page) -> str | None:
    found = re.search(r"Settings hash ([0-9a-f]+)", page.locator(PANEL).inner_text())
    return found.group(1) if found else None


def preview_mask(ds, sample_id: str):
    from tfovss_fiftyone.vocabulary_panel import PREVIEW_FIELD

    ds.reload()
    label = ds[sample_id][PREVIEW_FIELD] if PREVIEW_FIELD in ds.get_field_schema() else None
    return None if label is None else label.get_mask()


def type_vocabulary(page, ds, sample_id: str, vocabulary: str, expected: np.ndarray):
    """Types ``vocabulary`` in the panel; waits until it shows ``expected``'s shares and the
    preview field holds ``expected``, failing with what the panel shows otherwise."""
    page.locator(PANEL).locator("textarea").first.fill(vocabulary)
    want = expected_shares(expected, vocabulary)
    try:
        wait_until(lambda: shown_shares(page) == want, timeout=90, what=f"the shares {want}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the panel shows {shown_shares(page)}:\n"
                             f"{page.locator(PANEL).inner_text()[-1500:]}") from None
    def holds_expected():
        mask = preview_mask(ds, sample_id)
        return mask is not None and mask.shape == expected.shape and bool((mask == expected).all())

    wait_until(holds_expected, timeout=30, what="the preview field to hold the predicted mask")


def test_vocabulary_studio_in_the_app(fo, studio_browser, studio_server, studio_dataset):
    from tfovss_fiftyone.prelabel import prelabel_run_info
    from tfovss_fiftyone.vocabulary_panel import PREVIEW_FIELD

    ds = studio_dataset
    ds.app_config.plugins = {"vocabulary_studio": dict(STUDIO_SETTINGS)}
    ds.save()
    shot = Shots(SHOTS)
    with dataset_page(studio_browser, studio_server, ds, shot, "99-failure.png") as page:
        # -- open a sample, then the panel beside it ------------------------------------------
        page.locator("[data-cy='looker']").first.click()
        page.locator("[data-cy='modal']").wait_for()
        sample_id = wait_until(lambda: re.search(r"[?&]id=([0-9a-f]{24})", page.url), what="sample id").group(1)
        filepath = ds[sample_id].filepath
        page.locator("[data-cy='modal'] [title='Split horizontally']").first.click()
        page.locator(PANEL).get_by_text("Classes", exact=True).first.wait_for()
        wait_until(lambda: shown_hash(page), timeout=90, what="the first preview (default vocabulary)")
        wait_until(lambda: (ds.reload(), PREVIEW_FIELD in ds.get_field_schema())[1], what="the preview field")
        # the modal keeps the schema it opened with: reopen the sample to get the new field's overlay
        page.reload(wait_until="load")   # the URL names the sample: the modal opens again
        page.locator("[data-cy='modal']").wait_for()
        time.sleep(3)
        if not page.locator(PANEL).count():
            page.locator("[data-cy='modal'] [title='Split horizontally']").first.click()
        page.locator(PANEL).get_by_text("Classes", exact=True).first.wait_for()
        wait_until(lambda: shown_hash(page), timeout=90, what="the preview after reopening")
        assert sample_id in page.url
        shot(page, "01-panel-opened.png")

        # -- a vocabulary: the preview is Segmenter.predict's mask ----------------------------
        first = predicted_mask(filepath, VOCABULARY)
        second = predicted_mask(filepath, WITH_SYNONYM)
        assert (first != second).any(), "the synonym must change the prediction for this test"
        assert expected_shares(first, VOCABULARY) != expected_shares(second, WITH_SYNONYM)
        type_vocabulary(page, ds, sample_id, VOCABULARY, first)
        time.sleep(2)  # the App redraws the overlay
        shot(page, "02-vocabulary.png")

        # -- a synonym more: shares and preview change as predicted ---------------------------
        type_vocabulary(page, ds, sample_id, WITH_SYNONYM, second)
        run_hash = wait_until(lambda: shown_hash(page), what="the settings hash")
        time.sleep(2)
        shot(page, "03-synonym.png")

        # -- apply: the pre-label form, pre-filled; the preview field is removed ---------------
        page.locator(PANEL).get_by_role("button", name="Apply to dataset / view…").click()
        page.get_by_text("Pretrained weights", exact=True).last.wait_for()
        time.sleep(2)
        shot(page, "04-apply-form.png")
        assert page.locator("input[value='tiny:seed0']").count() >= 1
        vocab_boxes = [t.input_value() for t in page.locator("textarea").all()]
        assert WITH_SYNONYM in vocab_boxes, vocab_boxes
        ds.reload()
        assert PREVIEW_FIELD not in ds.get_field_schema()
        page.locator("input[value='ovss_sclip']").first.fill("studio")
        time.sleep(1)
        page.get_by_role("button", name="Execute").click()
        page.get_by_text("Samples labelled", exact=False).first.wait_for(timeout=240000)
        time.sleep(1)
        shot(page, "05-applied.png")

    # -- the run's field on that sample equals the preview, with the same settings hash ------
    ds.reload()
    assert len(ds.exists("studio")) == len(ds)
    np.testing.assert_array_equal(ds[sample_id].studio.get_mask(), second)
    info = prelabel_run_info(ds, "studio")
    assert info["settings_hash"] == run_hash, (info["settings_hash"], run_hash)
    assert ds.mask_targets["studio"] == {0: "background", 1: "aeroplane", 2: "person", 3: "sky"}
    assert PREVIEW_FIELD not in ds.get_field_schema()
    assert PREVIEW_FIELD not in (ds.mask_targets or {})
    shot.check()
