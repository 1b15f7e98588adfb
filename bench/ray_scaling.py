"""Images/s of the job runner: local (this process) vs the Ray executor with 1 and 2 actors (a
script, not a test). Writes a Markdown section.

    PYTHONPATH=. .venv/bin/python bench/ray_scaling.py --images DIR --out bench/RAY.md

Each configuration runs the same images through ``JobRunner`` (SCLIP, a sink that keeps nothing),
one thread per model: the local runner with torch at 1 thread, each Ray actor with 1 CPU. The Ray
times include creating the actors and building their models (what a user waits for); a local Ray
on loopback is started once before and not counted. ``--device cuda`` with ``--gpus-per-actor 1``
measures GPU actors.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path

CONFIGS = {
    # the tiny random CLIP (plumbing-dominated) and ViT-B/16 with random weights (compute-bound)
    "tiny": dict(arch="ViT-B-16", pretrained="tiny:seed0",
                 settings=dict(short_side=224, crop=112, stride=56, templates="single")),
    "ViT-B/16": dict(arch="ViT-B-16", pretrained="random:seed0",
                     settings=dict(short_side=336, crop=224, stride=112, templates="single")),
}


def build(arch: str, pretrained: str, settings: dict, device: str | None, threads: int) -> dict:
    """The predictors of one model (run where the work runs: here, or in each Ray actor)."""
    import torch

    import tfovss_core as tc
    from tfovss_core.clip.weights import resolve_weights

    if threads:
        torch.set_num_threads(threads)
    model = resolve_weights(arch, pretrained).load(device)
    return {"sclip": tc.Segmenter(model, method="sclip", classes="voc21", **settings)}


class NullSink:
    """Keeps nothing but the time each image's result arrived."""

    def __init__(self):
        self.n = 0
        self.arrivals: list[float] = []

    def done(self, run):
        return set()

    def write(self, outcome):
        self.n += 1
        self.arrivals.append(time.perf_counter())

    def failure(self, item, error, labels):
        raise RuntimeError(f"{item.source}: {error}")

    def close(self):
        pass


def run_once(spec, items, executor, warm: int = 0) -> tuple[float, int, float | None]:
    """Seconds for ``items``, images done, and the steady rate in images/s: the images after the
    first ``warm`` results (each actor's first batch, which carries its start and model build) over
    the time from the arrival of the ``warm``-th result to the last."""
    from tfovss_core.engine.runner import JobRunner, ModelPass, RunRef

    sink = NullSink()
    model = ModelPass(spec)
    t = time.perf_counter()
    JobRunner(model, [RunRef("sclip", "bench")], sink, executor=executor).run(items)
    total = time.perf_counter() - t
    steady = None
    if 0 < warm < sink.n:
        steady = (sink.n - warm) / (sink.arrivals[-1] - sink.arrivals[warm - 1])
    return total, sink.n, steady


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", required=True, help="a folder of JPEGs")
    ap.add_argument("--count", type=int, nargs=2, default=(24, 8), metavar=("TINY", "VIT"),
                    help="images per run for the tiny model and for ViT-B/16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gpus-per-actor", type=float, default=0)
    ap.add_argument("--batch-size", type=int, default=2, help="images per Ray task")
    ap.add_argument("--only", choices=list(CONFIGS), default=None)
    ap.add_argument("--out", default=None, help="append the Markdown table here")
    args = ap.parse_args(argv)

    import ray
    import torch

    from tfovss_core.engine.ray_executor import RayExecutor, start_local_ray
    from tfovss_core.engine.runner import Item, ModelSpec, SerialExecutor

    paths = sorted(Path(args.images).glob("*.jpg"))
    threads = 0 if args.device != "cpu" else 1
    start_local_ray(num_cpus=2, num_gpus=int(args.gpus_per_actor * 2) or None)
    rows = []
    try:
        for name, cfg in CONFIGS.items():
            if args.only and name != args.only:
                continue
            n = args.count[0] if name == "tiny" else args.count[1]
            items = [Item(p.stem, str(p)) for p in paths[:n]]
            make = partial(build, cfg["arch"], cfg["pretrained"], cfg["settings"], args.device,
                           threads)
            if threads:
                torch.set_num_threads(threads)
            local = ModelSpec(predictors=make())
            run_once(local, items[:1], SerialExecutor())          # warm-up (text, caches)
            res = {"local": run_once(local, items, SerialExecutor(), warm=args.batch_size)}
            for actors in (1, 2):
                ex = RayExecutor(num_actors=actors, batch_size=args.batch_size,
                                 num_gpus_per_actor=args.gpus_per_actor)
                res[f"ray {actors}"] = run_once(ModelSpec(build=make), items, ex, warm=actors * args.batch_size)
            for k, (sec, done, _) in res.items():
                assert done == len(items), (k, done)
            ips = {k: len(items) / s for k, (s, _, _) in res.items()}
            steady = {k: r[2] for k, r in res.items()}
            rows.append((name, len(items), ips, res, steady))
            print(name, {k: round(v, 3) for k, v in ips.items()}, "steady",
                  {k: v and round(v, 3) for k, v in steady.items()}, flush=True)
    finally:
        ray.shutdown()

    lines = ["", f"### Ray executor scaling ({time.strftime('%Y-%m-%d')}, `bench/ray_scaling.py`)", "",
             f"- **machine**: {platform.processor() or platform.machine()}, {os.cpu_count()} logical "
             f"CPUs, load average {os.getloadavg()[0]:.1f} at the end (shared with other "
             f"work: one run; numbers are only meaningful on an otherwise idle machine); device "
             f"{args.device}",
             f"- **protocol**: SCLIP, voc21, one thread per model (local: torch 1 thread; Ray: 1 CPU "
             f"per actor), Ray batch {args.batch_size} images; Ray times include creating the actors "
             "and building their models; the local Ray (loopback) is started before. **Steady**: after "
             "each actor's first batch (the local run: after its first batch too), the rest of the "
             "images over the time from that batch's arrival to the last result",
             "", "| model | images | local img/s | Ray 1 actor img/s | Ray 2 actors img/s | "
             "2 vs 1 actor | Ray 1 actor overhead vs local | steady: local / 1 / 2 actors img/s | "
             "steady 2 vs 1 actor | steady overhead of 1 actor vs local |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, n, ips, res, steady in rows:
        lines.append(f"| {name} | {n} | {ips['local']:.2f} | {ips['ray 1']:.2f} | "
                     f"{ips['ray 2']:.2f} | {ips['ray 2'] / ips['ray 1']:.2f}x | "
                     f"{100 * (res['ray 1'][0] / res['local'][0] - 1):+.0f} % | "
                     f"{steady['local']:.3f} / {steady['ray 1']:.3f} / {steady['ray 2']:.3f} | "
                     f"{steady['ray 2'] / steady['ray 1']:.2f}x | "
                     f"{100 * (steady['local'] / steady['ray 1'] - 1):+.0f} % |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
