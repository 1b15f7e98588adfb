"""A real Label Studio server for the tests (``.venv-labelstudio``, made by
scripts/setup_labelstudio.sh) and a small pre-labelled COCO dataset to send to it.

Fixtures (registered for tests/fiftyone and its e2e/ by tests/fiftyone/conftest.py):

* ``label_studio`` (session): ``label-studio start`` on a free loopback port with a temp data
  folder, a user (``username`` / ``password``, for the web UI's login form) and a legacy API token;
  local-files serving from the shared data folder. Stopped by PID at teardown.
* ``ls_env``: ``label_studio`` with ``LABEL_STUDIO_API_KEY`` / ``LABEL_STUDIO_URL`` set.
* ``prelabelled`` (module): 3 COCO images pre-labelled by the tiny synthetic model into ``pre``.
"""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from support.fo import REPO_ROOT, coco_semantic, make_dataset
from support.processes import stop_process

LS_VENV = REPO_ROOT / ".venv-labelstudio"
LS_BIN = LS_VENV / "bin" / "label-studio"
TOKEN = "tfovss-test-token-4f2a9c"
USERNAME = "user@example.org"
PASSWORD = "tfovss-pass-1"
#: fast pre-label settings of the tiny model
FAST = {"short_side": 64, "crop": 64, "stride": 64, "templates": ["a photo of a {}."]}
VOCAB = "background\nperson\nanimal, dog, cat, horse\nvehicle, car, bus, truck\nfurniture"
NOT_INSTALLED = f"Label Studio is not installed in {LS_VENV} (run scripts/setup_labelstudio.sh)"

needs_server = pytest.mark.skipif(not LS_BIN.exists(), reason=NOT_INSTALLED)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory, data_dir):
    """A Label Studio server on a free loopback port, with a user and a legacy token; local-files
    serving from the shared data folder. Stopped by PID at teardown."""
    if not LS_BIN.exists():
        pytest.skip(NOT_INSTALLED)
    import requests

    root = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    env = dict(os.environ, LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
               LATEST_VERSION_CHECK="false", COLLECT_ANALYTICS="false",
               LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
               LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(data_dir),
               LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true")
    env.pop("LABEL_STUDIO_API_KEY", None)
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [str(LS_BIN), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port",
         str(port), "--data-dir", str(root / "data"), "--username", USERNAME,
         "--password", PASSWORD, "--user-token", TOKEN],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            if proc.poll() is not None:
                raise RuntimeError("Label Studio exited: " + (root / "server.log").read_text()
                                   [-3000:])
            try:
                if requests.get(url + "/health", timeout=2).json().get("status") == "UP":
                    break
            except Exception:
                pass
            if time.time() > deadline:
                raise RuntimeError("Label Studio did not answer /health within 240 s: " +
                                   (root / "server.log").read_text()[-3000:])
            time.sleep(1)
        yield {"url": url, "token": TOKEN, "log": root / "server.log",
               "username": USERNAME, "password": PASSWORD}
    finally:
        stop_process(proc, grace=30)
        log.close()


@pytest.fixture()
def ls_env(label_studio, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio["token"])
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio["url"])
    return label_studio


@pytest.fixture(scope="module")
def prelabelled(fo, data_dir, tmp_path_factory):
    """3 COCO images pre-labelled by the tiny synthetic model into ``pre``."""
    if not LS_BIN.exists():
        pytest.skip(NOT_INSTALLED)
    from tfovss_fiftyone.prelabel import prelabel

    items, names = coco_semantic(data_dir, limit=3)
    ds = make_dataset(fo, items, names, "ls")
    report = prelabel(ds, "pre", classes=VOCAB, method="sclip", pretrained="tiny:seed0",
                      settings=FAST, device="cpu",
                      output_dir=str(tmp_path_factory.mktemp("ls-masks")))
    assert report.num_labelled == 3
    yield ds
    ds.delete()


def api(ls, method, path, **kw):
    """One REST call with the fixture's token; asserts it succeeded, returns its JSON."""
    import requests

    r = requests.request(method, ls["url"] + path, timeout=60,
                         headers={"Authorization": f"Token {ls['token']}"}, **kw)
    assert r.status_code < 400, (r.status_code, r.text[:500])
    return r.json() if r.content else None


def project_tasks(ls, pid):
    from tfovss_fiftyone.labelstudio import LabelStudioClient

    return LabelStudioClient(ls["url"], ls["token"]).tasks(pid, fields="all")
