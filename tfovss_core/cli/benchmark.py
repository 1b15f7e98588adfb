"""``tfovss benchmark``: arguments, dataset sources and the run, on :mod:`tfovss_core.eval.benchmark`.

``fiftyone:NAME`` datasets come from a *benchmark source* registered under the entry-point group
``tfovss.benchmark_sources`` (the ``tfovss[fiftyone]`` package registers ``fiftyone``), so the core
never imports FiftyOne.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Sequence

from tfovss_core.clip.weights import ENV_SYNTHETIC_SCRIPT
from tfovss_core.errors import TfovssError
from tfovss_core.eval.benchmark import (PAPER_BENCHMARKS, SYNTHETIC_BANNER, BenchmarkError, BenchmarkRunner,
                                        resolve_weights)
from tfovss_core.eval.datasets import DatasetLayoutError, canonical_name, get_importer
from tfovss_core.eval.report import build_tables, render_markdown, write_outputs


def _split_list(values: Sequence[str] | None) -> list[str]:
    out = []
    for v in values or []:
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return out


def _parse_set(items: Sequence[str] | None) -> dict:
    """``--set KEY=VALUE`` as the other subcommands parse it (JSON values where they parse)."""
    from tfovss_core.spec.settings import parse_sets
    try:
        return parse_sets(items)
    except TfovssError as exc:
        raise BenchmarkError(str(exc)) from exc


def _parse_data(items: Sequence[str] | None) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise BenchmarkError(f"--data expects NAME=DIR, got {item!r}")
        k, v = item.split("=", 1)
        out[canonical_name(k)] = v
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", nargs="+", required=True, metavar="METHOD",
                   help="methods (space or comma separated), e.g. sclip naclip clearclip")
    p.add_argument("--datasets", nargs="+", required=True, metavar="DATASET",
                   help="benchmarks: voc21 context60 coco_object voc20 context59 coco_stuff "
                        "cityscapes ade20k ade847 context459, 'all' (the papers' 8), or "
                        "fiftyone:NAME for a FiftyOne dataset with ground truth (see --gt-field)")
    p.add_argument("--arch", default="ViT-B/16", help="CLIP architecture (default ViT-B/16)")
    p.add_argument("--pretrained", default="openai",
                   help="open_clip tag, local weights file, 'synthetic:seedN' (with "
                        "--synthetic-weights-script) or 'tiny:seedN' (tiny random CLIP)")
    p.add_argument("--root", help="folder holding the datasets in their standard layouts")
    p.add_argument("--data", action="append", metavar="NAME=DIR",
                   help="folder of one dataset (overrides --root for it); repeatable")
    p.add_argument("--split", default="val", help="split (default val)")
    p.add_argument("--limit", type=int, help="evaluate only the first N images of each dataset")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--out", default="tfovss-benchmark", help="output folder (default ./tfovss-benchmark)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                   help="override a setting for every run (e.g. templates=single); repeatable")
    p.add_argument("--coco-object-source", choices=("auto", "stuffthingmaps", "instances"),
                   default="auto", help="COCO-Object ground truth route (default auto)")
    p.add_argument("--coco-crowd", choices=("background", "ignore", "thing"), default=None,
                   help="instances route: crowd regions (default background, as the official maps)")
    p.add_argument("--coco-overlap", choices=("order", "area"), default=None,
                   help="instances route: overlapping instances (default order)")
    p.add_argument("--synthetic-weights-script", metavar="PATH",
                   help=f"make_weights.py for --pretrained synthetic:seedN (or ${ENV_SYNTHETIC_SCRIPT})")
    p.add_argument("--gt-field", default="ground_truth",
                   help="ground-truth field of fiftyone:NAME datasets (default ground_truth)")
    p.add_argument("--fiftyone", action="store_true",
                   help="also store every run as an evaluation in a FiftyOne dataset")
    p.add_argument("--save-masks", action="store_true", help="keep predicted masks under runs/")
    p.add_argument("--recompute", action="store_true", help="ignore stored per-image results")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--no-shared-trunk", action="store_true",
                   help="run each (method, dataset) on its own; by default the methods of a "
                        "dataset run together and those with the same windows share one pass of "
                        "the frozen blocks per window batch (identical outputs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    from tfovss_core.cli.ray_options import add_ray_arguments
    add_ray_arguments(p)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers ``tfovss benchmark`` on a subparsers object of the main CLI."""
    p = subparsers.add_parser(
        "benchmark", help="evaluate methods on the standard benchmarks (papers' protocol and tables)",
        description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run_from_args)
    return p


def _importers(args) -> dict:
    names = _split_list(args.datasets)
    if "all" in names:
        names = [n for n in names if n != "all"] + [n for n in PAPER_BENCHMARKS if n not in names]
    data = _parse_data(args.data)
    importers = {}
    errors = []
    for raw in dict.fromkeys(names):
        if raw.startswith("fiftyone:"):
            fob = benchmark_source("fiftyone")
            imp = fob.FiftyOneImporter(raw.split(":", 1)[1], gt_field=args.gt_field)
            importers[imp.name] = imp
            continue
        try:
            name = canonical_name(raw)
            root = data.get(name, args.root)
            if root is None:
                raise DatasetLayoutError(f"{name}: no --root and no --data {name}=DIR given")
            opts = {}
            if name == "coco_object":
                opts["coco_object_source"] = args.coco_object_source
                if args.coco_crowd:
                    opts["crowd"] = args.coco_crowd
                if args.coco_overlap:
                    opts["overlap"] = args.coco_overlap
            imp = get_importer(name, root, args.split, **opts)
            imp.check(limit=args.limit)
            importers[name] = imp
        except DatasetLayoutError as e:
            errors.append(str(e))
    if errors:
        raise DatasetLayoutError("\n\n".join(errors))
    return importers


def benchmark_source(name: str = "fiftyone"):
    """The benchmark source registered as ``name`` in the ``tfovss.benchmark_sources`` entry points.

    A source is a module with ``FiftyOneImporter``-style ``importer(dataset, gt_field=...)`` and
    ``store_runs(results, tables, progress=...)``; ``tfovss[fiftyone]`` registers ``fiftyone``.
    """
    found = [ep for ep in entry_points(group="tfovss.benchmark_sources") if ep.name == name]
    if not found:
        raise BenchmarkError(f"no benchmark source {name!r} is installed: fiftyone:NAME datasets and "
                             "--fiftyone need the FiftyOne side, pip install 'tfovss[fiftyone]'")
    try:
        return found[0].load()
    except ImportError as exc:
        raise BenchmarkError(f"the benchmark source {name!r} cannot be imported ({exc}); "
                             "is fiftyone installed? pip install 'tfovss[fiftyone]'") from exc


def run_from_args(args) -> int:
    from tfovss_core.cli.ray_options import executor_from_args

    log = print
    try:
        if args.threads:
            import torch
            torch.set_num_threads(max(1, args.threads))
        methods = _split_list(args.methods)
        from tfovss_core.methods import list_methods
        known = set(list_methods(include_composed=True))
        unknown = [m for m in methods if m.split("+")[0] not in known and m not in known]
        if unknown:
            raise BenchmarkError(f"unknown method(s) {unknown}; available: {sorted(known)}")
        overrides = _parse_set(args.overrides)
        weights = resolve_weights(args.arch, args.pretrained, args.synthetic_weights_script)
        importers = _importers(args)
        out = Path(args.out)
        runner = BenchmarkRunner(methods, importers, weights, out, limit=args.limit,
                                 device=args.device, overrides=overrides,
                                 save_masks=args.save_masks or args.fiftyone,
                                 recompute=args.recompute, progress=not args.no_progress, log=log,
                                 shared_trunk=not args.no_shared_trunk,
                                 executor=executor_from_args(args),
                                 images_per_batch=args.images_per_batch)
        if weights.synthetic:
            log(f"NOTE: {SYNTHETIC_BANNER}")
        results = runner.run()
    except (TfovssError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"tfovss benchmark: error: {msg}", file=sys.stderr)
        return 2
    command = "tfovss benchmark " + " ".join(_quote(a) for a in (getattr(args, "_argv", None) or []))
    tables = build_tables(results, weights, limit=args.limit, overrides=overrides,
                          command=command.strip() if getattr(args, "_argv", None) else "",
                          shared_trunk=runner.shared_trunk)
    paths = write_outputs(tables, out)
    computed = sum(r.computed for r in results)
    resumed = sum(r.resumed for r in results)
    log("")
    log(render_markdown(tables).split("\n## Settings used")[0].rstrip())
    log("")
    if computed == 0:
        log(f"Nothing recomputed: all {resumed} image results were resumed from {out / 'runs'}"
            + ("" if runner.model_loaded else "; the model was not loaded") + ".")
    else:
        log(f"Computed {computed} images, resumed {resumed}.")
    log("Wrote " + ", ".join(str(p) for p in paths.values()))
    if args.fiftyone:
        try:
            pb = benchmark_source("fiftyone")
            for line in pb.store_runs(results, tables, progress=not args.no_progress):
                log(line)
        except (TfovssError, ImportError, ValueError) as e:
            print(f"tfovss benchmark: error: --fiftyone: {e}", file=sys.stderr)
            return 2
    failed = sum(len(r.failed) for r in results)
    return 1 if failed else 0


def _quote(a: str) -> str:
    return a if re.match(r"^[A-Za-z0-9_./:=+,@-]+$", a) else json.dumps(a)


_DESCRIPTION = """\
Evaluate methods on the standard OVSS benchmarks with each method's official settings
and MMSegmentation's mIoU; writes the papers' table (Markdown, CSV, JSON) and the
settings used. Resumable: finished images are never recomputed."""
_EPILOG = """example:
  tfovss benchmark --methods sclip naclip --datasets voc21 ade20k --arch ViT-B/16 \\
      --pretrained openai --root /data --limit 100 --out bench"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tfovss benchmark", description=_DESCRIPTION, epilog=_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args._argv = argv
    return run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
