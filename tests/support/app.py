"""Driving the real FiftyOne App in headless Debian Chromium with Python Playwright: a free
loopback port, the App server as a subprocess, a page showing a dataset, popup dismissal,
screenshots, polling.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``) and the ``playwright`` Python package
(never ``playwright install``): :func:`sync_playwright_or_skip` skips the test otherwise.
Screenshots and the server log go under ``test-artifacts/e2e/`` (gitignored).
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from support.paths import REPO_ROOT
from support.processes import stop_process

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts" / "e2e"
CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--disable-component-update",
               "--no-first-run", "--disable-sync", "--window-size=1920,1080"]
VIEWPORT = {"width": 1920, "height": 1080}


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sync_playwright_or_skip():
    """Playwright's ``sync_playwright``; skips the calling test without Chromium or Playwright."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright (Python package) is not installed")
    return sync_playwright


@contextlib.contextmanager
def app_server(log_path: Path, start_timeout: float = 90.0):
    """Runs the FiftyOne App server on a free loopback port (same database and plugins directory
    as this process: the FIFTYONE_* environment); yields its URL, stops it on exit."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(os.environ)
    env["FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS"] = "true"
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "fiftyone.server.main", "--address",
                                 "127.0.0.1", "--port", str(port)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=str(REPO_ROOT))
        try:
            deadline = time.time() + start_timeout
            while True:
                try:
                    urllib.request.urlopen(url, timeout=2)
                    break
                except Exception:
                    if proc.poll() is not None:
                        pytest.fail(f"App server exited with {proc.returncode}; see {log_path}")
                    if time.time() > deadline:
                        pytest.fail(f"App server did not start in {start_timeout:.0f} s; see {log_path}")
                    time.sleep(1)
            yield url
        finally:
            stop_process(proc)


def dismiss_popups(page) -> None:
    """Closes the App's welcome / news popups, if any."""
    for text in ("Dismiss", "Got it", "Close"):
        try:
            btn = page.get_by_role("button", name=text)
            if btn.count():
                btn.first.click(timeout=1000)
        except Exception:
            pass


class Shots(list):
    """``shots(page, name)`` saves a screenshot under ``directory`` and remembers its path."""

    def __init__(self, directory: Path = ARTIFACTS):
        super().__init__()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def __call__(self, page, name: str) -> Path:
        path = self.directory / name
        page.screenshot(path=str(path))
        self.append(path)
        return path

    def check(self) -> None:
        """Every screenshot was written and is not blank (a blank 1920x1080 PNG is ~10 kB)."""
        small = [str(p) for p in self if not p.is_file() or p.stat().st_size <= 10000]
        assert not small, f"missing or blank screenshots: {small}"


@contextlib.contextmanager
def chromium(sync_playwright):
    """A headless Debian Chromium launched through ``sync_playwright`` (closed on exit)."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROME_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def new_page(browser, shots: Shots | None = None, failure_png: str = "99-failure.png",
             viewport: dict = VIEWPORT):
    """A page of ``browser`` (60 s timeouts), closed on exit; ``failure_png`` is saved under
    ``shots`` if the body raises."""
    page = browser.new_page(viewport=viewport)
    page.set_default_timeout(60000)
    try:
        yield page
    except Exception:
        if shots is not None:
            shots(page, failure_png)
        raise
    finally:
        page.close()


@contextlib.contextmanager
def dataset_page(browser, url: str, dataset, shots: Shots, failure_png: str,
                 ready_text: str = "ground_truth", settle: float = 2.0):
    """A page of ``browser`` showing ``dataset`` in the App at ``url`` (``ready_text`` is in the
    sidebar, popups dismissed); ``failure_png`` is saved if the body raises."""
    with new_page(browser, shots, failure_png) as page:
        page.goto(f"{url}/datasets/{dataset.name}", wait_until="load")
        page.get_by_text(ready_text, exact=True).first.wait_for()
        time.sleep(settle)
        dismiss_popups(page)
        yield page


def show_in_app(fo, dataset, fields=("ground_truth",)):
    """Makes ``dataset`` visible to an App server process (persistent) with ``fields`` shown."""
    dataset.persistent = True
    dataset.app_config.active_fields = fo.ActiveFields(exclude=False, paths=list(fields))
    dataset.save()
    return dataset


def wait_until(predicate, timeout: float = 30.0, what: str = "condition", interval: float = 0.25):
    """Polls ``predicate`` until it returns a truthy value, which it returns; fails naming ``what``."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
