"""``tfovss prelabel``: the "Pre-label with open-vocabulary segmentation" operator from the command
line (:func:`tfovss_fiftyone.prelabel.prelabel`, or :func:`~tfovss_fiftyone.prelabel.prelabel_many`
for several methods on one shared trunk), locally or on Ray.

    tfovss prelabel --dataset street --field ovss --method sclip --classes voc21
    tfovss prelabel --dataset street --field ovss --method sclip \\
        --classes "background; car, automobile; person" --ray auto --ray-actors 8

Registered into the ``tfovss`` command through the ``tfovss.cli_commands`` entry-point group
(declared in pyproject.toml), so the core never imports FiftyOne. Also ``python -m
tfovss_fiftyone.cli prelabel ...``.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from tfovss_core.cli.ray_options import add_ray_arguments, executor_from_args


def _pairs(items: Sequence[str] | None, what: str) -> dict:
    out = {}
    for it in items or []:
        key, sep, value = it.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} {it!r} is not KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def vocabulary_text(classes: str) -> str:
    """A preset name stays as it is; ``"cat; dog, puppy"`` (``;`` between classes, ``,`` between
    synonyms, as in ``tfovss segment``) becomes the operator's one-class-per-line text."""
    return "\n".join(c.strip() for c in classes.split(";")) if ";" in classes else classes


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers ``tfovss prelabel`` (the ``tfovss.cli_commands`` entry point)."""
    p = subparsers.add_parser(
        "prelabel", help="pre-label a FiftyOne dataset (the plugin's pre-label operator)",
        description="Segments every sample of a FiftyOne dataset into a Segmentation field, as "
                    "the pre-label operator does: masks as PNG files, resume by settings hash, "
                    "no overwrite unless asked, failures listed.")
    p.add_argument("--dataset", required=True, help="FiftyOne dataset name")
    p.add_argument("--field", required=True,
                   help="output Segmentation field (with several --method: the prefix of "
                        "<prefix><method> fields)")
    p.add_argument("--method", action="append", required=True, metavar="METHOD",
                   help="method (repeat to run several on one shared trunk)")
    p.add_argument("--classes", required=True,
                   help="preset name (voc21, ...) or 'background; cat, kitten; dog'")
    p.add_argument("--arch", default="ViT-B-16")
    p.add_argument("--pretrained", default="openai",
                   help="open_clip tag, checkpoint path, or synthetic 'tiny:SEED' / 'random:SEED'")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="driver setting (short_side, crop, stride, prob_thd, ...)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="method option")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=8, help="samples per write batch")
    p.add_argument("--output-dir", default=None, help="mask folder (default: under FiftyOne's "
                   "dataset dir); with --ray, storage the workers share")
    p.add_argument("--confidence-field", default=None, help="also store the confidence heatmap")
    p.add_argument("--overwrite", action="store_true",
                   help="replace labels of the field made with other settings")
    p.add_argument("--recompute", action="store_true",
                   help="recompute samples already labelled with the same settings")
    p.add_argument("--limit", type=int, default=None, help="only the first N samples")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_ray_arguments(p)
    p.set_defaults(func=run_from_args)
    return p


def run_from_args(args) -> int:
    from tfovss_core.errors import TfovssError

    from tfovss_fiftyone.prelabel import PrelabelInputError, prelabel, prelabel_many

    try:
        import fiftyone as fo

        if args.dataset not in fo.list_datasets():
            raise PrelabelInputError(f"no FiftyOne dataset named {args.dataset!r}")
        view = fo.load_dataset(args.dataset)
        if args.limit:
            view = view.limit(args.limit)
        common = dict(classes=vocabulary_text(args.classes), arch=args.arch,
                      pretrained=args.pretrained, settings=_pairs(args.set, "--set"),
                      device=args.device, batch_size=args.batch_size,
                      output_dir=args.output_dir, overwrite=args.overwrite,
                      skip_labelled=not args.recompute, vocabulary_source="tfovss prelabel",
                      executor=executor_from_args(args), images_per_batch=args.images_per_batch,
                      progress=lambda done, total, label: print(label, file=sys.stderr))
        options = _pairs(args.option, "--option")
        methods = list(dict.fromkeys(args.method))
        if len(methods) == 1:
            reports = [prelabel(view, args.field, method=methods[0], method_options=options,
                                confidence_field=args.confidence_field, **common)]
        else:
            many = prelabel_many(view, {m: f"{args.field}{m}" for m in methods},
                                 method_options={m: options for m in methods} if options
                                 else None, **common)
            reports = list(many.reports.values())
    except (PrelabelInputError, TfovssError, ValueError) as e:
        print(f"tfovss prelabel: error: {e}", file=sys.stderr)
        return 2
    for r in reports:
        if args.json:
            print(json.dumps(r.to_dict(), default=str))
        else:
            print(f"{r.field}: {r.num_labelled} labelled, {r.num_skipped} skipped (same "
                  f"settings), {r.num_failed} failed; masks in {r.mask_dir}")
        for f in r.failures:
            print(f"  failed: {f['filepath']}: {f['error']}", file=sys.stderr)
    return 1 if any(r.failures for r in reports) else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tfovss")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
