"""Speed and memory benchmark of tfovss (a script, not a test). Writes a Markdown report.

    PYTHONPATH=. .venv/bin/python bench/bench.py --out bench/RESULTS.md \\
        [--golden-dir DIR] [--data-dir DIR] [--official-sclip DIR] [--official-scclip DIR]

What it measures (one process, ViT-B/16, text cached, defaults: 1 thread, fp32, CPU):

1. the machine's sustained matmul rate (2048^3 fp32) in this run;
2. per method (clip, maskclip, sclip, clearclip, naclip, scclip) on a 512x683 photo, i.e. a
   336x448 network input and 6 windows of 224 (SCLIP's protocol: short side 336, stride 112):
   seconds per image, images per second, peak RSS, the time split (text / trunk / last block /
   upsampling+merge / PAMR / rest), the FLOPs counted from the executed matmuls, the trunk's
   achieved FLOP/s as a percentage of the matmul rate, and the whole image against the limit
   FLOPs / matmul rate;
3. side by side with the official SCLIP and SC-CLIP code when their checkouts are given
   (``bench/official.py`` runs them unchanged): seconds per image and the difference of outputs;
4. all six methods on one image with the shared trunk vs one method alone;
5. first-time text encoding: truncated (ours) vs open_clip's full 77-token ``encode_text``;
6. fast mode (not the papers' protocol): speed-up and pixel agreement with the protocol path on
   the sample images;
7. memory when streaming 1x vs 10x images (peak RSS);
8. on a CUDA device (``--device cuda``, or found automatically): fp32 vs fp16 autocast, batched
   windows, images/s and peak GPU memory.

Timing: on a CPU at 1 thread the calling thread's CPU time (``time.thread_time``) is used, which
holds up when other processes share the machine; variants are run round-robin and min / median
are reported. Weights: the synthetic golden ViT-B/16 when ``--golden-dir`` (or
``TFOVSS_GOLDEN_DIR``) points at a folder with ``make_weights.py``, else random init; compute cost
does not depend on the weight values.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import tfovss_core as tc  # noqa: E402
from tfovss_core.engine import segmenter as _inference  # noqa: E402
from tfovss_core.ops.flops import count_flops, matmul_rate  # noqa: E402

SIX = ["clip", "maskclip", "sclip", "clearclip", "naclip", "scclip"]
PROTOCOL = dict(short_side=336, crop=224, stride=112, pamr_steps=0)


# ----------------------------------------------------------------------------------------- helpers
def release_memory() -> None:
    """Frees what Python and the C heap can give back, so peak-RSS resets start from live memory."""
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_reset() -> bool:
    release_memory()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Clock:
    """Thread CPU time on a 1-thread CPU run, CUDA-synchronised wall time on a GPU, else wall."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.cpu_time = device.type == "cpu" and torch.get_num_threads() == 1
        self.kind = "cuda-synchronised wall time" if self.cuda else (
            "thread CPU time" if self.cpu_time else "wall time")

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.thread_time() if self.cpu_time else time.perf_counter()


class Split:
    """Accumulates time spent in named functions by wrapping them (instance or module attrs)."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.acc: dict[str, float] = {}
        self._undo = []

    def wrap(self, owner, attr: str, key: str):
        fn = getattr(owner, attr)
        clock, acc = self.clock, self.acc

        def timed(*a, **k):
            t = clock()
            try:
                return fn(*a, **k)
            finally:
                acc[key] = acc.get(key, 0.0) + clock() - t

        setattr(owner, attr, timed)
        had = attr in getattr(owner, "__dict__", {})
        self._undo.append((owner, attr, fn, had))

    def restore(self):
        for owner, attr, fn, had in reversed(self._undo):
            if had or isinstance(owner, type(sys)):
                setattr(owner, attr, fn)
            else:
                delattr(owner, attr)  # the instance attribute shadowed the class's method
        self._undo.clear()


@contextmanager
def split_of(seg, clock: Clock):
    """Times trunk / last block / dense merge / PAMR / finish of one Segmenter's predict."""
    sp = Split(clock)
    sp.wrap(seg.model.visual, "run_trunk", "trunk")
    sp.wrap(seg.method, "features", "last_block")
    sp.wrap(seg, "dense_logits", "dense")
    sp.wrap(_inference, "pamr", "pamr")
    sp.wrap(seg, "prepare", "prepare")
    try:
        yield sp.acc
    finally:
        sp.restore()


def clock_device(clock: Clock) -> str:
    return "cuda" if clock.cuda else "cpu"


def stats(values):
    return min(values), statistics.median(values)


def fmt(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def load_model(args, device):
    golden = args.golden_dir or os.environ.get("TFOVSS_GOLDEN_DIR")
    if golden and (Path(golden) / "make_weights.py").is_file():
        sys.path.insert(0, str(golden))
        from make_weights import make_state_dict
        sd = make_state_dict("ViT-B/16", seed=0, anomalies=True)
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = tc.load_clip("ViT-B-16", sd, device=device)
        del sd
        return model, "synthetic golden ViT-B/16 (seed 0)", Path(golden)
    return tc.load_clip("ViT-B-16-quickgelu", None, device=device), "random-init ViT-B/16 (QuickGELU)", None


def bench_image(golden_dir: Path | None, data_dir: Path | None) -> tuple[np.ndarray, str]:
    """A 512x683 photo (the golden 'chelsea' cat, or a sample image, resized)."""
    from PIL import Image
    src, label = None, "random noise"
    if golden_dir is not None and (golden_dir / "sclip" / "voc20_chelsea.npz").is_file():
        src, label = np.load(golden_dir / "sclip" / "voc20_chelsea.npz")["image"], "golden 'chelsea' photo"
    elif data_dir is not None:
        files = sorted((data_dir / "voc2012").rglob("*.jpg"))
        if files:
            src, label = np.asarray(Image.open(files[0]).convert("RGB")), files[0].name
    if src is None:
        src = (np.random.default_rng(0).random((240, 320, 3)) * 255).astype(np.uint8)
    img = np.asarray(Image.fromarray(src).resize((683, 512), Image.BICUBIC))
    return img, f"{label}, resized to 512x683"


def sample_images(data_dir: Path | None, limit: int = 10) -> list[Path]:
    if data_dir is None or not data_dir.is_dir():
        return []
    files = sorted((data_dir / "voc2012").rglob("JPEGImages/*.jpg"))
    files += sorted((data_dir / "ade20k").rglob("images/**/*.jpg"))
    files += sorted((data_dir / "coco2017" / "train2017").glob("*.jpg"))
    return files[:limit]


# ----------------------------------------------------------------------------------------- sections
def section_methods(model, image, clock, rates, repeats, methods, precision="fp32", batch_size=16):
    """``rates``: list of matmul FLOP/s measurements, extended here (one per round, interleaved).

    Percentages use the best rate of the whole run: conservative on a host whose speed drifts (a
    round's own two-matmul reading can land in a slow moment and overstate the percentage)."""
    rows, results = [], {}
    segs = {m: tc.Segmenter(model, method=m, classes="voc20", **PROTOCOL, precision=precision,
                            batch_size=batch_size) for m in methods}
    if "naclip" in methods and precision == "fp32":  # NACLIP's repo default: PAMR 10 steps on the output
        segs["naclip+pamr"] = tc.Segmenter(model, method="naclip", classes="voc20",
                                           **{**PROTOCOL, "pamr_steps": 10}, batch_size=batch_size)
    for seg in segs.values():
        seg.text_features  # noqa: B018  (text cached: encoded or loaded once, outside the timing)
    splits = {m: [] for m in segs}
    peaks = {}
    for m, seg in segs.items():  # warm-up, FLOP count, peak memory
        if m == "naclip+pamr":
            continue
        if clock.cuda:
            torch.cuda.reset_peak_memory_stats()
        peak_rss_reset()
        results[m] = seg.predict(image)
        peaks[m] = (torch.cuda.max_memory_allocated() / 2 ** 20) if clock.cuda else peak_rss_mib()
    flops = {}
    for m, seg in segs.items():
        if m == "naclip+pamr":
            continue
        with torch.inference_mode():
            total = count_flops(seg.predict, image)
            _, x = seg.prepare(image)
            crops = torch.cat([x[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in
                               tc.sliding_windows(*x.shape[-2:], PROTOCOL["crop"], PROTOCOL["stride"])])
            trunk = count_flops(model.visual.run_trunk, crops, seg.method.trunk_request())
        flops[m] = (total.total, trunk.total)
    for _ in range(repeats):  # round-robin over methods, the matmul reference interleaved
        rates.append(matmul_rate(2048, repeats=2, device=clock_device(clock)).flop_per_s_best)
        for m, seg in segs.items():
            if m == "naclip+pamr" and splits[m]:
                continue  # PAMR at full resolution is slow: one run is enough
            with split_of(seg, clock) as acc:
                t = clock()
                seg.predict(image)
                total = clock() - t
            splits[m].append(dict(acc, total=total))
    rate = max(rates)
    if "naclip+pamr" in segs:
        flops["naclip+pamr"], peaks["naclip+pamr"] = flops["naclip"], peaks["naclip"]
    for m in segs:
        best, med = stats([s["total"] for s in splits[m]])
        sp = min(splits[m], key=lambda s: s["total"])  # the split of the fastest run
        trunk_t = sp.get("trunk", 0.0)
        last = sp.get("last_block", 0.0)
        dense = sp.get("dense", 0.0)
        pamr = sp.get("pamr", 0.0)
        upsample = max(dense - trunk_t - last, 0.0)
        rest = max(sp["total"] - dense - pamr, 0.0)
        total_flop, trunk_flop = flops[m]
        rows.append(dict(
            method=m, s_min=best, s_med=med, ips=1.0 / med, peak=peaks[m],
            text=0.0, trunk=trunk_t, last_block=last, upsample=upsample, pamr=pamr, rest=rest,
            gflop=total_flop / 1e9, trunk_gflop=trunk_flop / 1e9,
            trunk_rate=trunk_flop / trunk_t / 1e9 if trunk_t else None,
            trunk_pct=100 * trunk_flop / trunk_t / rate if trunk_t else None,
            limit_s=total_flop / rate, limit_pct=100 * (total_flop / rate) / best))
    return rows, results


def section_official(args, model, golden_dir, clock, repeats):
    """Official SCLIP / SC-CLIP code vs ours on the golden chelsea image (336x448, 6 windows)."""
    if golden_dir is None or not (args.official_sclip or args.official_scclip):
        return []
    sys.path.insert(0, str(ROOT / "bench"))
    from make_weights import make_state_dict
    from official import OfficialSegmentor
    sd = make_state_dict("ViT-B/16", seed=0, anomalies=True)
    rows = []
    for method, repo in (("sclip", args.official_sclip), ("scclip", args.official_scclip)):
        if not repo:
            continue
        meta = json.loads((golden_dir / method / "voc20_chelsea.json").read_text())
        g = np.load(golden_dir / method / "voc20_chelsea.npz")
        classes = [[w for w, c in zip(meta["query_words"], meta["query_class_index"]) if c == k]
                   for k in range(meta["num_classes"])]
        ours = tc.Segmenter(model, method=method, classes=classes, **PROTOCOL, logit_scale=40.0)
        off = OfficialSegmentor(repo, sd, torch.from_numpy(g["text_features"]), meta["query_class_index"],
                                logit_scale=40.0)
        ours.text_features  # noqa: B018
        rgb, x = ours.prepare(g["image"])
        off.predict(x, rgb.shape[:2])
        ours.predict(g["image"])
        t_off, t_ours = [], []
        for _ in range(repeats):
            t = clock()
            logits, pred = off.predict(x, rgb.shape[:2])
            t_off.append(clock() - t)
            t = clock()
            res = ours.predict(g["image"])
            t_ours.append(clock() - t)
        o = logits.float().numpy()
        srt = np.sort(o, axis=0)
        sure = (srt[-1] - srt[-2]) > 1e-3
        rows.append(dict(method=method, official=stats(t_off), ours=stats(t_ours),
                         speedup_med=statistics.median(t_off) / statistics.median(t_ours),
                         # each official run and ours right after it: robust to a drifting host
                         speedup_paired=statistics.median(a / b for a, b in zip(t_off, t_ours)),
                         speedup_min=min(t_off) / min(t_ours),
                         probs_diff=float(np.abs(res.probs - o).max()),
                         mask_agree=float((res.mask[sure] == pred.numpy()[0][sure]).mean()),
                         golden_diff=float(np.abs(res.probs - g["probs"].astype(np.float32)).max())))
        del off
    del sd
    release_memory()
    return rows


def section_shared(model, image, clock, repeats, single_results):
    multi = tc.MultiSegmenter(model, SIX, classes="voc20", **PROTOCOL)
    alone = tc.Segmenter(model, method="sclip", classes="voc20", **PROTOCOL)
    multi.predict(image)
    alone.predict(image)
    t_multi, t_one = [], []
    for _ in range(repeats):
        t = clock()
        res = multi.predict(image)
        t_multi.append(clock() - t)
        t = clock()
        alone.predict(image)
        t_one.append(clock() - t)
    identical = all(np.array_equal(res[m].probs, single_results[m].probs) and
                    np.array_equal(res[m].mask, single_results[m].mask) for m in SIX if m in single_results)
    return dict(multi=stats(t_multi), one=stats(t_one), ratio=statistics.median(t_multi) / statistics.median(t_one),
                ratio_min=min(t_multi) / min(t_one), identical=identical, groups=multi.last_groups)


def section_text(model, clock, n_queries: int):
    from tfovss_core.clip.text import TextEncoder, resolve_templates
    from tfovss_core.spec.presets import get_preset
    names = [c[0] if isinstance(c, (list, tuple)) else c for c in get_preset("voc20").classes("sclip")][:n_queries]
    templates = resolve_templates("openai_imagenet")
    enc = TextEncoder(model.model, model.tokenizer, model.text_digest, use_cache=False)
    t = clock()
    ours = enc.encode_queries(names, templates)
    t_ours = clock() - t
    prompts = [tpl.format(q) for q in names for tpl in templates]
    tokens = model.tokenizer(prompts).to(model.device)
    t = clock()
    with torch.inference_mode():
        feats = []
        for i in range(0, len(prompts), 256):
            feats.append(torch.nn.functional.normalize(model.model.encode_text(tokens[i:i + 256]).float(), dim=-1))
        full = torch.cat(feats).view(len(names), len(templates), -1).mean(1)
        full = torch.nn.functional.normalize(full, dim=-1).cpu()
    t_full = clock() - t
    cache_dir = Path(os.environ.get("TFOVSS_BENCH_TMP", "/tmp")) / "tfovss-bench-text"
    TextEncoder(model.model, model.tokenizer, model.text_digest, use_cache=True,
                cache_dir=cache_dir).encode_queries(names, templates)
    # A second encoder starts with an empty in-memory cache, so it times the load from disk.
    cached = TextEncoder(model.model, model.tokenizer, model.text_digest, use_cache=True, cache_dir=cache_dir)
    t = clock()
    cached.encode_queries(names, templates)
    t_cached = clock() - t
    return dict(prompts=len(prompts), queries=len(names), ours=t_ours, full=t_full, speedup=t_full / t_ours,
                cached=t_cached, diff=float((ours - full).abs().max()))


def section_fast(model, files, clock, methods=("sclip", "clearclip")):
    from tfovss_core.engine.multi import fast_settings
    rows = []
    for m in methods:
        ref = tc.Segmenter(model, method=m, classes="voc20", **PROTOCOL)
        fast = {mode: tc.Segmenter(model, method=m, classes="voc20", **{**PROTOCOL, "pamr_steps": 0,
                                                                        **fast_settings(mode)})
                for mode in ("whole", "coarse")}
        ref.predict(str(files[0]))
        acc = {k: dict(t=[], agree=[], agree_sure=[]) for k in fast}
        t_ref = []
        for f in files:
            t = clock()
            r = ref.predict(str(f))
            t_ref.append(clock() - t)
            srt = np.sort(r.probs, axis=0)
            sure = (srt[-1] - srt[-2]) > 1e-3
            for mode, seg in fast.items():
                t = clock()
                q = seg.predict(str(f))
                acc[mode]["t"].append(clock() - t)
                acc[mode]["agree"].append(float((q.probs.argmax(0) == r.probs.argmax(0)).mean()))
                acc[mode]["agree_sure"].append(float((q.probs.argmax(0) == r.probs.argmax(0))[sure].mean())
                                               if sure.any() else float("nan"))
        for mode, a in acc.items():
            rows.append(dict(method=m, mode=mode, s_ref=sum(t_ref) / len(t_ref), s_fast=sum(a["t"]) / len(a["t"]),
                             speedup=sum(t_ref) / sum(a["t"]), agree=float(np.mean(a["agree"])),
                             agree_sure=float(np.nanmean(a["agree_sure"])), n=len(files)))
    return rows


def section_memory(model, files, clock, n: int = 4, factor: int = 10):
    """Streams ``factor * n`` sample images (the first ``n``, cycled) in one pass per path.

    The peak RSS is read after the first ``n`` images (1x) and after all of them (10x), and at
    every tenth of the pass (the plateau). SCLIP with the fast whole-image settings keeps this
    section short: what is measured is whether memory grows with the number of images, which the
    per-image work does not change.
    """
    from tfovss_core.engine.multi import fast_settings
    seg = tc.Segmenter(model, method="sclip", classes="voc20", **fast_settings("whole"))
    for f in files[:n]:
        seg.predict(str(f))
    out = {}
    for mode in ("iter_predict", "stream"):
        batch = [str(files[i % n]) for i in range(factor * n)]
        peak_rss_reset()
        t = clock()
        it = seg.iter_predict(batch) if mode == "iter_predict" else tc.stream(seg, batch, workers=1)
        peaks = [peak_rss_mib() for _ in it]
        s = (clock() - t) / len(peaks)
        out[(mode, 1)] = dict(images=n, peak=peaks[n - 1], s=s)
        out[(mode, factor)] = dict(images=len(peaks), peak=peaks[-1], s=s,
                                   plateau=[round(p) for p in peaks[len(peaks) // 10 - 1::len(peaks) // 10]])
    return out


# ----------------------------------------------------------------------------------------- report
def targets(rows, official, shared, text, memory):
    out = []
    by = {r["method"]: r for r in rows}
    for m in ("sclip", "scclip"):
        if m in by and by[m]["trunk_pct"] is not None:
            out.append((f"{m}: trunk >= 90 % of the matmul rate", f"{by[m]['trunk_pct']:.1f} %",
                        by[m]["trunk_pct"] >= 90))
    for r in official:
        out.append((f"{r['method']}: >= 1.3x faster than the official code at identical outputs",
                    f"{r['speedup_paired']:.2f}x (median of paired runs), {r['speedup_med']:.2f}x "
                    f"(median), {r['speedup_min']:.2f}x (min); probs diff {r['probs_diff']:.1e}",
                    r["speedup_paired"] >= 1.3 and r["probs_diff"] < 5e-4))
    if shared:
        out.append(("six methods on one image < 2x one method alone", f"{shared['ratio']:.2f}x",
                    shared["ratio"] < 2 and shared["identical"]))
    if text:
        out.append(("first-time text encoding >= 5x faster than full length", f"{text['speedup']:.1f}x",
                    text["speedup"] >= 5))
    for mode in ("iter_predict", "stream"):
        if (mode, 1) in memory and (mode, 10) in memory:
            a, b = memory[(mode, 1)]["peak"], memory[(mode, 10)]["peak"]
            out.append((f"peak RSS does not grow from 1x to 10x images ({mode})",
                        f"{a:.0f} -> {b:.0f} MiB ({100 * (b - a) / a:+.1f} %)", b - a <= 0.05 * a))
    return out


def markdown(meta, rates, rows, official, shared, text, fast, memory, cuda_rows) -> str:
    L = []
    L.append(f"_Generated by `bench/bench.py` on {meta['date']}; {meta['elapsed']:.0f} s for the whole run._\n")
    L.append("### Conditions\n")
    for k in ("device", "cpu", "threads", "torch", "open_clip", "weights", "image", "timing", "precision"):
        L.append(f"- **{k}**: {meta[k]}")
    L.append(f"- **matmul rate** (2048³ fp32, measured {len(rates)} times in this run, interleaved with the "
             f"methods): best {max(rates) / 1e9:.1f} GFLOP/s, median {statistics.median(rates) / 1e9:.1f} "
             "GFLOP/s; the percentages below use the best (conservative when the host's speed "
             "drifts).")
    L.append("- **protocol**: short side 336 (input 336x448), windows 224 / stride 112 = 6 windows, "
             "batch of 16 windows, each method's own logit scale, PAMR off (row `naclip+pamr`: NACLIP's "
             "repository default, 10 PAMR steps at the output resolution, one run), text cached.\n")
    L.append("### Per method (ViT-B/16, one 512x683 image)\n")
    L.append("| method | s/image min | s/image median | images/s | peak RSS MiB | trunk s | last block s | "
             "upsample+merge s | PAMR s | rest s | GFLOP/image | trunk GFLOP/s | trunk % of matmul | "
             "limit s | % of limit |")
    L.append("|---|" + "---|" * 14)
    for r in rows:
        L.append(f"| {r['method']} | {r['s_min']:.2f} | {r['s_med']:.2f} | {r['ips']:.2f} | {r['peak']:.0f} | "
                 f"{r['trunk']:.2f} | {r['last_block']:.3f} | {r['upsample']:.3f} | {r['pamr']:.3f} | "
                 f"{r['rest']:.3f} | {r['gflop']:.1f} | {fmt(r['trunk_rate'], 1)} | {fmt(r['trunk_pct'], 1)} | "
                 f"{r['limit_s']:.2f} | {r['limit_pct']:.0f} |")
    L.append("\nThe split is that of the fastest run (text: 0, cached). `% of limit` = (counted FLOPs / "
             "matmul rate) / s/image min. FLOPs are counted from the executed matmuls, convolutions and "
             "SDPA calls (`tfovss_core.ops.flops`).\n")
    if official:
        L.append("### Side by side with the official code (golden 'chelsea', 336x448 input, 6 windows)\n")
        L.append("| method | official s/image min / median | ours s/image min / median | speed-up (median "
                 "of paired runs) | speed-up (median) | speed-up (min) | max abs probs diff ours vs "
                 "official | mask agreement (gap > 1e-3) |")
        L.append("|---|---|---|---|---|---|---|---|")
        for r in official:
            L.append(f"| {r['method']} | {r['official'][0]:.2f} / {r['official'][1]:.2f} | {r['ours'][0]:.2f} / "
                     f"{r['ours'][1]:.2f} | {r['speedup_paired']:.2f}x | {r['speedup_med']:.2f}x | "
                     f"{r['speedup_min']:.2f}x | "
                     f"{r['probs_diff']:.1e} | {r['mask_agree']:.4f} |")
        L.append("\nThe official segmentors run unchanged through `bench/official.py` (mmseg stand-ins, text "
                 "embeddings set to the golden's, float32, same thread count), interleaved with ours: "
                 "each official run is followed by ours, and the paired speed-up is the median of "
                 "those pairs' ratios.\n")
    if shared:
        L.append("### All six methods on one image, shared trunk\n")
        L.append(f"- six methods (`MultiSegmenter`): {shared['multi'][0]:.2f} s min / {shared['multi'][1]:.2f} s "
                 f"median; SCLIP alone: {shared['one'][0]:.2f} / {shared['one'][1]:.2f} s; ratio "
                 f"**{shared['ratio']:.2f}x** (median), {shared['ratio_min']:.2f}x (min); trunk groups "
                 f"{shared['groups']}; outputs identical to each method alone: **{shared['identical']}**\n")
    if text:
        L.append("### First-time text encoding\n")
        L.append(f"- {text['queries']} queries x 80 templates = {text['prompts']} prompts: truncated "
                 f"(ours) {text['ours']:.2f} s vs open_clip `encode_text` at 77 tokens {text['full']:.2f} s: "
                 f"**{text['speedup']:.1f}x** faster, max abs diff {text['diff']:.1e}; loading them from the "
                 f"disk cache: {text['cached'] * 1e3:.1f} ms\n")
    if fast:
        L.append("### Fast mode (NOT the papers' protocol)\n")
        L.append("| method | mode | images | protocol s/image | fast s/image | speed-up | pixel agreement | "
                 "agreement where protocol top-2 gap > 1e-3 |")
        L.append("|---|---|---|---|---|---|---|---|")
        for r in fast:
            L.append(f"| {r['method']} | {r['mode']} | {r['n']} | {r['s_ref']:.2f} | {r['s_fast']:.2f} | "
                     f"{r['speedup']:.2f}x | {r['agree']:.3f} | {r['agree_sure']:.3f} |")
        L.append("\n`whole` = one pass over the whole resized image (positional embeddings interpolated), "
                 "`coarse` = windows 224 with stride 224. Agreement = argmax over the VOC20 classes vs the "
                 f"protocol path, on the shared sample photos; weights: {meta['weights']}.\n")
    if memory:
        L.append("### Streaming memory\n")
        L.append("| path | images | peak RSS MiB | peak RSS after each tenth of the pass, MiB | s/image |")
        L.append("|---|---|---|---|---|")
        for (mode, factor), v in memory.items():
            plateau = ", ".join(map(str, v.get("plateau", []))) or "-"
            L.append(f"| {mode} | {v['images']} ({factor}x) | {v['peak']:.0f} | {plateau} | {v['s']:.2f} |")
        L.append("\nSCLIP (fast whole-image settings, to keep this short) over the first sample images "
                 "cycled ten times, one pass per path: `Segmenter.iter_predict` (no threads) and `tc.stream` "
                 "(one decode thread, images prepared ahead); 1x is the peak after the first pass over the "
                 "images. The peak RSS is reset before each path and includes the model and the text "
                 "(process total).\n")
    L.append("### Targets (issue 'Speed'), as measured in this run\n")
    L.append("| target | measured | met |")
    L.append("|---|---|---|")
    for name, value, ok in targets(rows, official, shared, text, memory):
        L.append(f"| {name} | {value} | {'yes' if ok else '**no**'} |")
    L.append("")
    if cuda_rows:
        L.append("### CUDA\n")
        L.append("| method | precision | s/image median | images/s | peak GPU MiB |")
        L.append("|---|---|---|---|---|")
        for r in cuda_rows:
            L.append(f"| {r['method']} | {r['precision']} | {r['s_med']:.4f} | {r['ips']:.1f} | {r['peak']:.0f} |")
    else:
        L.append("### CUDA\n")
        L.append("No CUDA device in this run: **no GPU numbers were measured.**")
    return "\n".join(L) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="write the Markdown report here")
    ap.add_argument("--golden-dir", default=None, help="folder with make_weights.py and the goldens")
    ap.add_argument("--data-dir", default=os.environ.get("TFOVSS_DATA_DIR"), help="sample images folder")
    ap.add_argument("--official-sclip", default=os.environ.get("TFOVSS_OFFICIAL_SCLIP"))
    ap.add_argument("--official-scclip", default=os.environ.get("TFOVSS_OFFICIAL_SCCLIP"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--methods", default=",".join(SIX))
    ap.add_argument("--text-queries", type=int, default=2)
    ap.add_argument("--fast-images", type=int, default=6)
    ap.add_argument("--skip", default="", help="comma list of sections to skip: official,shared,text,fast,memory")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    skip = set(filter(None, args.skip.split(",")))
    data_dir = Path(args.data_dir) if args.data_dir else None
    model, weights, golden_dir = load_model(args, device)
    clock = Clock(device)
    rate0 = matmul_rate(2048, device=device)
    rates = [rate0.flop_per_s_best]
    print(f"matmul 2048^3 fp32: {rate0.flop_per_s_best / 1e9:.1f} GFLOP/s best, "
          f"{rate0.flop_per_s_median / 1e9:.1f} median ({clock.kind}, {torch.get_num_threads()} threads)", flush=True)
    image, image_label = bench_image(golden_dir, data_dir)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows, results = section_methods(model, image, clock, rates, args.repeats, methods)
    for r in rows:
        print(f"{r['method']:>10}: {r['s_min']:.2f} s min / {r['s_med']:.2f} median, {r['ips']:.2f} img/s, "
              f"peak {r['peak']:.0f} MiB, trunk {r['trunk']:.2f} s ({fmt(r['trunk_pct'], 1)}% of matmul), "
              f"last block {r['last_block']:.3f} s, upsample {r['upsample']:.3f}, PAMR {r['pamr']:.3f}, "
              f"{r['gflop']:.1f} GFLOP, {r['limit_pct']:.0f}% of limit", flush=True)
    official = [] if "official" in skip or device.type != "cpu" else section_official(
        args, model, golden_dir, clock, max(5, args.repeats))
    for r in official:
        print(f"official {r['method']}: {r['official'][1]:.2f} s median vs ours {r['ours'][1]:.2f} s: "
              f"{r['speedup_med']:.2f}x (paired {r['speedup_paired']:.2f}x); "
              f"probs diff {r['probs_diff']:.1e}, mask agree {r['mask_agree']:.4f}",
              flush=True)
    shared = None
    if "shared" not in skip and set(SIX) <= set(results):
        shared = section_shared(model, image, clock, args.repeats, results)
        print(f"six methods shared: {shared['multi'][1]:.2f} s vs sclip alone {shared['one'][1]:.2f} s = "
              f"{shared['ratio']:.2f}x; identical: {shared['identical']}", flush=True)
    text = None if "text" in skip else section_text(model, clock, args.text_queries)
    if text:
        print(f"text: {text['prompts']} prompts truncated {text['ours']:.2f} s vs full {text['full']:.2f} s "
              f"= {text['speedup']:.1f}x (diff {text['diff']:.1e}); cached {text['cached'] * 1e3:.1f} ms", flush=True)
    files = sample_images(data_dir, 10)
    fast = [] if "fast" in skip or not files else section_fast(model, files[:args.fast_images], clock)
    for r in fast:
        print(f"fast {r['method']} {r['mode']}: {r['speedup']:.2f}x, agreement {r['agree']:.3f} "
              f"({r['agree_sure']:.3f} where sure)", flush=True)
    memory = {} if "memory" in skip or not files or device.type != "cpu" else section_memory(model, files, clock)
    for (mode, factor), v in memory.items():
        print(f"{mode} {v['images']} images: peak RSS {v['peak']:.0f} MiB", flush=True)
    cuda_rows = []
    if device.type == "cuda":
        for precision in ("fp32", "fp16"):
            prow, _ = section_methods(model, image, clock, rates, args.repeats, methods,
                                      precision=precision, batch_size=0)
            for r in prow:
                cuda_rows.append(dict(method=r["method"], precision=precision, s_med=r["s_med"], ips=r["ips"],
                                      peak=r["peak"]))
                print(f"cuda {precision} {r['method']}: {r['s_med'] * 1e3:.1f} ms, {r['ips']:.1f} img/s, "
                      f"peak {r['peak']:.0f} MiB", flush=True)
    cpu_name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import open_clip
    meta = dict(date=datetime.date.today().isoformat(), elapsed=time.perf_counter() - started,
                device=(torch.cuda.get_device_name() if device.type == "cuda" else "cpu"),
                cpu=f"{cpu_name}, {os.cpu_count()} logical CPUs", threads=torch.get_num_threads(),
                torch=torch.__version__, open_clip=open_clip.__version__, weights=weights, image=image_label,
                timing=f"{clock.kind}; {args.repeats} interleaved repeats after a warm-up", precision="fp32")
    md = markdown(meta, rates, rows, official, shared, text, fast, memory, cuda_rows)
    if args.out:
        args.out.write_text(md)
        print(f"wrote {args.out}")
    else:
        print(md)
    print(f"bench finished in {meta['elapsed']:.0f} s")


if __name__ == "__main__":
    main()
