"""Is the built-in benchmark spurious? ERM on rho=1.0 vs the same CNN on group-balanced data.

    python benchmarks/dataset_check.py [--size 64] [--epochs 30] [--seeds 0 1 2]

Generates the default dataset twice (rho = 1.0, and rho = 1/K: every group equally often in
train), trains models.classifier.SmallCNN from scratch on each train split, and prints the
worst-group and average test accuracy of both. Targets: ERM worst-group <= 0.30, oracle >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from dali_abs.dataset import load_dataset
from dali_abs.models.classifier import SmallCNN
from dali_abs.synthetic import SyntheticConfig, make_dataset
from dali_abs.training import evaluate, fit, load_images, tensor_batches


def run(data: Path, size: int, epochs: int, seed: int) -> dict:
    ds = load_dataset(data)
    train = ds.split("train")
    x = load_images(train, size)
    y = torch.tensor([s.label for s in train])
    torch.manual_seed(seed)
    model = SmallCNN(ds.n_classes)
    fit(model, tensor_batches(x, y, batch_size=64, seed=seed), epochs)
    return evaluate(model, ds, "test", size)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="classifier input side in px (default 64)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--classes", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    cfg = SyntheticConfig(classes=args.classes)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        sets = {"erm (rho=1.0)": replace(cfg, rho=1.0), f"oracle (rho=1/{cfg.classes})": replace(cfg, rho=1.0 / cfg.classes)}
        for name, c in sets.items():
            data = make_dataset(Path(tmp) / name.split()[0], c, progress=False)
            results = []
            for seed in args.seeds:
                t0 = time.perf_counter()
                r = run(data, args.size, args.epochs, seed)
                r["seconds"] = round(time.perf_counter() - t0, 1)
                results.append(r)
            rows[name] = results
    print(f"{'training set':<22}{'worst-group':>14}{'average':>12}   per seed (worst / avg)")
    summary = {}
    for name, results in rows.items():
        wg = torch.tensor([r["worst_group_acc"] for r in results])
        avg = torch.tensor([r["avg_acc"] for r in results])
        per = ", ".join(f"{r['worst_group_acc']:.3f}/{r['avg_acc']:.3f}" for r in results)
        print(f"{name:<22}{wg.mean():>9.3f}±{wg.std(unbiased=False):.3f}{avg.mean():>8.3f}±{avg.std(unbiased=False):.3f}   {per}")
        summary[name.split()[0]] = {"worst_group_acc_mean": float(wg.mean()), "avg_acc_mean": float(avg.mean()),
                                    "runs": results}
    ok = summary["erm"]["worst_group_acc_mean"] <= 0.30 and summary["oracle"]["worst_group_acc_mean"] >= 0.95
    print(f"targets (ERM worst-group <= 0.30, oracle worst-group >= 0.95): {'met' if ok else 'NOT met'}")
    print(json.dumps({"benchmark": "dataset_check", "size": args.size, "epochs": args.epochs, "seeds": args.seeds,
                      "targets_met": ok, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
