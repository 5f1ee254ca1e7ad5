"""Segmenter benchmark: how well a few labels teach the patch segmenter, also on unseen groups.

On the built-in benchmark (default settings: 128 px, 2 classes x 2 places, rho = 1.0, so
no training image breaks the correlation) this script, for each label count N:

1. derives 8 x 8 patch labels from the ground-truth masks (coverage > 0.25) for N training
   images drawn from the **majority groups only** (as the paper labels),
2. trains the default segmenter (``train_segmenter``, 80/20 split of the N images),
3. scores it on the test split (balanced over all 4 groups) against the masks: patch IoU
   overall, on the majority groups, on the minority groups (object on the other class's
   background, never seen in labelling), and pixel IoU.

Target: with N = 200, test patch IoU >= 0.85 and minority IoU within 0.05 of majority IoU.

    python benchmarks/segmenter.py                     # generates the dataset in a temp dir
    python benchmarks/segmenter.py --data DIR --counts 200 --epochs 80

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
    p.add_argument("--counts", default="50,100,200", help="label counts N, comma-separated (default 50,100,200)")
    p.add_argument("--grid", type=int, default=8, help="patch grid R (default 8)")
    p.add_argument("--input-size", type=int, default=128, help="segmenter input side in px (default 128)")
    p.add_argument("--threshold", type=float, default=0.25, help="label coverage threshold (default 0.25)")
    p.add_argument("--epochs", type=int, default=80, help="maximum epochs per run (default 80)")
    p.add_argument("--patience", type=int, default=25, help="early-stopping patience in epochs (default 25)")
    p.add_argument("--seed", type=int, default=0, help="seed of the label draw and of training (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", help="folder for the models (default: a temp dir)")
    args = p.parse_args(argv)

    from dali_abs.dataset import load_dataset
    from dali_abs.labels import labels_from_masks
    from dali_abs.segmenter.evaluate import evaluate
    from dali_abs.segmenter.train import train_segmenter
    from dali_abs.synthetic import SyntheticConfig, make_dataset

    tmp = tempfile.TemporaryDirectory(prefix="dali-abs-segbench-")
    data = Path(args.data) if args.data else make_dataset(Path(tmp.name) / "data", SyntheticConfig(), progress=True)
    out_dir = Path(args.out) if args.out else Path(tmp.name) / "models"
    ds = load_dataset(data)
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    rows = []
    for n in counts:
        t0 = time.perf_counter()
        labels = labels_from_masks(ds, data / "masks", grid=args.grid, threshold=args.threshold, count=n,
                                   majority_only=True, seed=args.seed, progress=False)
        onnx_path = out_dir / f"seg-{n}.onnx"
        fit = train_segmenter(ds, labels, onnx_path, input_size=args.input_size, epochs=args.epochs,
                              patience=args.patience, seed=args.seed, threads=args.threads, progress=True)
        res = evaluate(ds, onnx_path, gt_masks=data / "masks", split="test", progress=False)["masks"]
        maj, mino = res["majority"]["patch_iou"], res["minority"]["patch_iou"]
        rows.append({"labels": n, "test_patch_iou": res["overall"]["patch_iou"],
                     "test_balanced_accuracy": res["overall"]["balanced_accuracy"],
                     "majority_patch_iou": maj, "minority_patch_iou": mino, "gap": maj - mino,
                     "test_pixel_iou": res["overall"]["pixel_iou"], "val_balanced_accuracy": fit["val_balanced_accuracy"],
                     "epochs_run": fit["epochs_run"], "best_epoch": fit["best_epoch"],
                     "train_seconds": fit["seconds"], "seconds": round(time.perf_counter() - t0, 1),
                     "groups": {g: v["patch_iou"] for g, v in res.get("groups", {}).items()}})
    print()
    print(f"segmenter benchmark: {data} (test split, {args.input_size} px, {args.grid} x {args.grid} grid, "
          f"labels from majority groups only)")
    print(f"{'labels':>6} {'patch IoU':>9} {'bal acc':>8} {'majority':>9} {'minority':>9} {'gap':>6} "
          f"{'pixel IoU':>9} {'epochs':>7} {'train s':>8}")
    for r in rows:
        print(f"{r['labels']:>6} {r['test_patch_iou']:>9.3f} {r['test_balanced_accuracy']:>8.3f} "
              f"{r['majority_patch_iou']:>9.3f} {r['minority_patch_iou']:>9.3f} {r['gap']:>+6.3f} "
              f"{r['test_pixel_iou']:>9.3f} {r['epochs_run']:>7} {r['train_seconds']:>8.1f}")
    target = next((r for r in rows if r["labels"] == 200), None)
    verdict = None
    if target is not None:
        verdict = target["test_patch_iou"] >= 0.85 and abs(target["gap"]) <= 0.05
        print(f"target (200 labels: patch IoU >= 0.85, |majority - minority| <= 0.05): "
              f"{'met' if verdict else 'NOT met'}")
    print(json.dumps({"benchmark": "segmenter", "grid": args.grid, "input_size": args.input_size,
                      "threshold": args.threshold, "seed": args.seed, "target_met": verdict, "runs": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
