"""Output path benchmark: the protocol path (every class's probability maps) against the pre-label path.

Two measurements, side by side in one run, with the tiny random CLIP (the model costs ~0):
  * cost outside the model per image: a 640x480 COCO photo, SCLIP's protocol, 1 CPU thread, at
    21 / 150 / 171 classes (voc21, ade20k, coco_stuff), protocol `finish` vs `finish_mask`;
  * peak RSS (ru_maxrss of a fresh subprocess, minus the RSS after loading the model) for 21, 171,
    459 and 847 classes at 640x480 and 2048x1536, for the pre-label path and for the protocol path
    where it does not refuse.

    python bench/output_path.py [--data-dir DIR] [--skip-rss] [--sizes 640x480,2048x1536]
    python bench/output_path.py --blocks     # the pre-label path's pixel-block size, side by side
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESETS = {21: "voc21", 150: "ade20k", 171: "coco_stuff", 459: "context459", 847: "ade847"}
ONE_TEMPLATE = ["a photo of a {}."]


def _photo(data_dir: Path, size):
    import numpy as np
    from PIL import Image
    path = sorted((data_dir / "coco2017").rglob("*.jpg"))[0]
    return np.asarray(Image.open(path).convert("RGB").resize(size))


def cost_outside_model(data_dir: Path, repeats: int = 3) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from tfovss_core.clip.synthetic import tiny_clip
    from tfovss_core.engine.segmenter import Segmenter
    torch.set_num_threads(1)
    model = tiny_clip(seed=0)
    image = _photo(data_dir, (640, 480))
    rows = []
    for n in (21, 150, 171):
        seg = Segmenter(model, "sclip", PRESETS[n], templates=ONE_TEMPLATE)
        _, x = seg.prepare(image)
        low = seg.input_logits(x)
        size = image.shape[:2]
        protocol, lean = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            seg.finish(F.interpolate(low[None], size=size, mode="bilinear", align_corners=False)[0], x)
            protocol.append(time.perf_counter() - t)
            t = time.perf_counter()
            out = seg.finish_mask(low, x, size)
            lean.append(time.perf_counter() - t)
        rows.append({"classes": n, "protocol_ms": 1e3 * min(protocol), "prelabel_ms": 1e3 * min(lean),
                     "passes": out.stats["passes"], "fallback_pixels": out.stats["fallback_pixels"]})
    return rows


def block_sizes(repeats: int = 3) -> list[dict]:
    """The whole-vocabulary pre-label path at several pixel-block sizes, on the same full-resolution
    logits (640x480, 56 and 171 queries, 1 thread): time per image, and the outputs checked equal."""
    import torch
    from tfovss_core.ops.postprocess import block_pixels_for, mask_and_confidence_from_logits
    torch.set_num_threads(1)
    rows = []
    for queries, classes in ((56, 21), (171, 171)):
        logits = torch.randn(queries, 480, 640, generator=torch.Generator().manual_seed(0)) * 0.1
        query_class = torch.arange(queries) * classes // queries
        default = block_pixels_for(queries, 480 * 640)
        reference = None
        for block in sorted({512, 1024, 1088, 2048, 4160, default}):
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                mask, conf, _ = mask_and_confidence_from_logits(logits, query_class, classes, logit_scale=40.0,
                                                                block_pixels=block)
                times.append(time.perf_counter() - t)
            reference = reference or (mask, conf)
            rows.append({"queries": queries, "block_pixels": block, "default": block == default,
                         "ms": 1e3 * min(times),
                         "equal": bool(torch.equal(mask, reference[0]) and torch.equal(conf, reference[1]))})
    return rows


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def _rss_child(classes: int, width: int, height: int, path: str, data_dir: str) -> None:
    """Runs in a fresh process: prints the peak RSS above the loaded model (MiB), or the refusal."""
    import torch
    from tfovss_core.clip.synthetic import tiny_clip
    from tfovss_core.engine.segmenter import Segmenter
    from tfovss_core.errors import InputError
    torch.set_num_threads(1)
    seg = Segmenter(tiny_clip(seed=0), "sclip", PRESETS[classes], templates=ONE_TEMPLATE)
    seg.text_features
    image = _photo(Path(data_dir), (width, height))
    base = _rss_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:   # resets the high-water mark to the current RSS
        f.write("5")
    t = time.perf_counter()
    try:
        seg.predict(image) if path == "protocol" else seg.predict_mask(image)
        result = {"peak_mib": _rss_mib("VmHWM") - base,
                  "seconds": time.perf_counter() - t}
    except InputError as exc:
        result = {"refused": str(exc)}
    print(json.dumps(result))


def peak_rss(data_dir: Path, sizes, classes=(21, 171, 459, 847)) -> list[dict]:
    rows = []
    for width, height in sizes:
        for n in classes:
            for path in ("prelabel", "protocol"):
                cmd = [sys.executable, __file__, "--child", f"{n},{width},{height},{path}", "--data-dir", str(data_dir)]
                proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
                last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
                row = {"classes": n, "size": f"{width}x{height}", "path": path, **json.loads(last)}
                if proc.returncode:
                    row["error"] = f"exit {proc.returncode}"
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--sizes", default="640x480,2048x1536")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--classes", default="21,171,459,847")
    ap.add_argument("--blocks", action="store_true", help="only the pixel-block sizes of the pre-label path")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.blocks:
        for row in block_sizes():
            print(json.dumps(row), flush=True)
        return
    if args.child:
        n, w, h, path = args.child.split(",")
        _rss_child(int(n), int(w), int(h), path, str(args.data_dir))
        return
    if not args.skip_cost:
        for row in cost_outside_model(args.data_dir):
            print(json.dumps(row), flush=True)
    if not args.skip_rss:
        peak_rss(args.data_dir, [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")],
                 tuple(int(n) for n in args.classes.split(",")))


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
