"""The ``dali-abs`` command. Each stage module registers its own subcommands."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from dali_abs.cli_args import add_dataset_arguments, add_json_argument, dataset_from_args, print_json
from dali_abs.errors import DaliAbsError, DaliAbsWarning
from dali_abs.files import MAX_PIXELS


def _make_dataset(args: argparse.Namespace) -> int:
    from dali_abs.photobench import cli as photo_cli
    from dali_abs.synthetic import SyntheticConfig, make_dataset

    if args.objects:
        return photo_cli.run(args)
    photo_cli.check_unused(args)
    d = SyntheticConfig()
    pick = lambda v, default: default if v is None else v  # noqa: E731
    cfg = SyntheticConfig(classes=pick(args.classes, d.classes), size=pick(args.size, d.size),
                          train=pick(args.train, d.train), val=pick(args.val, d.val), test=pick(args.test, d.test),
                          rho=args.rho, seed=args.seed)
    out = make_dataset(args.out, cfg, progress=not args.json)
    if args.json:
        print_json({"out": str(out), **vars(cfg)})
    else:
        print(f"wrote {cfg.train + cfg.val + cfg.test} images to {out} (metadata.csv, masks/, backgrounds/)")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from dali_abs.dataset import check_images
    from dali_abs.files import atomic_write_text

    ds = dataset_from_args(args)
    report = check_images(ds, min_size=args.min_size, progress=not args.json, max_pixels=args.max_pixels)
    report_path = Path(args.report)
    atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")
    report["report"] = str(report_path)
    if args.json:
        print_json(report)
    else:
        print(f"{report['checked']} images checked, {report['ok']} ok, {len(report['problems'])} with problems; "
              f"splits {report['splits']}; report written to {report_path}")
        for p in report["problems"][:20]:
            print(f"  {p['path']}: {p['reason']}")
        if len(report["problems"]) > 20:
            print(f"  ... {len(report['problems']) - 20} more in the report")
        if report["ignored"]:
            print(f"  {len(report['ignored'])} non-image files ignored (listed in the report)")
    return 1 if report["problems"] else 0


def _labels_import(args: argparse.Namespace) -> int:
    from dali_abs.dataset import load_dataset
    from dali_abs.labels import import_reference

    ds = load_dataset(args.data) if args.data else None
    if ds is not None:
        ds.check_output(args.out, "--out")
    labels = import_reference(args.masks_csv, args.out, ds)
    msg = {"out": str(args.out), "images": len(labels), "grid": 16}
    print_json(msg) if args.json else print(f"wrote {len(labels)} labels (16 x 16) to {args.out}")
    return 0


def _labels_from_masks(args: argparse.Namespace) -> int:
    from dali_abs.labels import labels_from_masks, write_labels

    ds = dataset_from_args(args)
    labels = labels_from_masks(ds, args.masks, grid=args.grid, threshold=args.threshold, count=args.count,
                               majority_only=args.majority_only, seed=args.seed, progress=not args.json)
    write_labels(args.out, labels)
    fg = float(sum(g.mean() for g in labels.values()) / len(labels))
    if args.json:
        print_json({"out": str(args.out), "images": len(labels), "grid": args.grid, "foreground_fraction": fg})
    else:
        print(f"wrote {len(labels)} labels ({args.grid} x {args.grid}, {fg:.1%} foreground patches) to {args.out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from dali_abs.demo import run_demo

    return run_demo(Path(args.out), fresh=args.fresh, hand_picked=args.hand_picked)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dali-abs", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from dali_abs.photobench import cli as photo_cli
    from dali_abs.photobench.config import PhotoConfig
    from dali_abs.synthetic import SyntheticConfig

    d, ph = SyntheticConfig(), PhotoConfig()
    p = sub.add_parser("make-dataset", help="generate the built-in benchmark, or build one from your photos (--objects)",
                       description="Generate the built-in spurious-background benchmark into OUT, or, with --objects "
                                   "DATA --masks MASKS, build one from photos: objects cut out by their masks and "
                                   "pasted onto places (Waterbirds-style).")
    p.add_argument("out", metavar="OUT", help="output folder (new or empty)")
    p.add_argument("--classes", type=int, default=None, help=f"built-in: K classes and K places (default {d.classes})")
    p.add_argument("--size", type=int, default=None,
                   help=f"image side in px (default {d.size} built-in, {ph.size} from photos)")
    p.add_argument("--train", type=int, default=None,
                   help=f"train images (default {d.train} built-in; from photos one per train object photo)")
    p.add_argument("--val", type=int, default=None,
                   help=f"val images, balanced over groups (default {d.val} built-in; from photos one per val object "
                        "photo, rounded down to a multiple of the groups)")
    p.add_argument("--test", type=int, default=None,
                   help=f"test images, balanced over groups (default {d.test} built-in; from photos as for --val)")
    p.add_argument("--rho", type=float, default=d.rho,
                   help=f"P(class k on place k) in train (default {d.rho}: no image breaks the correlation)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    add_json_argument(p)
    photo_cli.add_arguments(p)
    p.set_defaults(func=_make_dataset)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True, metavar="SUB")
    p = data.add_parser("check", help="decode every image and write a report of unreadable ones",
                        description="Decode every image of DATA; write a JSON report (never into DATA). "
                                    "Exit status 1 when any image has a problem.")
    add_dataset_arguments(p)
    p.add_argument("--report", default="data-check-report.json", help="report path (default ./data-check-report.json)")
    p.add_argument("--min-size", type=int, default=16, help="smallest acceptable side in px (default 16)")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"report images with more pixels from their header, without decoding them (decompression "
                        f"bombs; default {MAX_PIXELS}, as precompute)")
    add_json_argument(p)
    p.set_defaults(func=_data_check)

    labels = sub.add_parser("labels", help="patch-label files").add_subparsers(dest="labels_command", required=True,
                                                                              metavar="SUB")
    p = labels.add_parser("import-reference", help="convert the reference implementation's masks.csv",
                          description="Convert masks.csv (columns info,mask; 16 x 16, 1 = foreground) "
                                      "to the dali-abs labels format.")
    p.add_argument("masks_csv", metavar="MASKS_CSV")
    p.add_argument("--out", required=True, help="labels file to write")
    p.add_argument("--data", help="dataset folder; when given, every id must be one of its images")
    add_json_argument(p)
    p.set_defaults(func=_labels_import)

    p = labels.add_parser("from-masks", help="derive patch labels from pixel masks",
                          description="Patch coverage of pixel masks (255 = foreground) by average pooling, "
                                      "thresholded, for train-split images.")
    add_dataset_arguments(p)
    p.add_argument("--masks", required=True, help="folder of <img_id>.png (or <img_filename>.png) masks")
    p.add_argument("--out", required=True, help="labels file to write")
    p.add_argument("--grid", type=int, default=16, help="patches per side R (default 16)")
    p.add_argument("--threshold", type=float, default=0.25, help="coverage above which a patch is foreground (default 0.25)")
    p.add_argument("--count", type=int, default=None, help="label this many images, drawn at random (default: all)")
    p.add_argument("--majority-only", action="store_true",
                   help="draw only from majority groups (each class on its most frequent place), as the paper does")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    add_json_argument(p)
    p.set_defaults(func=_labels_from_masks)

    from dali_abs.cache.cli import register as register_cache
    from dali_abs.inpainter.cli import register as register_inpainter
    from dali_abs.labeling.cli import register as register_label
    from dali_abs.segmenter.cli import register as register_segmenter

    register_label(sub)
    register_segmenter(sub)
    register_inpainter(sub)
    register_cache(sub)

    from dali_abs.audit.cli import register as register_audit

    register_audit(sub)

    p = sub.add_parser("demo", help="run the whole chain on the built-in data (what `make demo` runs)")
    p.add_argument("out", nargs="?", default="demo-out", metavar="OUT", help="output folder (default ./demo-out)")
    p.add_argument("--fresh", action="store_true", help="delete OUT first instead of reusing finished steps")
    p.add_argument("--hand-picked", action="store_true",
                   help="swap with the hand-picked thresholds the demo used before (tight 0.8, loose 0.1) instead "
                        "of those chosen on the segmenter's validation images (its own result file in OUT)")
    p.set_defaults(func=_demo)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None, _default=warnings.showwarning):
    if issubclass(category, DaliAbsWarning):
        print(f"dali-abs: warning: {message}", file=sys.stderr)
    else:
        _default(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default", DaliAbsWarning)  # shown (once) even under PYTHONWARNINGS=ignore
            warnings.showwarning = _show_warning
            return args.func(args)
    except DaliAbsError as e:
        print(f"dali-abs: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dali-abs: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
