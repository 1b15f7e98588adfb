"""End to end: a tfovss pre-label as Label Studio's labelling view shows it (a real Label Studio
server, headless Debian Chromium, Python Playwright), with the tiny synthetic CLIP on shared COCO
images.

Sends the two pre-labelled samples with the most classes, logs into the web UI through its
``/user/login`` form, opens each task in the labelling view and checks what it shows against what
was sent: the prediction's tab names the tfovss settings hash (``model_version``) and the label's
mean confidence (``score``); the region list names exactly the classes present in the sample's
pre-label mask, in value order; hiding the regions changes the image's pixels (the brushes are
drawn). The screenshot of the first task goes to ``test-artifacts/e2e/labelstudio/`` (gitignored)
with a small copy, ``labelstudio-task.png``, which is docs/images/labelstudio-task.png.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

from support.app import (ARTIFACTS, Shots, chromium, new_page, sync_playwright_or_skip,
                         wait_until)
from support.fo import needs_core, unique_name
from support.labelstudio import needs_server, project_tasks

pytestmark = [pytest.mark.e2e, needs_core, needs_server]

SHOTS = ARTIFACTS / "labelstudio"
VIEWPORT = {"width": 1600, "height": 1000}
#: the README / docs copy of the task screenshot
SMALL_PNG = "labelstudio-task.png"
MAX_SMALL_BYTES = 300_000
REGION_TITLES = ".lsf-outliner-item__title"
TAB_NAMES = ".lsf-annotation-button__name"
PREDICTION_SCORE = "span[title^='Prediction score']"
STAGE = ".konvajs-content"


def classes_present(mask: np.ndarray, names: dict[int, str]) -> list[str]:
    return [names[int(v)] for v in np.unique(mask)]


def log_in(page, label_studio: dict) -> None:
    """Label Studio's own login form (the fixture's user); fails naming what the page shows."""
    page.goto(label_studio["url"] + "/user/login", wait_until="load")
    page.fill("input[name=email]", label_studio["username"])
    page.fill("input[name=password]", label_studio["password"])
    page.locator("form button[type=submit]").first.click()
    page.wait_for_load_state("load")
    assert "/user/login" not in page.url, "login refused: " + page.inner_text("body")[:300]


def open_task(page, url: str, project_id: int, task_id: int, model_version: str) -> None:
    """The labelling view of one task, on the tfovss prediction's tab."""
    page.goto(f"{url}/projects/{project_id}/data?task={task_id}", wait_until="load")
    tab = page.locator(TAB_NAMES, has_text=model_version).first
    tab.wait_for()
    tab.click()
    page.locator(STAGE).first.wait_for()


def region_names(page) -> list[str]:
    return [t.strip() for t in page.locator(REGION_TITLES).all_inner_texts()]


def regions_once_listed(page, count: int) -> list[str] | None:
    """The region list once it has ``count`` entries or more (the view fills it in)."""
    names = region_names(page)
    return names if len(names) >= count else None


def stage_pixels(page) -> np.ndarray:
    from PIL import Image

    png = page.locator(STAGE).first.screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def small_copy(src: Path, dst: Path, max_bytes: int = MAX_SMALL_BYTES) -> Path:
    """``src`` as a palette PNG under ``max_bytes``: the widest of a few widths that fits."""
    from PIL import Image

    image = Image.open(src).convert("RGB")
    for width in (1280, 1100, 960, 800):
        height = round(image.height * width / image.width)
        image.resize((width, height), Image.LANCZOS).quantize(256).save(dst, optimize=True)
        if dst.stat().st_size <= max_bytes:
            return dst
    raise AssertionError(f"{dst}: {dst.stat().st_size} bytes even at {width} px wide")


def test_labelling_view_shows_the_prelabel(label_studio, prelabelled):
    from tfovss_fiftyone.labelstudio import send_for_review

    sync_playwright = sync_playwright_or_skip()
    ds = prelabelled
    names = ds.mask_targets["pre"]
    masks = {s.id: s.pre.get_mask() for s in ds}
    # the two samples with the most classes: the richest picture
    chosen = sorted(masks, key=lambda sid: -len(np.unique(masks[sid])))[:2]
    rep = send_for_review(ds.select(chosen, ordered=True), "pre", url=label_studio["url"],
                          api_key=label_studio["token"], project=unique_name("screenshot"))
    assert rep.num_created == 2
    sent = {t["data"]["fo_sample_id"]: t for t in project_tasks(label_studio, rep.project_id)}
    shots = Shots(SHOTS)
    with chromium(sync_playwright) as browser, \
            new_page(browser, shots, "failure.png", VIEWPORT) as page:
        log_in(page, label_studio)
        for i, sid in enumerate(chosen):
            sample = ds[sid]
            (prediction,) = sent[sid]["predictions"]
            assert prediction["model_version"] == sample.pre.tfovss_hash
            open_task(page, label_studio["url"], rep.project_id, rep.tasks[sid],
                      sample.pre.tfovss_hash)
            want = classes_present(masks[sid], names)
            assert len(want) >= 2
            shown = wait_until(lambda: regions_once_listed(page, len(want)), timeout=30,
                               what=f"{len(want)} regions of {sid}")
            assert shown == want
            # the tab shows the model version (the settings hash) and the score
            assert sample.pre.tfovss_hash in page.locator(TAB_NAMES).all_inner_texts()
            score = page.locator(PREDICTION_SCORE).first
            shown_score = float(re.search(r"=\s*([0-9.]+)", score.get_attribute("title"))
                                .group(1))
            assert shown_score == pytest.approx(sample.pre.mean_confidence, abs=1e-6)
            assert f"{100 * sample.pre.mean_confidence:.2f}%" in score.inner_text()
            if i:
                continue
            # the brushes are drawn: hiding all regions changes most of the stage's pixels
            # (the regions cover every pixel of the image, which fills most of the stage)
            page.wait_for_timeout(1500)
            drawn = stage_pixels(page)
            page.get_by_role("button", name="Hide all regions").click()
            page.wait_for_timeout(1000)
            bare = stage_pixels(page)
            changed = (np.abs(drawn.astype(int) - bare.astype(int)).sum(-1) > 12).mean()
            assert changed > 0.5, f"only {changed:.0%} of the stage changed"
            page.get_by_role("button", name="Show all regions").click()
            page.wait_for_timeout(1000)
            page.mouse.move(0, 0)          # no tooltip in the screenshot
            page.wait_for_timeout(500)
            again = (np.abs(stage_pixels(page).astype(int) - bare.astype(int)).sum(-1) > 12)
            assert again.mean() > 0.5, f"only {again.mean():.0%} drawn again"
            full = shots(page, "task.png")
            small_copy(full, SHOTS / SMALL_PNG)
    shots.check()
    assert (SHOTS / SMALL_PNG).stat().st_size <= MAX_SMALL_BYTES
