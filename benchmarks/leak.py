"""Foreground leak: how much of the partner's own object shows in a composite's background.

    python benchmarks/leak.py [--data DATA] [--grid 16] [--input-size 128] [--batches 10] [--picture docs/leak.png]

Default: the built-in benchmark (generated here, 128 px), its cache built from the ground-truth
masks (``precompute --masks``, push-pull fill, default fill threshold), composited with
``SwapConfig()`` on the images' own 128 px canvas. For every swapped composite,
:func:`dali_abs.swap.leak.sources` says what each pixel shows (the same records and code path as
the loader, marker colours instead of pixels); the ground truth of "the partner's object" is the
partner's pixel mask. Prints the mean, 95th percentile and maximum over composites of the
fraction of background pixels that show the partner's object (target: mean < 0.5 %), and of
those that show the stored placeholder of box cells outside the loose mask (target: 0), and
writes a picture: composites with the leaking pixels marked.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dali_abs.cache.format import open_cache
from dali_abs.cache.precompute import GroundTruthMasks, PrecomputeConfig, precompute
from dali_abs.dataset import load_dataset
from dali_abs.files import read_mask, read_rgb
from dali_abs.labels import find_mask_file
from dali_abs.models import inpainter as inet
from dali_abs.swap import AugmentConfig, SwapConfig, batch, composite, sample_params
from dali_abs.swap.leak import GHOST, PLACEHOLDER, fractions, sources
from dali_abs.synthetic import SyntheticConfig, make_dataset


def measure(cache, ds, masks_dir: Path, cfg: SwapConfig, batches: int, batch_size: int = 64, seed: int = 0,
            size: int | None = None, augment: AugmentConfig | None = None):
    """Leak fractions of ``batches`` batches of the cache's rows (shuffled), and the first batch's pictures."""
    by_id = ds.by_id()
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(cache))
    out = {"leak": [], "placeholder": [], "fill": []}
    first = None
    for b in range(batches):
        idx = rows[b * batch_size:(b + 1) * batch_size]
        if len(idx) < 2:
            break
        images = [read_rgb(ds.root / cache.relpaths[i]) for i in idx]
        objects = [read_mask(find_mask_file(masks_dir, by_id[cache.ids[i]])) for i in idx]
        soft = np.stack([cache.mask(int(i)) for i in idx])
        fills = [cache.fill(int(i)) for i in idx]
        tiles = [f if f is not None else np.zeros((1, 1, 3), np.uint8) for f in fills]
        box_cells = cache.boxes[idx]
        placeholders = [cache.placeholder(int(i), t.shape[:2]) if f is not None else np.zeros((1, 1), bool)
                        for i, t, f in zip(idx, tiles, fills)]
        hw = images[0].shape[:2] if size is None else (size, size)
        params = sample_params(cache.labels[idx], rng, cfg, image_size=hw, soft=soft, augment=augment)
        code = sources(objects, soft, placeholders, box_cells, params, cfg, hw)
        f = fractions(code)
        swapped = params["swap"].astype(bool)
        for k in out:
            out[k] += f[k][swapped].tolist()
        if first is None:
            boxes = (box_cells / np.float32(cache.grid)).astype(np.float32)
            real = composite(batch(images, soft, tiles, boxes, params, cfg, hw))
            first = (real, code, [images[j] for j in params["partner"]], [objects[j] for j in params["partner"]])
    return {k: np.asarray(v) for k, v in out.items()}, first


def picture(path: Path, first, count: int = 6) -> str:
    """Rows: the partner (its object tinted red), the composite, the composite with every pixel
    that shows the partner's object in pure red (placeholder pixels would be magenta); the six
    composites of the first batch that leak most."""
    from dali_abs.preview import mask_overlay, save_grid

    real, code, partners, objects = first
    leaks = (code == GHOST).sum((1, 2)) + (code == PLACEHOLDER).sum((1, 2))
    order = np.argsort(-leaks)[:count]
    rows = []
    for k in order:
        marked = real[k].copy()
        marked[code[k] == GHOST] = (255, 0, 0)
        marked[code[k] == PLACEHOLDER] = (255, 0, 255)
        rows.append([mask_overlay(partners[k], objects[k], color=(255, 40, 40)), real[k], marked])
    tile = max(160, real.shape[1])
    return save_grid(path, list(map(list, zip(*rows))), tile=tile)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="a dataset with a masks/ folder (default: the built-in benchmark, generated)")
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--input-size", type=int, default=128, help="work size of the fills (default 128)")
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--tight", type=float, default=0.5)
    ap.add_argument("--loose", type=float, default=0.1)
    ap.add_argument("--size", type=int, help="canvas side (default: the images' own size, no crop); with it, "
                                              "the loader's random resized crop and flip too")
    ap.add_argument("--picture", default="leak.png")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = Path(args.data) if args.data else make_dataset(tmp / "data", SyntheticConfig(), progress=False)
        ds = load_dataset(data)
        fill = tmp / "fill.onnx"
        inet.export_onnx(inet.build("pushpull"), fill, "pushpull")
        precompute(ds, None, fill, tmp / "cache", PrecomputeConfig(device="cpu"), progress=False,
                   masks=GroundTruthMasks(data / "masks", grid=args.grid, input_size=args.input_size))
        cache = open_cache(tmp / "cache")
        cfg = SwapConfig(tight=args.tight, loose=args.loose)
        res, first = measure(cache, ds, data / "masks", cfg, args.batches, size=args.size,
                             augment=AugmentConfig() if args.size else None)
        pic = picture(Path(args.picture), first)
    canvas = f"{args.size} px with random resized crops and flips" if args.size else "the images' own size"
    print(f"{len(res['leak'])} swapped composites, grid {args.grid}, fills at {args.input_size} px, "
          f"tight {args.tight}, loose {args.loose}, canvas: {canvas} ({time.perf_counter() - t0:.0f} s)")
    print(f"{'share of background pixels':<34}{'mean':>9}{'p95':>9}{'max':>9}")
    summary = {}
    for name in ("leak", "placeholder", "fill"):
        v = res[name]
        summary[name] = {"mean": float(v.mean()), "p95": float(np.percentile(v, 95)), "max": float(v.max())}
        label = {"leak": "showing the partner's object", "placeholder": "showing the placeholder",
                 "fill": "filled"}[name]
        print(f"{label:<34}{100 * v.mean():>8.2f}%{100 * np.percentile(v, 95):>8.2f}%{100 * v.max():>8.2f}%")
    print(f"picture: {pic}")
    print("targets: leak mean < 0.5 %, placeholder 0")
    print(json.dumps({"benchmark": "leak", "size": args.size, "grid": args.grid, "input_size": args.input_size, "tight": args.tight,
                      "loose": args.loose, "composites": len(res["leak"]), **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
