"""Run identity and per-item records, shared by every job: one settings hash (the resume key)
and one append-only JSON-lines record format that survives an interrupted write."""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def jsonable(x):
    """``x`` with numpy scalars, tuples and paths turned into plain JSON types."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, Path):
        return str(x)
    return x


def settings_key(settings: dict) -> str:
    """The 12-hex-digit hash of everything that determines a run's outputs (its resume key).

    The one run identity of tfovss: the job runner (:mod:`tfovss_core.engine.runner`) resumes by
    it, whatever the sink. Its input is a JSON-able dict of every setting that changes a result:
    a benchmark run's :func:`tfovss_core.eval.benchmark.run_settings` (weights, preset settings,
    method defaults, overrides, labels, version), a pre-label field's
    ``tfovss_fiftyone.prelabel.prelabel_settings`` (the Segmenter's description without the
    device, and the mask values). The serialisation (sorted keys, compact separators) never
    changes, so stored keys stay valid."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def read_records(path: Path) -> dict[str, dict]:
    """Per-image records of a run; a line cut short by an interruption is dropped."""
    out: dict[str, dict] = {}
    if not path.is_file():
        return out
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    for line in data.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "id" in rec and "cm" in rec:
            out[rec["id"]] = rec
    return out


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
