"""Command line: ``tfovss segment | methods | presets | benchmark``, plus the commands other
packages register in the ``tfovss.cli_commands`` entry-point group (``tfovss prelabel`` from
``tfovss_fiftyone``): each entry point is a callable ``register(subparsers)``; the core never
imports them by name."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tfovss_core.cli.ray_options import add_ray_arguments, executor_from_args

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def parse_classes(text: str):
    """A preset name, a class file, or inline ``"cat; dog; person, man"`` (``;`` between classes,
    ``,`` between synonyms): a :class:`~tfovss_core.spec.classes.ClassSource`."""
    from tfovss_core.spec.classes import resolve_classes
    return resolve_classes(text)


def expand_images(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def cmd_segment(args) -> int:
    from tqdm.auto import tqdm

    from tfovss_core.engine.runner import Item, JobRunner, ModelPass, RunRef
    from tfovss_core.engine.segmenter import Segmenter
    from tfovss_core.spec.settings import parse_sets
    from tfovss_core.errors import TfovssError, WeightsError
    from tfovss_core.clip.weights import resolve_weights
    from tfovss_core.spec.weights import SYNTHETIC_BANNER, parse_weights_spec

    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    try:
        weights = resolve_weights(args.arch, args.pretrained, args.synthetic_weights_script)
        model = weights.load(args.device)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.pretrained.strip() and parse_weights_spec(args.pretrained).kind == "tag":
            print("hint: without network access, `--pretrained random:0` runs the pipeline end to end on "
                  "random weights (outputs are labelled as synthetic).", file=sys.stderr)
        return 2
    synthetic = weights.synthetic
    try:
        classes = parse_classes(args.classes)
        seg = Segmenter(model, method=args.method, classes=classes, **parse_sets(args.set))
        executor = executor_from_args(args)
    except TfovssError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = expand_images(args.images)
    if not images:
        print("error: no images given", file=sys.stderr)
        return 2
    if synthetic:
        print(f"NOTE: {SYNTHETIC_BANNER}", file=sys.stderr)
    t0 = time.time()
    text = seg.text_features  # encoded (or loaded from the cache) once, before the progress bar
    del text
    sink = SegmentFilesSink(out, seg.class_names, classes.values(seg.method.name),
                            banner=SYNTHETIC_BANNER if synthetic else None)
    items, stems = [], set()
    for order, path in enumerate(images):
        stem = path.stem if path.stem not in stems else f"{path.stem}_{len(stems)}"
        stems.add(stem)
        item = Item(stem, path, context=(order, out / f"{stem}_mask.png", out / f"{stem}_overlay.jpg"))
        if not args.overwrite and (item.context[1].exists() or item.context[2].exists()):
            sink.failure(item, FileExistsError(f"output {item.context[1].name} exists (use --overwrite to "
                                               "replace it)"), [seg.method.name])
        else:
            items.append(item)
    bar = tqdm(total=len(items), desc=f"{seg.method.name}", unit="img", disable=args.quiet)
    # the sink stores only each mask (PNG and overlay): the pre-label path, no probability maps
    JobRunner(ModelPass({seg.method.name: seg}, output="mask", images_per_batch=args.images_per_batch),
              [RunRef(seg.method.name, "segment")], sink,
              executor=executor, progress=lambda done, total: bar.update(1)).run(items)
    bar.close()
    written, failures = sink.written(), sink.failures()
    run = {"tool": "tfovss segment", "synthetic_weights": synthetic, **seg.describe(),
           "images": written, "failures": [{"image": i, "error": e} for i, e in failures],
           "seconds": round(time.time() - t0, 2)}
    if synthetic:
        run["warning"] = SYNTHETIC_BANNER
    (out / "run.json").write_text(json.dumps(run, indent=2))
    print(f"wrote {len(written)} mask(s) and overlay(s) to {out} ({run['seconds']} s); settings in {out / 'run.json'}")
    if failures:
        print(f"{len(failures)} image(s) failed:", file=sys.stderr)
        for _, error in failures:
            print(f"  {error}", file=sys.stderr)
        return 1
    return 0


class SegmentFilesSink:
    """``tfovss segment``'s sink: per image a class-index mask PNG (the vocabulary's values) and an
    overlay JPEG, plus the list of what was written and what failed, in the order given.

    An item's ``context`` is ``(order, mask path, overlay path)``. ``done`` is empty: existing
    outputs are refused (not silently taken as done) unless ``--overwrite``."""

    def __init__(self, out: Path, class_names: list[str], values: list[int], banner: str | None):
        import numpy as np

        self.out = out
        self.class_names = list(class_names)
        self.lut = np.asarray(values, dtype=np.int64)
        self.identity = list(values) == list(range(len(values)))
        self.banner = banner
        self._written: dict[int, dict] = {}
        self._failures: dict[int, tuple[str, str]] = {}

    def done(self, run) -> set:
        return set()

    def write(self, outcome) -> None:
        import numpy as np

        from tfovss_core.export.overlay import overlay, save_index_mask
        from tfovss_core.io.images import load_image

        order, mask_path, overlay_path = outcome.item.context
        (res,) = outcome.results.values()
        rgb = outcome.image if outcome.image is not None else load_image(outcome.item.source)
        stored = res.mask if self.identity else self.lut[res.mask.astype(np.int64)]
        try:
            save_index_mask(stored, mask_path, int(self.lut.max(initial=0)) + 1)
            overlay(rgb, res.mask, res.class_names, banner=self.banner).save(overlay_path, quality=90)
        except OSError as exc:
            self.failure(outcome.item, exc, list(outcome.results))
            return
        present = {int(c): int(n) for c, n in zip(*np.unique(res.mask, return_counts=True))}
        self._written[order] = {"image": str(outcome.item.source), "mask": mask_path.name,
                                "overlay": overlay_path.name,
                                "classes_present": {res.class_names[c]: n for c, n in present.items()}}

    def failure(self, item, error, labels) -> None:
        self._failures[item.context[0]] = (str(item.source), str(error))

    def close(self) -> None:
        pass

    def written(self) -> list[dict]:
        return [self._written[k] for k in sorted(self._written)]

    def failures(self) -> list[tuple[str, str]]:
        return [self._failures[k] for k in sorted(self._failures)]


def cmd_methods(args) -> int:
    from tfovss_core.methods import describe_method, list_methods
    names = [args.name] if args.name else list_methods(include_composed=True)
    infos = [describe_method(n) for n in names]
    if args.json:
        print(json.dumps(infos, indent=2, default=str))
        return 0
    for info in infos:
        flag = "  [paper-based: no public code]" if info["paper_based"] else ""
        print(f"{info['name']:<22} {info['title']}{flag}")
        if args.name or args.verbose:
            print(f"    paper: {info['paper']}\n    code:  {info['official_code'] or '-'}\n    {info['summary']}")
            for opt in info["options"]:
                print(f"    --set {opt['name']}={json.dumps(opt['default'])}  ({opt['type']}; {opt['source']}) {opt['doc']}")
                for key in ("reading", "passage"):
                    if opt.get(key):
                        print(f"        {key}: {opt[key]}")
    return 0


def cmd_presets(args) -> int:
    from tfovss_core.spec import presets
    for name in presets.list_presets():
        p = presets.get_preset(name)
        print(f"{name:<12} {p.num_classes:>4} classes  ignore={p.ignore_index}  "
              f"background={'yes' if p.has_background else 'no'}  {p.display_name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfovss", description="Training-free open-vocabulary semantic segmentation")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment images with a method and a vocabulary")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--classes", required=True,
                   help="preset name (voc21, ade20k, ...), class file, or inline 'cat; dog; person, man'")
    p.add_argument("--method", default="sclip", help="method name (see `tfovss methods`)")
    p.add_argument("--arch", default="ViT-B-16", help="open_clip architecture, e.g. ViT-B-16, ViT-L-14")
    p.add_argument("--pretrained", default="openai",
                   help="open_clip tag (openai, laion2b_s34b_b88k, ...), a local checkpoint path; or synthetic "
                        "weights (outputs labelled): 'random:SEED' (random init of --arch), 'tiny:SEED', "
                        "'synthetic:SEED' (with --synthetic-weights-script)")
    p.add_argument("--synthetic-weights-script", default=None,
                   help="a make_weights.py for --pretrained synthetic:SEED (or $TFOVSS_SYNTHETIC_WEIGHTS)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="driver setting or method option, e.g. --set prob_thd=0.3 --set crop=0")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_ray_arguments(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("methods", help="list methods and their options")
    p.add_argument("name", nargs="?", help="show one method in detail")
    p.add_argument("--json", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("presets", help="list dataset presets")
    p.set_defaults(func=cmd_presets)

    try:
        from tfovss_core.cli import benchmark
    except ImportError:
        benchmark = None
    if benchmark is not None and hasattr(benchmark, "add_parser"):
        benchmark.add_parser(sub)
    add_plugin_commands(sub)
    return parser


def add_plugin_commands(sub) -> None:
    """The commands registered in the ``tfovss.cli_commands`` entry-point group."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="tfovss.cli_commands"):
        try:
            register = ep.load()
        except ImportError as exc:  # its package is broken or half-installed: say so, go on
            p = sub.add_parser(ep.name, help=f"(unavailable: {exc})")
            p.set_defaults(func=lambda args, _e=exc, _n=ep.name: _unavailable(_n, _e))
            continue
        register(sub)


def _unavailable(name: str, exc: BaseException) -> int:
    print(f"error: `tfovss {name}` is unavailable: {exc}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)

