"""A new vocabulary on a cached image vs a full predict (the vocabulary studio's loop).

ViT-B/16 with random weights (``random:0``: the timing of the real weights, whose values do not
change the work), one CPU thread, SCLIP, the shared 'chelsea' golden image (or any image given),
at 21 (``voc21``) and 171 (``coco_stuff``) classes, side by side in one run:

* ``predict``: the whole prediction (text embeddings already cached, as in a pre-label run);
* ``encode``: the image side once (what the feature cache keeps);
* ``segment``: a new vocabulary on the encoded image (text embeddings cached per query: one new
  class costs one text encoding, timed separately as ``one new class's text``).

Also states the features' memory per image (float32 in memory) and the disk per 1,000 images
(float16 files of the on-disk cache). One template, so that encoding 171 classes' text for the
warm-up stays short; the template count changes neither side of the comparison.

``--output mask`` (the default: what the vocabulary panel and the pre-label compute) times both
sides on the pre-label path (mask and confidence); ``--output probs`` on the protocol path (every
probability map).

    python bench/vocabulary.py [--image PATH] [--repeats 3] [--output mask|probs] [--markdown]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

torch_threads = 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=None, help="image to segment (default: the golden 'chelsea' photo)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", default="sclip")
    parser.add_argument("--output", choices=("mask", "probs"), default="mask",
                        help="both sides on the pre-label path (mask) or the protocol path (probs)")
    parser.add_argument("--markdown", action="store_true", help="print the RESULTS.md section")
    args = parser.parse_args(argv)

    os.environ.setdefault("TFOVSS_CACHE_DIR", tempfile.mkdtemp(prefix="tfovss-bench-vocab-"))
    import numpy as np
    import torch

    torch.set_num_threads(torch_threads)
    import tfovss_core as tc
    from tfovss_core.clip.weights import resolve_weights
    from tfovss_core.engine.features import FeatureCache
    from tfovss_core.io.images import load_image

    if args.image:
        image = load_image(args.image)
    else:
        shared = Path(os.environ.get("TFOVSS_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
        image = dict(np.load(shared / "golden" / "sclip" / "voc21_chelsea.npz"))["image"]
    model = resolve_weights("ViT-B/16", "random:0").load("cpu")
    templates = ["a photo of a {}."]
    rows = []
    started = time.time()
    for preset, count in (("voc21", 21), ("coco_stuff", 171)):
        seg = tc.Segmenter(model, args.method, preset, templates=templates)
        assert seg.num_classes == count, (preset, seg.num_classes)
        disk = Path(tempfile.mkdtemp(prefix="tfovss-features-"))
        cache = FeatureCache(directory=disk)
        seg.text_features  # noqa: B018  (text cached, for both sides)
        seg.predict(image, output=args.output)  # warm-up
        features = seg.encode(image)
        seg.segment(features, output=args.output)  # warm-up
        # a "new" vocabulary: the same classes reversed (same size; its text encoded beforehand)
        reversed_classes = [list(c) for c in reversed(seg.vocabulary.classes)]
        other = seg.with_classes(reversed_classes)
        other.text_features  # noqa: B018
        t_predict, t_encode, t_segment = [], [], []
        for _ in range(args.repeats):      # interleaved, so that drift of the host hits both sides
            t = time.perf_counter()
            expected = other.predict(image, output=args.output)
            t_predict.append(time.perf_counter() - t)
            t = time.perf_counter()
            features = seg.encode(image)
            t_encode.append(time.perf_counter() - t)
            t = time.perf_counter()
            result = seg.segment(features, reversed_classes, output=args.output)
            t_segment.append(time.perf_counter() - t)
        assert (result.mask == expected.mask).all()
        assert np.abs(result.confidence - expected.confidence).max() <= 1e-6
        cache.put(features)
        file_bytes = sum(p.stat().st_size for p in disk.glob("*.npz"))
        t = time.perf_counter()
        model.text.encode_queries([f"new class {count}"], seg.templates)
        t_text = time.perf_counter() - t
        rows.append(dict(classes=count, predict=statistics.median(t_predict), encode=statistics.median(t_encode),
                         segment=statistics.median(t_segment), text=t_text, memory=features.nbytes,
                         disk=file_bytes, windows=sum(len(b.boxes) for b in features.batches),
                         input=features.resized_size))
    elapsed = time.time() - started
    h, w = image.shape[:2]
    lines = [
        f"_Generated by `bench/vocabulary.py`; {elapsed:.0f} s for the whole run._",
        "",
        f"ViT-B/16 (random weights `random:0`), {args.method}, CPU, {torch_threads} thread, torch "
        f"{torch.__version__}; image {w}x{h} (each preset's input size and windows in the table); "
        f"medians of {args.repeats} interleaved repeats after a warm-up; "
        "text embeddings cached on both sides (one template); both sides on the "
        + ("pre-label path (mask and confidence)" if args.output == "mask" else
           "protocol path (every probability map)")
        + ". Outputs checked equal (confidence within 1e-6, masks identical).",
        "",
        "| classes | input, windows | full predict s | encode s (once per image) | new vocabulary on cached features s | speed-up | "
        "one new class's text s | features in memory MiB/image | disk GB / 1,000 images |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['classes']} | {r['input'][1]}x{r['input'][0]}, {r['windows']} | {r['predict']:.2f} | {r['encode']:.2f} | {r['segment']:.3f} | "
                     f"{r['predict'] / r['segment']:.1f}x | {r['text']:.3f} | {r['memory'] / 2**20:.2f} | "
                     f"{r['disk'] * 1000 / 1e9:.2f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
