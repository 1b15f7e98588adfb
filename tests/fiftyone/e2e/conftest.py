"""Fixtures of the e2e tests built on :mod:`support.app` (named ``studio_*`` so that they do not
clash with the module-local fixtures of test_app_e2e.py)."""
from __future__ import annotations

import pytest

from support.app import ARTIFACTS, app_server, chromium, show_in_app, sync_playwright_or_skip
from support.fo import VOC_CLASSES, make_dataset, voc_items


@pytest.fixture(scope="module")
def studio_browser():
    """A headless Chromium for the module (skips without Chromium or Playwright)."""
    with chromium(sync_playwright_or_skip()) as browser:
        yield browser


@pytest.fixture(scope="module")
def studio_dataset(fo, data_dir):
    """The shared VOC samples (2) with their ground truth, persistent so the App server sees it."""
    ds = show_in_app(fo, make_dataset(fo, voc_items(data_dir), dict(enumerate(VOC_CLASSES)), "studio"))
    yield ds
    ds.delete()


@pytest.fixture(scope="module")
def studio_server(studio_dataset):
    """The URL of a real App server on a free loopback port, over the test database."""
    with app_server(ARTIFACTS / "vocabulary" / "server.log") as url:
        yield url
