"""`bash scripts/demo.sh --app --synthetic`: the bundled photos as a FiftyOne dataset,
pre-labelled, and the App served on the printed local port (started, polled, stopped by PID)."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from support.fo import REPO_ROOT, needs_core

pytestmark = needs_core


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_app_loads_prelabels_and_serves(tmp_path):
    port = _free_port()
    env = {**os.environ, "TFOVSS_PYTHON": sys.executable}
    log = open(tmp_path / "demo.log", "wb")
    proc = subprocess.Popen(["bash", "scripts/demo.sh", "--app", "--synthetic", "--port", str(port)],
                            cwd=str(REPO_ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 420
        status = None
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    status = r.status
                    page = r.read().decode("utf-8", "replace")
                break
            except OSError:
                time.sleep(2)
        text = (tmp_path / "demo.log").read_text(errors="replace")
        assert proc.poll() is None, text[-3000:]
        assert status == 200 and "<html" in page.lower(), text[-3000:]
        n_photos = len(list((REPO_ROOT / "samples").glob("*.jpg")))
        m = re.search(r"dataset 'tfovss-demo': (\d+) photos, (\d+) pre-labelled into 'ovss_sclip' "
                      r"\(SYNTHETIC WEIGHTS[^)]*\), (\d+) failed", text)
        assert m and [int(x) for x in m.groups()] == [n_photos, n_photos, 0], text[-3000:]
        assert f"http://127.0.0.1:{port}/datasets/tfovss-demo" in text
        masks = sorted((REPO_ROOT / "out/demo/app/ovss_sclip").glob("*.png"))
        assert len(masks) >= n_photos
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the script's own process group, by its PID
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
