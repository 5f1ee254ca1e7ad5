"""The photo options of ``dali-abs make-dataset`` (``--objects ...``) and the run that uses them."""

from __future__ import annotations

import argparse
import time

from dali_abs.photobench.config import PhotoBenchError, PhotoConfig

# Options only the photo mode has (dest names); given without --objects they are an error.
PHOTO_ONLY = ("masks", "places", "split_fractions", "min_confidence", "min_cover", "max_cover", "max_hole", "dilate",
              "inpainter", "object_scale", "class_names")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dali_abs.cli_args import add_column_arguments

    d = PhotoConfig()
    g = parser.add_argument_group("from your photos (--objects): objects cut out by their masks, pasted onto places")
    g.add_argument("--objects", metavar="DATA", help="object photos with a class each (metadata.csv or ImageFolder); "
                                                     "builds from photos instead of the built-in shapes")
    g.add_argument("--masks", metavar="MASKS", help="their masks: grayscale, 255 = object, soft values allowed; named "
                                                    "<img_id>.png or by the photo's path (as for labels from-masks)")
    g.add_argument("--places", metavar="PLACES", help="place photos by place (ImageFolder: place = folder, one per "
                                                      "class); default: each photo's own background, object filled out")
    g.add_argument("--split-fractions", default=",".join(str(f) for f in d.split_fractions), metavar="TR,VA,TE",
                   help="shares of the source photos for train,val,test, per class (default %(default)s)")
    g.add_argument("--min-confidence", type=float, default=d.min_confidence,
                   help="skip objects whose mask has fewer decided pixels (below 0.1 or above 0.9) than this share "
                        f"(default {d.min_confidence})")
    g.add_argument("--min-cover", type=float, default=d.min_cover,
                   help=f"skip objects whose mask covers less of the photo (default {d.min_cover})")
    g.add_argument("--max-cover", type=float, default=d.max_cover,
                   help=f"skip objects whose mask covers more of the photo (default {d.max_cover})")
    g.add_argument("--max-hole", type=float, default=d.max_hole,
                   help="habitat mode: do not use a photo as a place when its filled hole covers more of the frame "
                        f"(default {d.max_hole})")
    g.add_argument("--dilate", type=int, default=None, metavar="PX",
                   help="habitat mode: grow the hole by this many output px so no rim of the object survives "
                        "(default 2%% of --size)")
    g.add_argument("--inpainter", metavar="ONNX", help="habitat mode: fill with this inpainter (dali-abs contract) "
                                                       "instead of the built-in push-pull fill")
    g.add_argument("--object-scale", metavar="LO[,HI]", default=None,
                   help="shrink each object by a factor drawn from [LO, HI] (0 < LO <= HI <= 1) and put it anywhere "
                        "wholly inside the frame (a side its photo cuts it on stays on the frame's edge); default 1: "
                        "unchanged, where it was. 0.5 lets the place dominate the frame, as in Waterbirds (README)")
    g.add_argument("--class-names", metavar="A,B", help="names of the classes in label order (folders, preview)")
    add_column_arguments(parser)


def check_unused(args: argparse.Namespace) -> None:
    """Photo options given to the built-in mode are mistakes, not silently ignored."""
    d = PhotoConfig()
    defaults = {"split_fractions": ",".join(str(f) for f in d.split_fractions), "min_confidence": d.min_confidence,
                "min_cover": d.min_cover, "max_cover": d.max_cover, "max_hole": d.max_hole}
    given = [k for k in PHOTO_ONLY if getattr(args, k) is not None and getattr(args, k) != defaults.get(k)]
    from dali_abs.cli_args import columns_from_args
    from dali_abs.dataset import Columns

    cols, dcols = columns_from_args(args), Columns()
    given += [f"col_{f}" for f in ("id", "filename", "label", "split", "place") if getattr(cols, f) != getattr(dcols, f)]
    if given:
        raise PhotoBenchError(f"--{given[0].replace('_', '-')} belongs to building from photos: add --objects DATA "
                              "--masks MASKS, or leave it out for the built-in benchmark")


def config_from_args(args: argparse.Namespace) -> PhotoConfig:
    try:
        fractions = tuple(float(x) for x in args.split_fractions.split(","))
    except ValueError:
        raise PhotoBenchError(f"--split-fractions must be three numbers train,val,test (e.g. 0.5,0.2,0.3), got "
                              f"{args.split_fractions!r}") from None
    names = tuple(n.strip() for n in args.class_names.split(",")) if args.class_names else None
    d = PhotoConfig()
    scale = d.object_scale
    if args.object_scale is not None:
        try:
            parts = tuple(float(x) for x in args.object_scale.split(","))
        except ValueError:
            parts = ()
        if len(parts) not in (1, 2):
            raise PhotoBenchError(f"--object-scale must be LO or LO,HI (e.g. 0.5 or 0.4,0.6), got "
                                  f"{args.object_scale!r}")
        scale = (parts[0], parts[-1])
    return PhotoConfig(size=args.size or d.size, train=args.train, val=args.val, test=args.test,
                       split_fractions=fractions, rho=args.rho, seed=args.seed, min_confidence=args.min_confidence,
                       min_cover=args.min_cover, max_cover=args.max_cover, max_hole=args.max_hole, dilate=args.dilate,
                       inpainter=args.inpainter, object_scale=scale, class_names=names)


def run(args: argparse.Namespace) -> int:
    from dali_abs.cli_args import columns_from_args, print_json
    from dali_abs.photobench.build import make_photo_dataset

    if args.classes is not None:
        raise PhotoBenchError("--classes is for the built-in benchmark; with --objects the classes are those of DATA")
    if not args.masks:
        raise PhotoBenchError("--objects needs --masks MASKS: the folder of the object photos' masks "
                              "(grayscale, 255 = object)")
    cfg = config_from_args(args)
    if args.places:
        given = [o for o, v in (("--max-hole", args.max_hole != PhotoConfig().max_hole), ("--dilate", args.dilate),
                                ("--inpainter", args.inpainter)) if v]
        if given:
            raise PhotoBenchError(f"{given[0]} shapes the habitat fill, which --places replaces: leave out one "
                                  "of the two")
    t0 = time.perf_counter()
    info = make_photo_dataset(args.out, args.objects, args.masks, args.places, cfg, columns_from_args(args),
                              progress=not args.json)
    seconds = time.perf_counter() - t0
    if args.json:
        print_json({**info, "seconds": round(seconds, 1)})
        return 0
    counts = info["counts"]
    total = sum(c["composites"] for c in counts.values())
    print(f"wrote {total} composites ({cfg.size} px) to {info['out']} in {seconds:.0f} s "
          "(metadata.csv, images/, masks/, backgrounds/, dataset.json, preview.png)")
    places = info["places"]
    print(f"  places: {places['root'] if 'root' in places else places['from']}"
          + (f" ({places['fill']} fill; hole = {places['hole']})" if "fill" in places else ""))
    lo, hi = cfg.object_scale
    print("  objects: " + ("unchanged, where they were in their photos" if not cfg.moves_objects else
                           f"scaled by {lo if lo == hi else f'{lo}-{hi}'}, anywhere inside the frame (a side cut by "
                           "the photo's edge stays on the edge)"))
    if places.get("fill_visible"):
        print("  fill visible on " + ", ".join(f"{v['mean']:.0%} ({s})" for s, v in places["fill_visible"].items())
              + " of the frame on average (a place's filled hole beside the object)")
    for split, c in counts.items():
        groups = ", ".join(f"{k} {v}" for k, v in c["groups"].items())
        note = f" of {c['asked']} asked (balanced)" if c["asked"] is not None and c["asked"] != c["composites"] else ""
        print(f"  {split}: {c['composites']}{note}: {groups}")
    sk = info["skipped"]
    print(f"  skipped {sk['objects']} object photo(s) and {sk['places']} place photo(s) with mask thresholds "
          f"--min-confidence {cfg.min_confidence}, --min-cover {cfg.min_cover}, --max-cover {cfg.max_cover}"
          + (f", --max-hole {cfg.max_hole}" if "fill" in places else "") + "; each listed with its reason in "
          "dataset.json")
    for kind, n in sk["by_kind"].items():
        print(f"    {n} {kind}")
    return 0
