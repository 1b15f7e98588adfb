"""ProxyCLIP's second backbone, side by side with the CLIP trunk, in one run.

Per 336x336 window (ProxyCLIP's protocol window, already a multiple of 56, so no padding):
  * the CLIP ViT-B/16 trunk the method asks for (every block but the last; 442 tokens) and the
    DINO ViT-B/8 forward (1,765 tokens): wall time (calling thread's CPU time with 1 thread:
    steadier on a shared host), FLOPs counted by torch's FLOP counter, share of the measured
    matmul limit, peak memory of one forward above the resident size before it (Linux VmHWM reset
    before it, in a fresh process per backbone), and the weights' size;
Per image (the voc21 golden photo, ProxyCLIP's voc21 settings):
  * images/s of ProxyCLIP alone (against the paper's 6.1 FPS on a GPU) and of SCLIP on the same
    windows;
  * ProxyCLIP twice (two option sets) and SCLIP in one MultiSegmenter: CLIP trunk batches and DINO
    forwards counted (each backbone once per batch of windows), time against the three alone.

Random weights (``random:0``) for both backbones: the time and memory of the real weights, whose
values do not matter here.

    PYTHONPATH=. python bench/proxyclip_cost.py [--threads 1] [--repeats 3] [--json out.json]
    PYTHONPATH=. python bench/proxyclip_cost.py --memory-only
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAPER_FPS = 6.1   # ProxyCLIP (ECCV 2024) as quoted in tfovss issue 16 (ViT-B/16 + DINO ViT-B/8, a GPU)


def _vm() -> tuple[int, int]:
    """(peak, current) resident size of this process in bytes (Linux)."""
    d = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS")):
                key, value = line.split(":")
                d[key] = int(value.split()[0]) * 1024
    return d["VmHWM"], d["VmRSS"]


def _measure(fn, repeats: int) -> dict:
    """Median CPU/wall seconds of ``fn()`` after a warm-up."""
    import torch

    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    with torch.inference_mode():
        fn()  # warm-up
        gc.collect()
        times = []
        for _ in range(repeats):
            t = clock()
            fn()
            times.append(clock() - t)
    return {"seconds": statistics.median(times)}


def forward_peak_mib(backbone: str, threads: int = 1) -> float | None:
    """Peak memory of one forward on a 336 window above the resident size before it, in a fresh
    process (``backbone``: ``clip`` or ``dino``). In a process that ran a forward before, the
    allocator keeps those pages resident and the peak of the next forward hides in them."""
    code = (
        "import sys, torch; sys.path[:0] = [%r, %r]; torch.set_num_threads(%d)\n"
        "from proxyclip_cost import _vm\nfrom bench import peak_rss_reset\n"
        "x = torch.randn(1, 3, 336, 336)\n"
        "if %r == 'clip':\n"
        "    import tfovss_core as tc\n"
        "    from tfovss_core.clip.weights import resolve_weights\n"
        "    m = resolve_weights('ViT-B/16', 'random:0').load('cpu')\n"
        "    req = tc.Segmenter(m, 'proxyclip', 'voc21', vfm_weights='random:0').method.trunk_request()\n"
        "    fn = lambda: m.visual.run_trunk(x, req)\n"
        "else:\n"
        "    from tfovss_core.clip.vfm import load_vfm\n"
        "    v = load_vfm('dino_vitb8', 'random:0', 'cpu')\n"
        "    fn = lambda: v.patch_features(x)\n"
        "import gc; gc.collect(); ok = peak_rss_reset(); before = _vm()[1]\n"
        "with torch.inference_mode(): fn()\n"
        "print((_vm()[0] - before) / 2 ** 20 if ok else -1)\n") % (str(REPO), str(REPO / "bench"), threads,
                                                             backbone)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"memory measurement of {backbone} failed: {out.stderr[-2000:]}")
    value = float(out.stdout.strip().splitlines()[-1])
    return None if value < 0 else value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the numbers here")
    ap.add_argument("--memory-only", action="store_true",
                    help="only the peak memory of one forward of each backbone (fresh processes)")
    args = ap.parse_args(argv)
    if args.memory_only:
        for name in ("clip", "dino"):
            print(f"{name}: peak {forward_peak_mib(name, args.threads):.0f} MiB above the resident size")
        return 0

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import tfovss_core as tc
    from tfovss_core.clip.vfm import load_vfm
    from tfovss_core.clip.weights import resolve_weights
    from tfovss_core.engine.multi import MultiSegmenter
    from tfovss_core.ops.flops import count_flops, matmul_rate, trunk_flops

    started = time.time()
    shared = Path(os.environ.get("TFOVSS_SHARED", REPO.parent / "shared"))
    image = dict(np.load(shared / "golden" / "proxyclip" / "voc21_chelsea.npz"))["image"]
    model = resolve_weights("ViT-B/16", "random:0").load("cpu")
    vfm = load_vfm("dino_vitb8", "random:0", "cpu")
    templates = ["a photo of a {}."]
    opts = {"vfm_weights": "random:0", "templates": templates}
    proxy = tc.Segmenter(model, "proxyclip", "voc21", **opts)
    assert proxy.method.vfm is vfm
    rate = matmul_rate()
    limit = rate.flop_per_s_best

    crops = torch.randn(1, 3, 336, 336, generator=torch.Generator().manual_seed(0))
    request = proxy.method.trunk_request()
    clip_flops = trunk_flops(model.visual, crops, request).total
    vfm_flops = count_flops(vfm.patch_features, crops).total
    clip_cost = _measure(lambda: model.visual.run_trunk(crops, request), args.repeats)
    vfm_cost = _measure(lambda: vfm.patch_features(crops), args.repeats)

    def param_mib(module):
        return sum(p.numel() * p.element_size() for p in module.parameters()) / 2 ** 20

    backbones = []
    for name, key, tokens, flops, cost, mib in (
            ("CLIP ViT-B/16 trunk (11 blocks)", "clip", 1 + 21 * 21, clip_flops, clip_cost,
             param_mib(model.visual.visual)),
            ("DINO ViT-B/8 (12 blocks)", "dino", 1 + 42 * 42, vfm_flops, vfm_cost, param_mib(vfm.module))):
        backbones.append({"backbone": name, "tokens": tokens, "gflop": flops / 1e9,
                          "seconds": cost["seconds"], "share_of_limit": flops / cost["seconds"] / limit,
                          "peak_mib": forward_peak_mib(key, args.threads), "weights_mib": mib})

    # -- per image -----------------------------------------------------------------------------------
    def per_image(seg):
        with torch.inference_mode():
            seg.predict(image)  # warm-up
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                seg.predict(image)
                times.append(time.perf_counter() - t)
        return statistics.median(times)

    # SCLIP on ProxyCLIP's windows (same resize, window and stride), so the trunk can be shared
    common = {k: getattr(proxy.settings, k) for k in ("short_side", "crop", "stride")}
    sclip = tc.Segmenter(model, "sclip", "voc21", templates=templates, **common)
    variant = tc.Segmenter(model, "proxyclip", "voc21", beta=1.0, gamma=2.0, **opts)
    alone = {"proxyclip": per_image(proxy), "proxyclip (beta 1, gamma 2)": per_image(variant),
             "sclip": per_image(sclip)}
    multi = MultiSegmenter(model, [("proxyclip", proxy), ("proxyclip-b1", variant), ("sclip", sclip)])
    with torch.inference_mode():
        multi.predict(image)  # warm-up
        runs0, forwards0, hits0 = multi.trunk_runs, vfm.forwards, vfm.hits
        t = time.perf_counter()
        multi.predict(image)
        together = time.perf_counter() - t
    x = proxy.prepare(image)[1]
    n_windows = len(tc.sliding_windows(*x.shape[-2:], proxy.settings.crop, proxy.settings.stride))
    shared_run = {"groups": multi.last_groups, "windows": n_windows,
                  "clip_trunk_batches": multi.trunk_runs - runs0,
                  "dino_forwards": vfm.forwards - forwards0, "dino_served_shared": vfm.hits - hits0,
                  "seconds_together": together, "seconds_alone_sum": sum(alone.values())}

    load = os.getloadavg()
    out = {"machine": {"cpu": platform.machine(), "logical_cpus": os.cpu_count(), "threads": args.threads,
                       "load_average": [round(v, 1) for v in load], "torch": torch.__version__,
                       "matmul_gflop_s": limit / 1e9},
           "backbones": backbones, "input": list(x.shape[-2:]), "alone_seconds": alone,
           "shared": shared_run, "run_seconds": round(time.time() - started, 1)}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    print(markdown(out))
    return 0


def markdown(out: dict) -> str:
    m = out["machine"]
    lines = [f"_Generated by `bench/proxyclip_cost.py`; {out['run_seconds']} s for the whole run._", "",
             f"- **machine**: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']}, "
             f"{m['threads']} thread; load average {m['load_average']} during the run "
             f"(shared host); matmul limit {m['matmul_gflop_s']:.1f} GFLOP/s (best of 5, 2048^3 fp32).",
             "- **weights**: random (`random:0`) for both backbones: the real ones' cost.", "",
             "Per 336x336 window:", "",
             "| backbone | tokens | GFLOP | s / window | share of the matmul limit | peak MiB above RSS "
             "| weights MiB |", "|---|---|---|---|---|---|---|"]
    for b in out["backbones"]:
        peak = "-" if b["peak_mib"] is None else f"{b['peak_mib']:.0f}"
        lines.append(f"| {b['backbone']} | {b['tokens']} | {b['gflop']:.1f} | {b['seconds']:.2f} | "
                     f"{100 * b['share_of_limit']:.0f} % | {peak} | {b['weights_mib']:.0f} |")
    c, d = out["backbones"]
    lines += ["", f"DINO / CLIP trunk: {d['gflop'] / c['gflop']:.2f}x the FLOPs, "
              f"{d['seconds'] / c['seconds']:.2f}x the time.", ""]
    h, w = out["input"]
    s = out["shared"]
    lines += [f"Per image (voc21 golden photo, input {w}x{h}, {s['windows']} windows of 336 / stride 112):", "",
              "| method | s / image | images/s | paper (GPU) |", "|---|---|---|---|"]
    for name, sec in out["alone_seconds"].items():
        paper = f"{PAPER_FPS} FPS" if name == "proxyclip" else ""
        lines.append(f"| {name} | {sec:.2f} | {1 / sec:.3f} | {paper} |")
    lines += ["", f"The three in one MultiSegmenter (groups {s['groups']}): {s['clip_trunk_batches']} CLIP trunk "
              f"batches and {s['dino_forwards']} DINO forwards for {s['windows']} windows "
              f"({s['dino_served_shared']} DINO batches served to the second ProxyCLIP from the first); "
              f"{s['seconds_together']:.2f} s together vs {s['seconds_alone_sum']:.2f} s for the three alone."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
