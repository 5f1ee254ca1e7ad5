"""``dali-abs precompute`` and ``dali-abs cache merge | verify | info``: the cache stage."""

from __future__ import annotations

import argparse

from dali_abs.cli_args import add_dataset_arguments, add_json_argument, dataset_from_args, print_json


def _precompute(args: argparse.Namespace) -> int:
    import sys

    from dali_abs.cache.format import CacheError
    from dali_abs.cache.precompute import DEFAULT_MASK_GRID, GroundTruthMasks, PrecomputeConfig, parse_shard, precompute
    from dali_abs.devices import pin_local_gpu

    masks = None
    if args.masks is not None:
        masks = GroundTruthMasks(args.masks, grid=args.grid if args.grid is not None else DEFAULT_MASK_GRID,
                                 input_size=args.input_size)
    elif args.grid is not None or args.input_size is not None:
        given = " and ".join(o for o, v in (("--grid", args.grid), ("--input-size", args.input_size)) if v is not None)
        raise CacheError(f"{given} go with --masks only: with --segmenter the grid and input size are those of the "
                         f"model ({args.segmenter}). Drop {given}, or use --masks DIR instead of --segmenter.")
    shard = parse_shard(args.shard)
    pin_local_gpu()  # torchrun / srun: one GPU per process, before DALI or onnxruntime start CUDA
    ds = dataset_from_args(args)
    cfg = PrecomputeConfig(chunk_size=args.chunk_size, batch_size=args.batch_size, fill_threshold=args.fill_threshold,
                           quality=args.quality, max_pixels=args.max_pixels, device=args.device)
    res = precompute(ds, args.segmenter, args.inpainter, args.out, cfg, shard=shard,
                     progress=not args.json and sys.stderr.isatty(), merge_when_done=not args.no_merge, masks=masks)
    if args.json:
        print_json(res)
    else:
        rate = f", {res['images_per_s']} img/s" if res["images_per_s"] else ""
        print(f"shard {res['shard']}: {res['processed']} images processed ({res['skipped_now']} skipped){rate}, "
              f"{res['already_done']} already done")
        print(f"  cache complete: {res['manifest']} ({res['counts']})" if res["complete"] else
              "  cache not complete yet: other shards pending (then `dali-abs cache merge`)")
        _print_thresholds(res["thresholds"])
    return 0


def _merge(args: argparse.Namespace) -> int:
    from dali_abs.cache.precompute import merge

    m = merge(args.cache, args.sources)
    res = {"cache": str(args.cache), "counts": m["counts"], "bytes": m["bytes"]}
    print_json(res) if args.json else print(f"merged {m['chunks']} chunks into {args.cache}/manifest.json: "
                                            f"{m['counts']}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from dali_abs.cache.verify import verify

    ds = dataset_from_args(args) if args.data else None
    res = verify(args.cache, ds, decode=not args.no_decode)
    if args.json:
        print_json(res)
    else:
        print(f"{args.cache}: {'OK' if res['ok'] else 'PROBLEMS'}; {res.get('counts', 'no counts')}")
        for p in res["problems"][:20]:
            print(f"  {p}")
        if "stale" in res:
            st = res["stale"]
            print(f"  against {args.data}: {len(st['changed'])} changed, {len(st['added'])} added, "
                  f"{len(st['removed'])} removed")
    return 0 if res["ok"] else 1


def _info(args: argparse.Namespace) -> int:
    from dali_abs.cache.verify import info

    res = info(args.cache)
    if args.json:
        print_json(res)
    else:
        b, c = res["bytes"], res["counts"]
        print(f"{args.cache}: {c['cached']} images cached, {c['skipped']} skipped, grid {res['grid']}, "
              f"work size {res['work_size']} px")
        print(f"  {b['total']} bytes, {b['per_image']} B/image ({b['ratio_to_source']} x the source images)")
        for name, mdl in res["models"].items():
            print(f"  {name}: {mdl['path']} sha256 {mdl['sha256'][:16]}")
        _print_thresholds(res["thresholds"])
        for s in res["skipped"]:
            print(f"  skipped {s['path']}: {s['reason']}")
    return 0


def _print_thresholds(recorded: dict) -> None:
    from dali_abs.cache.format import manifest_thresholds

    th = manifest_thresholds({"thresholds": recorded})
    print(f"  tight threshold {th.tight} (cut-out; the loader's default): {th.tight_source}")
    print(f"  fill threshold {th.loose} (loose mask, filled): {th.loose_source}")


def _dataset_columns_optional(p: argparse.ArgumentParser) -> None:
    """--data plus the metadata.csv column options (same names as for the other commands)."""
    tmp = argparse.ArgumentParser(add_help=False)
    add_dataset_arguments(tmp)
    p.add_argument("--data", help="dataset folder: also report images changed, added or removed since the precompute")
    g = p.add_argument_group("metadata.csv columns")
    for action in tmp._actions:
        if action.option_strings and action.nargs == 0:  # a flag (--allow-outside)
            g.add_argument(*action.option_strings, action="store_true", help=action.help)
        elif action.option_strings:
            g.add_argument(*action.option_strings, default=action.default, help=action.help)


def register(subparsers) -> None:
    from dali_abs.cache.format import DEFAULT_FILL_THRESHOLD
    from dali_abs.cache.precompute import DEFAULT_MASK_GRID, PrecomputeConfig

    d = PrecomputeConfig()
    p = subparsers.add_parser(
        "precompute", help="soft patch masks and clean-background fills for a whole dataset",
        description="Decode DATA with DALI, run the segmenter (or read ground-truth masks: --masks) and the "
                    "inpainter with onnxruntime, and write the cache to OUT. Resumable (rerun the same command after "
                    "a crash), sharded (--shard i/n, or RANK/WORLD_SIZE under torchrun). The dataset is never "
                    "written to.")
    add_dataset_arguments(p)
    g = p.add_argument_group("soft masks (--segmenter or --masks, exactly one)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--segmenter", help="segmenter ONNX file: its grid and input size are used")
    src.add_argument("--masks", metavar="DIR",
                     help="ground-truth pixel masks instead of a segmenter: grayscale, 255 = foreground, named "
                          "<img_id>.png, <img_filename>.png or <stem>.png; a patch's soft value is its fraction of "
                          "foreground pixels. Images without a readable mask are skipped and listed with the reason")
    g.add_argument("--grid", type=int, default=None,
                   help=f"with --masks: patches per side R (default {DEFAULT_MASK_GRID})")
    g.add_argument("--input-size", type=int, default=None,
                   help="with --masks: work size S in px, a multiple of the grid, that images are resized to for the "
                        "inpainter (default as `segmenter train`: 224 for a 16 x 16 grid, else 16 px per patch)")
    p.add_argument("--inpainter", required=True, help="inpainter ONNX file")
    p.add_argument("--out", required=True, help="cache folder (created; rerun with the same folder to resume)")
    p.add_argument("--shard", default=None, help="i/n: process chunks k with k %% n == i (default: RANK/WORLD_SIZE "
                                                 "when set, e.g. by torchrun, else 0/1)")
    p.add_argument("--chunk-size", type=int, default=d.chunk_size,
                   help=f"images per chunk file, the unit of resumption and sharding (default {d.chunk_size})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"images per batch (default {d.batch_size})")
    p.add_argument("--fill-threshold", type=float, default=None,
                   help="fill cells whose foreground probability is above this (loose mask; default: the loose "
                        "threshold the segmenter records, chosen on its validation images; "
                        f"{DEFAULT_FILL_THRESHOLD} with --masks or for a segmenter that records none)")
    p.add_argument("--quality", type=int, default=d.quality, help=f"JPEG quality of the fills (default {d.quality})")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help=f"skip (and report) images with more pixels (default {d.max_pixels})")
    p.add_argument("--device", default=d.device, choices=("auto", "cpu", "cuda"), help="default auto")
    p.add_argument("--no-merge", action="store_true", help="do not write manifest.json even when all chunks are done")
    add_json_argument(p)
    p.set_defaults(func=_precompute)

    cache = subparsers.add_parser("cache", help="precompute cache tools").add_subparsers(
        dest="cache_command", required=True, metavar="SUB")
    p = cache.add_parser("merge", help="join the shards' chunks into manifest.json",
                         description="Check that every chunk is finished and write CACHE/manifest.json. SOURCES: "
                                     "other cache folders (e.g. per node) whose chunks are copied in first.")
    p.add_argument("cache", metavar="CACHE")
    p.add_argument("sources", metavar="SOURCES", nargs="*", help="other cache folders of the same run")
    add_json_argument(p)
    p.set_defaults(func=_merge)

    p = cache.add_parser("verify", help="check counts, hashes, shapes, entries and staleness",
                         description="Verify a cache; exit status 1 on any problem or stale image.")
    p.add_argument("cache", metavar="CACHE")
    _dataset_columns_optional(p)
    p.add_argument("--no-decode", action="store_true", help="do not decode the fills (faster)")
    add_json_argument(p)
    p.set_defaults(func=_verify)

    p = cache.add_parser("info", help="sizes, bytes per image, grid, models, skipped list")
    p.add_argument("cache", metavar="CACHE")
    add_json_argument(p)
    p.set_defaults(func=_info)
