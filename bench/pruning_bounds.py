"""How much of an image exact candidate pruning could skip (issue 11's suggested design), per model.

The pre-label path upsamples every query's logits to full resolution. Bilinear upsampling is a
convex combination of input-resolution neighbours, so on a tile of input pixels each query's
full-resolution logits lie between its minimum and maximum over the tile and its neighbours
(one tile around, which covers any output pixel whose source falls in the tile). Where one class's
lower bound beats every other class's upper bound, the argmax there is decided without the
full-resolution maps; elsewhere only the classes whose bounds overlap the leader's need them.
This script reports, for k x k input tiles on the shared COCO photos 640x480 (SCLIP, short side
336), the share of tiles decided and how many classes the undecided tiles need. It computes no
mask: it tells whether pruning can pay for a model before anyone builds it.

    python bench/pruning_bounds.py [--weights tiny|ViT-B/16=TAG] [--images N] [--json OUT]

TAG is any tag ``resolve_weights`` takes (``random:0``, ``openai``, a local checkpoint).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MARGIN = 1e-5      # raw-logit margin (far above float32 rounding of values below 1)


def tile_bounds(logits, query_class, num_classes: int, k: int) -> dict:
    """Share of k x k tiles whose winner the bounds decide, and the classes the others need."""
    import torch
    import torch.nn.functional as F

    hi = F.max_pool2d(logits[None], k, k, ceil_mode=True)
    lo = -F.max_pool2d(-logits[None], k, k, ceil_mode=True)
    hi = F.max_pool2d(hi, 3, 1, 1)[0]           # a tile's neighbours: output pixels near its edge
    lo = -F.max_pool2d(-lo, 3, 1, 1)[0]
    index = query_class.view(-1, 1, 1).expand_as(hi)
    empty = torch.full((num_classes, *hi.shape[1:]), float("-inf"))
    class_hi = empty.scatter_reduce(0, index, hi, "amax")    # a class's logit is its best query's
    class_lo = empty.scatter_reduce(0, index, lo, "amax")
    lead, leader = class_lo.max(0)
    others = class_hi.scatter(0, leader[None], float("-inf")).amax(0)
    decided = lead > others + MARGIN
    needed = (class_hi >= (lead - MARGIN)[None]) & ~decided[None]
    undecided = int((~decided).sum())
    return {"tile": k, "tiles": decided.numel(), "decided": float(decided.float().mean()),
            "classes_per_undecided_tile": float(needed.sum(0)[~decided].float().mean()) if undecided else 0.0,
            "classes_in_any_undecided_tile": int(needed.any(dim=(1, 2)).sum()), "classes": num_classes}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--weights", default="tiny", help="tiny, or ARCH=TAG (default: tiny)")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import torch
    from prelabel_throughput import ONE_TEMPLATE, coco_photos
    from tfovss_core.clip.synthetic import tiny_clip
    from tfovss_core.clip.weights import resolve_weights
    from tfovss_core.engine.segmenter import Segmenter
    from tfovss_core.io.images import load_image

    torch.set_num_threads(1)
    if args.weights == "tiny":
        model = tiny_clip(seed=0)
    else:
        arch, _, tag = args.weights.partition("=")
        model = resolve_weights(arch, tag or "random:0").load("cpu")
    rows = []
    for preset in ("voc21", "coco_stuff"):
        seg = Segmenter(model, "sclip", preset, templates=ONE_TEMPLATE, short_side=336)
        query_class = torch.tensor(seg.vocabulary.query_class)
        for path in coco_photos(args.data_dir, args.images):
            _, x = seg.prepare(load_image(str(path)))
            logits = seg.input_logits(x)
            for k in (4, 8, 16):
                rows.append({"preset": preset, "image": path.stem,
                             **tile_bounds(logits, query_class, seg.num_classes, k)})
    print(f"weights {args.weights}: tiles of k x k input pixels whose argmax the bilinear bounds decide")
    for r in rows:
        print(f"  {r['preset']:>10} {r['image']} k={r['tile']:>2}: {100 * r['decided']:5.1f} % of {r['tiles']} "
              f"tiles decided; undecided tiles need {r['classes_per_undecided_tile']:.1f} of {r['classes']} "
              f"classes ({r['classes_in_any_undecided_tile']} in any)")
    if args.json:
        args.json.write_text(json.dumps({"weights": args.weights, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
