"""Inpainter benchmark: mean colour vs push-pull vs the learned fill, against the true backgrounds.

On the built-in benchmark (default settings: 128 px, 2 classes x 2 places; train 1200,
test 400) this script:

1. exports the two parameter-free fills as ONNX (``mean``: mean colour of the unmasked
   pixels, a graph of two reductions; ``pushpull``: the default fill),
2. trains the learned fill on the train split. Its background regions come from
   ``--regions segmenter`` (default): a patch segmenter trained here on 200 majority-group
   images' 8 x 8 patch labels (derived from the masks, as ``benchmarks/segmenter.py`` does),
   or ``--regions gt``: the ground-truth masks,
3. scores every fill on the test split inside the ground-truth masks dilated by ``--dilate``
   px (as loose as a segmenter's loose mask): MAE (0..1 scale), PSNR (dB), texture ratio
   (1.0 = right, a blur is near 0), all through onnxruntime,
4. times each fill through onnxruntime on this machine at 224 x 224 (batches of 16,
   random images, a disk hole of ~20 % of the pixels).

Targets: learned MAE <= push-pull MAE, and learned texture ratio closer to 1 than push-pull's.

    python benchmarks/inpainter.py                    # generates the dataset in a temp dir
    python benchmarks/inpainter.py --data DIR --regions gt --epochs 10

Prints a table and, last, one JSON line with every number.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="built-in benchmark folder (default: generate the default one in a temp dir)")
    p.add_argument("--regions", choices=("segmenter", "gt"), default="segmenter",
                   help="background regions for training the learned fill (default segmenter)")
    p.add_argument("--segmenter", help="use this segmenter ONNX instead of training one")
    p.add_argument("--labels", type=int, default=200, help="majority-group images labelled for the segmenter (200)")
    p.add_argument("--seg-epochs", type=int, default=40, help="segmenter epochs (default 40)")
    p.add_argument("--epochs", type=int, default=10, help="learned-fill epochs (default 10)")
    p.add_argument("--dilate", type=int, default=2, help="px the test masks are dilated by (default 2)")
    p.add_argument("--speed-seconds", type=float, default=4.0, help="seconds timed per fill (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", help="folder for the models (default: a temp dir)")
    args = p.parse_args(argv)

    from dali_abs.dataset import load_dataset
    from dali_abs.inpainter.evaluate import evaluate, throughput
    from dali_abs.inpainter.train import train_from_dataset
    from dali_abs.models import inpainter as net
    from dali_abs.synthetic import SyntheticConfig, make_dataset

    t_start = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="dali-abs-inpbench-")
    data = Path(args.data) if args.data else make_dataset(Path(tmp.name) / "data", SyntheticConfig(), progress=True)
    out_dir = Path(args.out) if args.out else Path(tmp.name) / "models"
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(data)
    models = {k: net.export_onnx(net.build(k), out_dir / f"{k}.onnx", k) for k in ("mean", "pushpull")}

    info: dict = {"data": str(data), "regions": args.regions}
    seg_path = None
    if args.regions == "segmenter":
        seg_path = Path(args.segmenter) if args.segmenter else None
        if seg_path is None:
            from dali_abs.labels import labels_from_masks
            from dali_abs.segmenter.train import train_segmenter

            t0 = time.perf_counter()
            labels = labels_from_masks(ds, data / "masks", grid=8, threshold=0.25, count=args.labels,
                                       majority_only=True, seed=args.seed, progress=False)
            seg_path = out_dir / "segmenter.onnx"
            fit = train_segmenter(ds, labels, seg_path, input_size=128, epochs=args.seg_epochs, seed=args.seed,
                                  threads=args.threads, progress=True)
            info["segmenter"] = {"labels": len(labels), "val_balanced_accuracy": fit.get("val_balanced_accuracy"),
                                 "val_patch_iou": fit.get("val_patch_iou"), "seconds": round(time.perf_counter() - t0, 1)}
        info["segmenter_path"] = str(seg_path)
    fit = train_from_dataset(ds, out_dir / "learned.onnx", segmenter=seg_path, gt_masks=seg_path is None,
                             epochs=args.epochs, seed=args.seed, threads=args.threads, progress=True)
    models["learned"] = Path(fit["out"])
    info["learned_training"] = {k: v for k, v in fit.items() if k != "history"}

    rows = {}
    for name, path in models.items():
        r = evaluate(ds, path, split="test", dilate=args.dilate, progress=False)
        r["images_per_s_224"] = throughput(path, size=224, batch_size=16, seconds=args.speed_seconds)["images_per_s"]
        rows[name] = r
    pp, lf = rows["pushpull"], rows["learned"]
    targets = {"learned_mae_le_pushpull": lf["mae"] <= pp["mae"],
               "learned_texture_closer_to_1": abs(1 - lf["texture_ratio"]) < abs(1 - pp["texture_ratio"])}

    n_test = rows["pushpull"]["images"]
    print(f"\ninpainter benchmark: {n_test} test images of {data}, holes = GT masks dilated {args.dilate} px "
          f"({pp['hole_fraction']:.1%} of pixels); learned fill trained on {fit['train_images']} images "
          f"({fit['regions']}), {fit['epochs']} epochs, {fit['seconds']:.0f} s")
    print(f"{'fill':<10} {'MAE':>8} {'MAE/255':>8} {'PSNR dB':>8} {'texture':>8} {'img/s@224':>10}")
    for name, r in rows.items():
        print(f"{name:<10} {r['mae']:>8.4f} {r['mae'] * 255:>8.2f} {r['psnr']:>8.2f} {r['texture_ratio']:>8.3f} "
              f"{r['images_per_s_224']:>10.1f}")
    print("targets: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in targets.items()))
    summary = {"fills": {k: {m: r[m] for m in ("mae", "psnr", "texture_ratio", "images_per_s_224", "hole_fraction",
                                                "images")} for k, r in rows.items()},
               "targets": targets, "dilate": args.dilate, **info,
               "seconds": round(time.perf_counter() - t_start, 1)}
    print(json.dumps(summary))
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
