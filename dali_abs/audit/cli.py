"""``dali-abs audit CACHE --model M.pt|M.onnx``: how much does a trained classifier read the background?"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from dali_abs.cli_args import add_column_arguments, add_json_argument, print_json


def _check_writable(path: str, option: str) -> None:
    """Refuse, before the audit, an output path the report or picture could not be written to."""
    from dali_abs.errors import DaliAbsError

    p = Path(path).expanduser()
    if p.is_dir():
        example = p / ("audit.png" if option == "--png" else "audit.json")
        raise DaliAbsError(f"{option} {path} is a folder; give a file path, e.g. {example}")
    # the writer creates missing folders: the nearest existing one must take new entries
    parent = next(q for q in p.absolute().parents if q.exists())
    if not parent.is_dir():
        raise DaliAbsError(f"{option} {path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DaliAbsError(f"{option} {path}: folder {parent} is not writable; choose a path in a writable folder")


def _audit(args: argparse.Namespace) -> int:
    import sys

    from dali_abs.audit.report import format_table
    from dali_abs.audit.run import AuditConfig, audit, check_config, to_json
    from dali_abs.cli_args import columns_from_args
    from dali_abs.errors import DaliAbsError
    from dali_abs.files import atomic_write_text
    from dali_abs.loader.iterator import open_inputs

    cfg = check_config(AuditConfig(split=args.split, subset=args.subset, size=args.size, mean=tuple(args.mean),
                                   std=tuple(args.std), backdrop=None if args.backdrop is None else tuple(args.backdrop),
                                   tight=args.tight, loose=args.loose, batch_size=args.batch_size, seed=args.seed,
                                   device=args.device, num_threads=args.threads,
                                   examples=args.examples if args.png else 0))
    if args.png is not None and not str(args.png).lower().endswith(".png"):
        raise DaliAbsError(f"--png {args.png}: the picture is written as PNG; give a path ending in .png")
    if args.png is not None and args.examples == 0:
        raise DaliAbsError(f"--png {args.png} with --examples 0: the picture shows the examples; give --examples 1 "
                           "or more, or drop --png")
    # the cache's own dataset (no --data) may also lead outside its folder if the cache was built so
    cache, data = open_inputs(args.cache, args.data, columns_from_args(args),
                              allow_outside=args.allow_outside or (None if args.data is None else False))
    for opt in ("out", "png"):  # the user's dataset is read-only to us
        if getattr(args, opt) is not None:
            data.check_output(getattr(args, opt), "--" + opt)
            _check_writable(getattr(args, opt), "--" + opt)
    report = audit(args.model, cache, data, cfg, png=args.png, progress=not args.json and sys.stderr.isatty())
    out = to_json(report)
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(out, indent=2) + "\n")
        out["out"] = str(args.out)
    if args.json:
        print_json(out)
    else:
        print(format_table(report))
        wrote = [f"{what} {out[k]}" for k, what in (("out", "report"), ("png", "picture")) if k in out]
        print(f"\n({report['seconds']:.1f} s on {report['device']}" + ("; " + ", ".join(wrote) if wrote else "") + ")")
    return 0


def register(sub) -> None:
    from dali_abs.audit.run import AuditConfig, DEFAULT_SIZE, SUBSETS
    from dali_abs.audit.variants import VARIANTS

    d = AuditConfig()
    p = sub.add_parser(
        "audit", help="how much does a trained classifier read the background? (BG-gap, only-bg accuracy)",
        description="Classify variants of the test images, made from the cache by the loader's compositing: "
                    + ", ".join(VARIANTS) + ". Prints the accuracy on each, per class and group, the BG-gap "
                    "(mixed_same - mixed_rand, as the Backgrounds Challenge) and the only-bg accuracy. The same "
                    "seed gives the same variants for every model.")
    p.add_argument("cache", metavar="CACHE", help="cache folder (dali-abs precompute)")
    p.add_argument("--model", required=True,
                   help="classifier: TorchScript (.pt, torch.jit.save) or ONNX (.onnx); float32 NCHW normalised RGB "
                        "in, logits [N, C] out, class k = label k")
    p.add_argument("--data", help="dataset folder (default: the one the cache was built from)")
    add_column_arguments(p)
    p.add_argument("--allow-outside", action="store_true", help="as for precompute: image paths may lead out of DATA")
    p.add_argument("--split", default=d.split, help=f"split to audit (default {d.split})")
    p.add_argument("--subset", default=d.subset, choices=SUBSETS,
                   help="all: every image of the split; majority: only the majority groups (each class on its train "
                        "place), where the background goes with the class; auto (default): majority when the dataset "
                        "has places")
    p.add_argument("--size", type=int, default=None,
                   help=f"model input side in px (default: an ONNX model's static side, else {DEFAULT_SIZE})")
    p.add_argument("--mean", type=float, nargs=3, default=list(d.mean), metavar=("R", "G", "B"),
                   help="the model's normalisation mean, RGB in 0..1 (default ImageNet's)")
    p.add_argument("--std", type=float, nargs=3, default=list(d.std), metavar=("R", "G", "B"),
                   help="its std, RGB in 0..1 (default ImageNet's)")
    p.add_argument("--backdrop", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="only_fg backdrop colour, 0..255 (default: the mean, i.e. 0 after normalising)")
    p.add_argument("--tight", type=float, default=None, help="tight threshold (default: the cache's)")
    p.add_argument("--loose", type=float, default=None, help="loose threshold (default: the cache's)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"images per batch (default {d.batch_size})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of the variants (default {d.seed})")
    p.add_argument("--device", default=d.device, choices=["cpu", "gpu"],
                   help="decode, composite and classify on the CPU (default) or the GPU")
    p.add_argument("--threads", type=int, default=d.num_threads, help=f"DALI threads (default {d.num_threads})")
    p.add_argument("--out", default=None, help="write the report as JSON here")
    p.add_argument("--png", default=None, help="write a picture of example images with the predictions here")
    p.add_argument("--examples", type=int, default=d.examples, help=f"images in the picture (default {d.examples})")
    add_json_argument(p)
    p.set_defaults(func=_audit)
