"""End to end: the real FiftyOne App in headless Debian Chromium, driven with Python Playwright.

Opens a dataset, runs the pre-label operator from the operator browser on its few samples (tiny
synthetic CLIP: ``tiny:seed0``), sees the new field in the sidebar, opens the "OVSS evaluations"
panel and sees the run. Screenshots go to ``test-artifacts/e2e/`` (gitignored).

Needs ``/usr/bin/chromium`` (``apt-get install chromium``) and the ``playwright`` Python package
(never ``playwright install``); skipped otherwise.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin"))
from fo_helpers import (DATA, REPO_ROOT, VOC_CLASSES, coco_semantic, make_dataset,  # noqa: E402
                      needs_core, unique_name, voc_items)

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts" / "e2e"
CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--disable-component-update",
               "--no-first-run", "--disable-sync", "--window-size=1920,1080"]

pytestmark = [pytest.mark.e2e, needs_core]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def playwright_sync():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright (Python package) is not installed")
    return sync_playwright


@pytest.fixture(scope="module")
def app_dataset(fo, data_dir):
    items = voc_items(data_dir)
    coco_items, _ = coco_semantic(data_dir, limit=2)
    names = dict(enumerate(VOC_CLASSES))
    ds = make_dataset(fo, items, names, "e2e")
    # two COCO images with the VOC vocabulary's ground truth left empty: still pre-labellable
    ds.add_samples([fo.Sample(filepath=str(p)) for p, _ in coco_items])
    ds.persistent = True
    ds.app_config.active_fields = fo.ActiveFields(exclude=False, paths=["ground_truth"])
    ds.save()
    yield ds
    ds.delete()


@pytest.fixture(scope="module")
def app_server(app_dataset):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = dict(os.environ)
    env["FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS"] = "true"
    log = open(ARTIFACTS / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "fiftyone.server.main", "--address",
                             "127.0.0.1", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=str(REPO_ROOT))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except Exception:
            if proc.poll() is not None:
                pytest.fail(f"App server exited; see {ARTIFACTS / 'server.log'}")
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("App server did not start in 90 s")
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    log.close()


def _dismiss_popups(page):
    for text in ("Dismiss", "Got it", "Close"):
        try:
            btn = page.get_by_role("button", name=text)
            if btn.count():
                btn.first.click(timeout=1000)
        except Exception:
            pass


def _input_after(page, label_text):
    """The first input/textarea after a form label (inputs have no name or label attribute)."""
    return page.get_by_text(label_text, exact=True).first.locator(
        "xpath=following::*[self::input or self::textarea][1]")


def test_app_prelabel_field_and_panel(fo, playwright_sync, app_server, app_dataset):
    ds = app_dataset
    shots = []

    def shot(page, name):
        p = ARTIFACTS / name
        page.screenshot(path=str(p))
        shots.append(p)

    with playwright_sync() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROME_ARGS)
        page = browser.new_page(viewport={"width": 1920, "height": 1080})
        page.set_default_timeout(60000)
        try:
            page.goto(f"{app_server}/datasets/{ds.name}", wait_until="load")
            page.get_by_text("ground_truth", exact=True).first.wait_for()
            time.sleep(3)
            _dismiss_popups(page)
            shot(page, "01-dataset.png")

            # -- pre-label from the operator browser ------------------------------------------
            page.keyboard.press("Backquote")
            page.get_by_placeholder("Search operations by name...").fill("Pre-label")
            page.get_by_text("Pre-label with open-vocabulary segmentation",
                             exact=True).first.click()
            page.get_by_text("Pretrained weights", exact=True).first.wait_for()
            time.sleep(2)
            shot(page, "02-prelabel-form-top.png")
            pre = page.locator("input[value='openai']").first
            pre.fill("tiny:seed0")
            _input_after(page, "Short side").fill("96")
            _input_after(page, "Window size").fill("64")
            _input_after(page, "Window stride").fill("64")
            field = page.locator("input[value='ovss_sclip']").first
            field.fill("ovss_app")
            time.sleep(2)
            shot(page, "02-prelabel-form-bottom.png")
            page.get_by_role("button", name="Execute").click()
            page.get_by_text("Samples labelled", exact=False).first.wait_for(timeout=240000)
            time.sleep(1)
            shot(page, "03-prelabel-done.png")
            ds.reload()
            assert len(ds.exists("ovss_app")) == len(ds)
            page.keyboard.press("Escape")
            _close = page.get_by_role("button", name="Close")
            if _close.count():
                _close.first.click()

            # -- the new field is in the sidebar; show it --------------------------------------
            name_el = page.get_by_text("ovss_app", exact=True).first
            name_el.wait_for()
            box = name_el.bounding_box()
            page.mouse.click(box["x"] - 16, box["y"] + box["height"] / 2)
            time.sleep(4)
            shot(page, "04-new-field.png")

            # -- evaluate (Python side), then the panel shows the run ---------------------------
            from plugin.evaluation import run_evaluation
            run_evaluation(ds, "ovss_app", "ground_truth", "eval_app")
            # a second run to compare with: the ground truth shifted by 12 px (a stand-in for
            # a better method; the tiny synthetic CLIP's masks score ~0)
            import numpy as np
            rough = {}
            for s in ds.exists("ground_truth"):
                m = np.roll(s.ground_truth.get_mask(), 12, axis=1)
                rough[s.id] = fo.Segmentation(mask=np.where(m == 255, 0, m).astype(np.uint8))
            ds.set_values("gt_shifted", rough, key_field="id")
            mt = dict(ds.mask_targets)
            mt["gt_shifted"] = mt["ground_truth"]
            ds.mask_targets = mt
            ds.save()
            run_evaluation(ds, "gt_shifted", "ground_truth", "eval_shifted")
            page.reload(wait_until="load")
            page.get_by_text("ground_truth", exact=True).first.wait_for()
            time.sleep(2)
            _dismiss_popups(page)
            page.locator("[data-cy='new-panel-btn'], [title='New panel']").first.click()
            page.get_by_text("OVSS evaluations", exact=True).first.click()
            page.get_by_text("eval_app", exact=True).first.wait_for()
            page.get_by_text("eval_shifted", exact=True).first.wait_for()
            time.sleep(3)
            shot(page, "05-panel.png")
            # compare the two runs: per-class IoU bars side by side, deltas
            page.get_by_text("(none)", exact=True).first.click()
            page.get_by_role("option", name="eval_app").first.click()
            page.get_by_text("IoU % (compared)", exact=True).first.wait_for()
            time.sleep(3)
            shot(page, "06-panel-compare.png")
        except Exception:
            shot(page, "99-failure.png")
            raise
        finally:
            browser.close()
    assert all(s.is_file() and s.stat().st_size > 10000 for s in shots)
