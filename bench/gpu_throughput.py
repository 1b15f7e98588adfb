"""Pre-label throughput on a GPU (issue 11's GPU measurement), one prepared run.

For each backbone, method, precision and number of images per forward pass: images/s of the
pre-label path through the job runner (decoding on two threads, ``output="mask"``, windows of
``images_per_batch`` photos per pass, ``batch_size=0``: windows per pass sized to the free GPU
memory), the mean GPU utilisation while it runs (``nvidia-smi``, sampled every 0.2 s), the peak GPU
memory, and where one photo's time goes (the windows through the model vs everything after them,
each CUDA-synchronised). Random weights of each backbone (the cost of real ones); the shared COCO
photos of 640x480; each method with its official settings for ``--preset``. The papers' own
throughputs are printed beside (``PAPER_FPS``; their protocols differ in details, so the ratio is
indicative): the goal is ≥ 5x on one H100-class GPU.

    python bench/gpu_throughput.py [--device cuda] [--archs ViT-B/16,ViT-L/14]
        [--methods sclip,scclip,lht,resclip,proxyclip] [--precisions fp32,fp16,bf16]
        [--images-per-batch 1,8] [--images 64] [--preset ade20k] [--json OUT]

``--device cpu --archs tiny --images 4`` runs it on a CPU as a check of the script itself
(utilisation and GPU memory are then absent).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

#: images/s the papers report for their own method (issue 11's anchors)
PAPER_FPS = {"scclip": 6.5, "lht": 8.2, "resclip": 3.0, "proxyclip": 6.1}
METHOD_SETTINGS = {"proxyclip": {"vfm_weights": "random:0"}}   # DINO's cost without its download


class Utilisation:
    """Mean GPU utilisation (%) from ``nvidia-smi`` samples while the block runs (None without it)."""

    def __init__(self, device_index: int, every: float = 0.2):
        self.index, self.every = device_index, every
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = None

    def _sample(self) -> None:
        cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", str(self.index)]
        while not self._stop.wait(self.every):
            try:
                self.samples.append(float(subprocess.run(cmd, capture_output=True, text=True, timeout=5)
                                          .stdout.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


class CountingSink:
    """Counts results; a failure is an error of the bench, not a result."""

    def __init__(self):
        self.n = 0

    def done(self, run):
        return set()

    def write(self, outcome):
        self.n += 1

    def failure(self, item, error, labels):
        raise RuntimeError(f"{item.source}: {error}")

    def close(self):
        pass


def synchronise(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def split(seg, photo, device, repeats: int = 3) -> tuple[float, float]:
    """Best-of-``repeats`` ms of one photo's windows through the model (trunk, method, text
    product), and of the rest of its pre-label prediction (resize, window averaging, upsampling,
    softmax, mask). Timed as windows vs the whole ``predict_mask``, so that methods whose image
    side reads the text (no separate encode) are split the same way."""
    _, x = seg.prepare(photo)
    list(seg.windows(x))
    seg.predict_mask(photo)
    windows, whole = [], []
    for _ in range(repeats):
        synchronise(device)
        t = time.perf_counter()
        list(seg.windows(x))
        synchronise(device)
        windows.append(time.perf_counter() - t)
        t = time.perf_counter()
        seg.predict_mask(photo)
        synchronise(device)
        whole.append(time.perf_counter() - t)
    return 1e3 * min(windows), 1e3 * (min(whole) - min(windows))


def run_case(seg, label: str, photos, images_per_batch: int, device) -> dict:
    import torch

    from tfovss_core.engine.runner import Item, JobRunner, ModelPass, RunRef, SerialExecutor

    def run(items):
        return JobRunner(ModelPass({label: seg}, output="mask", images_per_batch=images_per_batch),
                         [RunRef(label, "bench")], CountingSink(),
                         executor=SerialExecutor(decode_workers=2)).run(items)

    run([Item(f"warm{i}", str(p)) for i, p in enumerate(photos[:images_per_batch])])   # kernels, workspaces
    items = [Item(str(i), str(p)) for i, p in enumerate(photos)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with Utilisation(device.index or 0) as util:
        synchronise(device)
        t = time.perf_counter()
        stats = run(items)
        synchronise(device)
        seconds = time.perf_counter() - t
    if stats.computed[label] != len(items):
        raise SystemExit(f"{label}: {stats.computed[label]} of {len(items)} computed")
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"images_per_s": len(items) / seconds, "gpu_util_pct": util.mean if device.type == "cuda" else None,
            "peak_gpu_mib": peak}


def load(arch: str, device):
    from tfovss_core.clip.synthetic import tiny_clip
    from tfovss_core.clip.weights import resolve_weights

    if arch == "tiny":
        return tiny_clip(seed=0, device=device)
    return resolve_weights(arch, "random:0").load(str(device))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    ap.add_argument("--archs", default="ViT-B/16,ViT-L/14")
    ap.add_argument("--methods", default="sclip,scclip,lht,resclip,proxyclip")
    ap.add_argument("--precisions", default="fp32,fp16,bf16")
    ap.add_argument("--images-per-batch", default="1,8")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--preset", default="ade20k")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import torch

    from prelabel_throughput import coco_photos
    from tfovss_core.engine.segmenter import Segmenter
    from tfovss_core.io.images import load_image

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    available = coco_photos(args.data_dir, args.images)
    photos = (available * -(-args.images // len(available)))[:args.images]   # cycled to N
    photo = load_image(str(photos[0]))
    rows = []
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}: {args.images} COCO photos 640x480, preset {args.preset}, pre-label path (mask + confidence)")
    for arch in args.archs.split(","):
        model = load(arch, device)
        for method in args.methods.split(","):
            for precision in args.precisions.split(","):
                seg = Segmenter(model, method, args.preset, precision=precision, batch_size=0,
                                **METHOD_SETTINGS.get(method, {}))
                seg.text_features  # noqa: B018  (encoded once, before timing)
                model_ms, after_ms = split(seg, photo, device)
                for k in (int(v) for v in args.images_per_batch.split(",")):
                    row = {"arch": arch, "method": method, "precision": precision, "images_per_batch": k,
                           "model_ms": model_ms, "after_model_ms": after_ms,
                           **run_case(seg, method, photos, k, device)}
                    paper = PAPER_FPS.get(method)
                    row["paper_fps"], row["x_paper"] = paper, (row["images_per_s"] / paper if paper else None)
                    rows.append(row)
                    util = f"{row['gpu_util_pct']:.0f} %" if row["gpu_util_pct"] is not None else "-"
                    peak = f"{row['peak_gpu_mib']:.0f} MiB" if row["peak_gpu_mib"] is not None else "-"
                    vs = f", {row['x_paper']:.1f}x the paper's {paper} FPS" if paper else ""
                    print(f"  {arch} {method} {precision} x{k}: {row['images_per_s']:.2f} images/s (GPU {util}, "
                          f"peak {peak}); one photo: model {model_ms:.1f} ms, after it {after_ms:.1f} ms{vs}",
                          flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps({"device": name, "preset": args.preset, "images": args.images,
                                         "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
