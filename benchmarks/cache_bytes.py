"""Cache bytes against source bytes, with default settings, on the built-in benchmark and cub-birds-300.

    python benchmarks/cache_bytes.py [--epochs 10] [--skip-segmenter]

For each dataset (the built-in benchmark at its default 128 px, generated here, and
../shared/data/cub-birds-300 when present), ``precompute`` with its defaults (16 x 16 grid at
the default 224 px work size, push-pull fill, JPEG q90, the fill threshold the mask source
records: 0.1 for ground-truth masks, the one chosen on its validation images for a segmenter)
twice: with the ground-truth masks (``--masks``) and with a segmenter trained ``--epochs``
epochs on 200 majority-group patch labels (``dali-abs segmenter train`` defaults otherwise). Prints what
``dali-abs cache info`` prints: total bytes per image and the ratio to the source images, and
the parts (fills, masks, records). Goal: <= 0.3 x.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from dali_abs.cache.format import open_cache
from dali_abs.cache.precompute import GroundTruthMasks, PrecomputeConfig, precompute
from dali_abs.dataset import Columns, load_dataset
from dali_abs.labels import labels_from_masks
from dali_abs.models import inpainter as inet
from dali_abs.synthetic import SyntheticConfig, make_dataset

CUB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cub-birds-300"


def datasets(tmp: Path, cub: Path) -> dict[str, tuple[Path, Columns, Path]]:
    """name -> (root, columns, masks folder as GroundTruthMasks finds them)."""
    out = {}
    data = make_dataset(tmp / "builtin", SyntheticConfig(), progress=False)
    out["built-in (128 px)"] = (data, Columns(), data / "masks")
    if cub.is_dir():
        # cub's masks sit at masks/<species>/<n>.png for images/<species>/<n>.jpg: a folder whose
        # images/ is cub's masks/ finds them as <img_filename>.png (nothing is written into cub)
        view = tmp / "cub-masks"
        view.mkdir()
        (view / "images").symlink_to(cub / "masks")
        out["cub-birds-300 (227 px)"] = (cub, Columns(label="y_waterbird", split="split_flag"), view)
    return out


def row(cache_dir: Path) -> dict:
    b = open_cache(cache_dir).manifest["bytes"]
    n = open_cache(cache_dir).manifest["counts"]["cached"]
    return {"per_image": b["per_image"], "ratio": b["ratio_to_source"], "source_per_image": b["source_per_image"],
            "fills_per_image": round(b["fills"] / n, 1), "masks_per_image": round(b["masks"] / n, 1),
            "records_per_image": round(b["records"] / n, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10, help="segmenter epochs (default 10)")
    ap.add_argument("--skip-segmenter", action="store_true", help="ground-truth masks only")
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality of the fills (default 90, precompute's)")
    ap.add_argument("--cub", type=Path, default=CUB, help="the cub-birds-300 folder (default: ../shared/data/cub-birds-300)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fill = tmp / "fill.onnx"
        inet.export_onnx(inet.build("pushpull"), fill, "pushpull")
        for name, (root, cols, masks) in datasets(tmp, args.cub).items():
            ds = load_dataset(root, cols)
            k = len(results)
            cache = tmp / f"gt-{k}"
            precompute(ds, None, fill, cache, PrecomputeConfig(device="cpu", quality=args.quality),
                       progress=False, masks=GroundTruthMasks(masks))
            results[f"{name}, ground-truth masks"] = row(cache)
            if not args.skip_segmenter:
                from dali_abs.segmenter.train import train_segmenter

                labels = labels_from_masks(ds, masks, grid=16, count=min(200, len(ds.split("train")) // 2),
                                           majority_only=ds.has_groups, progress=False)
                seg = tmp / f"seg-{k}.onnx"
                train_segmenter(ds, labels, seg, epochs=args.epochs, seed=0, progress=False)
                cache = tmp / f"seg-{k}"
                precompute(ds, seg, fill, cache, PrecomputeConfig(device="cpu", quality=args.quality), progress=False)
                results[f"{name}, segmenter ({args.epochs} epochs)"] = row(cache)
    print(f"\n{f'cache (defaults: 16 x 16 at 224 px, push-pull, q{args.quality})':<58}{'B/img':>8}{'x source':>10}"
          f"{'fills':>8}{'masks':>7}{'records':>9}")
    for name, r in results.items():
        print(f"{name:<58}{r['per_image']:>8.0f}{r['ratio']:>10.3f}{r['fills_per_image']:>8.0f}"
              f"{r['masks_per_image']:>7.0f}{r['records_per_image']:>9.0f}")
    print(f"goal: <= 0.3 x ({time.perf_counter() - t0:.0f} s)")
    print(json.dumps({"benchmark": "cache_bytes", "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
