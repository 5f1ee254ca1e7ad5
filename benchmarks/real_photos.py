"""Real photographs: the whole chain on a Waterbirds-style benchmark built from cub-birds-300.

    python benchmarks/real_photos.py --data ../shared/data/cub-birds-300 [--seeds 0 1 2]
        [--pictures docs] [--only segmenter|classifier] [--device cpu|gpu] [--out DIR]
        [--sweep-tight 0.6 0.7 0.9 0.93]

1. **Data.** ``make_photo_dataset`` in habitat mode (each photo's own background, bird filled
   out, is a place of its class) at object scale 0.5 (the birds shrunk to half size at a random
   position: the place dominates the frame, as in Waterbirds), 900 train composites at
   rho = 1.0 (no train image breaks the correlation), 56 val and 400 test (balanced over the 4
   groups); the same command at rho = 0.5 gives the oracle's group-balanced train and the
   identical test images (checked).
2. **Segmenter.** Patch labels from the composites' masks (``masks/``: the pasted alpha;
   coverage > 0.25 on the 16 x 16 grid) for 50 / 100 / 200 train composites drawn from the
   majority groups only (with rho = 1 every train composite is one), then ``train_segmenter``
   from scratch (the PatchCNN at 224 px) and with the frozen ImageNet EfficientNet-Lite0
   (``backbone="lite0"``), and the patch IoU on the 400 test composites against their masks,
   per group. The label draw and the training use the run's seed. Target (issue 13): at 200
   labels, lite0 >= 0.75 and >= scratch + 0.10.
3. **Classifier.** Every model is trained through our DALI loader (``create_loader``; CPU
   unless ``--device gpu``): ERM; dali-abs with the lite0 segmenter of 200 labels (seed 0) and
   cached push-pull fills, at the thresholds it chose (``SwapConfig()``) and at the hand-picked
   tight 0.8 / loose 0.1 (issue 13 part 4); dali-abs with the given masks (``precompute
   --masks``, the cuts fixed at 0.5 / 0.1); and the oracle (ERM on the group-balanced train).
   The classifier is a linear head on frozen ImageNet Lite0 features (global average pool of
   the last layer, 1280-d, computed by onnxruntime): the loader's batches of ``--views``
   epochs (each epoch new crops, flips and, for dali-abs, new swaps) go through the frozen
   backbone once, and the head (standardised features, one linear layer) trains on those
   features with ``dali_abs.training.fit``. Worst-group and average test accuracy and the
   BG-gap from before the audit (``robustness.bg_gap_loaders``: originals minus other-class
   backgrounds, not the audit's mixed_same - mixed_rand), over ``--seeds`` (each seed: the
   loader's swaps, crops and order, and the head's initialisation), mean and population sd.
   Targets (issue 13): ERM worst-group at least 20 points under the oracle's, and dali-abs
   with learned masks recovering at least 60 % of that gap (means over seeds).
   ``--sweep-tight T ...`` adds rows with the learned masks cut at each tight T (the cache's
   chosen fill), to see how the cut matters; they are kept out of the 60 % target lines.

Settings were fixed before the test split was looked at or chosen on val (see README).
``--pictures DIR`` writes ``real-photos-masks.png`` (test composites, their masks, the patch
labels, the segmenter's prediction, the clean background from the cache) and
``real-photos-swapped.png`` (swapped training samples as the loader draws them). On a GPU
(``--device gpu``): the segmenters train on CUDA, precompute and the features run on
onnxruntime's CUDA provider, the loader composites on the GPU; ``--train``, ``--test``,
``--views``, ``--head-epochs`` and the seeds scale the run up.

Prints a table per part and, last, one JSON line with every number.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import robustness as rb  # benchmarks/robustness.py: the BG-gap, the rows per --thresholds, the summary rows
from dali_abs.cache.format import open_cache
from dali_abs.cache.precompute import GroundTruthMasks, PrecomputeConfig, precompute
from dali_abs.dataset import Columns, load_dataset
from dali_abs.labels import labels_from_masks
from dali_abs.loader.iterator import create_loader
from dali_abs.swap import SwapConfig
from dali_abs.models import inpainter as inet
from dali_abs.photobench import PhotoConfig, make_photo_dataset
from dali_abs.segmenter.evaluate import evaluate as evaluate_segmenter
from dali_abs.segmenter.train import train_segmenter
from dali_abs.training import fit, group_accuracy, load_images, normalize

GRID, SEG_INPUT, COVERAGE = 16, 224, 0.25  # the paper's grid at 224 px; label coverage as on Waterbirds
CLASSIFIER_LABELS = 200  # the classifier rows use the lite0 segmenter trained on this many labels (seed 0)
CLASS_NAMES = ("landbird", "waterbird")


class Clock:
    """Seconds per part and the 1-minute load average sampled along the way (the machine is shared)."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.parts: dict[str, float] = {}
        self.loads: list[float] = []
        self._last = self.t0
        self.sample()

    def sample(self) -> None:
        self.loads.append(round(os.getloadavg()[0], 2))

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.parts[name] = round(self.parts.get(name, 0.0) + now - self._last, 1)
        self._last = now
        self.sample()

    def report(self) -> dict:
        return {"seconds": round(time.perf_counter() - self.t0, 1), "parts": self.parts,
                "load_average_1min": {"min": min(self.loads), "mean": round(float(np.mean(self.loads)), 2),
                                      "max": max(self.loads), "samples": len(self.loads)}}


# --- data ------------------------------------------------------------------------------------------

def build_datasets(args, work: Path):
    """The benchmark (rho = 1.0) and the oracle's build (rho = 0.5, same test images); reused when present."""
    data = Path(args.data).resolve()
    masks = data / "masks"
    cols = Columns(label="y_waterbird", split="split_flag")
    out = {}
    for name, rho in (("bench", 1.0), ("oracle", 0.5)):
        root = work / name
        if not (root / "dataset.json").is_file():
            cfg = PhotoConfig(size=224, train=args.train, test=args.test, rho=rho, seed=args.dataset_seed,
                              object_scale=(args.object_scale, args.object_scale), class_names=CLASS_NAMES)
            make_photo_dataset(root, data, masks, places=None, cfg=cfg, columns=cols, progress=False)
        out[name] = root

    def test_rows(root):
        with open(root / "metadata.csv", newline="") as f:
            return sorted((r["img_filename"], r["object_file"], r["place_file"], r["object_x"], r["object_y"])
                          for r in csv.DictReader(f) if r["split"] == "2")

    if test_rows(out["bench"]) != test_rows(out["oracle"]):
        raise SystemExit(f"{out['oracle']}: the oracle's test split differs from the benchmark's; both builds must "
                         "share every setting but rho")
    return out["bench"], out["oracle"]


# --- segmenter -------------------------------------------------------------------------------------

def segmenter_part(ds, masks: Path, work: Path, args, clock: Clock) -> tuple[list[dict], Path]:
    """Scratch vs lite0 at each label count and seed; returns the rows and the classifier's segmenter."""
    todo = [] if args.only == "classifier" else \
        [(net, n, seed) for net, seeds in (("scratch", args.scratch_seeds), ("lite0", args.seg_seeds))
         for n in args.counts for seed in seeds]
    if args.only != "segmenter" and ("lite0", CLASSIFIER_LABELS, 0) not in todo:
        todo.append(("lite0", CLASSIFIER_LABELS, 0))  # the classifier's segmenter
    runs = []
    for backbone, n, seed in todo:
        labels = labels_from_masks(ds, masks, grid=GRID, threshold=COVERAGE, count=n, majority_only=True,
                                   seed=seed, progress=False)
        onnx = work / f"seg-{backbone}-{n}-s{seed}.onnx"
        t0 = time.perf_counter()
        fitted = train_segmenter(ds, labels, onnx, input_size=SEG_INPUT,
                                 backbone=None if backbone == "scratch" else backbone, epochs=args.seg_epochs,
                                 patience=args.seg_patience, seed=seed, threads=args.threads,
                                 device="cuda" if args.device == "gpu" else "cpu", progress=False)
        res = evaluate_segmenter(ds, onnx, gt_masks=masks, split="test", progress=False,
                                 device="cuda" if args.device == "gpu" else "cpu")["masks"]
        th = fitted["thresholds"]
        runs.append({"network": backbone, "labels": n, "seed": seed, "patch_iou": res["overall"]["patch_iou"],
                     "pixel_iou": res["overall"]["pixel_iou"],
                     "majority_iou": res["majority"]["patch_iou"], "minority_iou": res["minority"]["patch_iou"],
                     "groups": {g: v["patch_iou"] for g, v in res["groups"].items()},
                     "tight": th["tight"], "loose": th["loose"], "epochs_run": fitted["epochs_run"],
                     "best_epoch": fitted["best_epoch"], "train_seconds": round(fitted["seconds"], 1),
                     "seconds": round(time.perf_counter() - t0, 1), "load_average": os.getloadavg()[0]})
        print(f"segmenter {backbone} labels={n} seed={seed}: patch IoU {runs[-1]['patch_iou']:.3f} "
              f"(tight {th['tight']} / loose {th['loose']}; {runs[-1]['seconds']:.0f} s)", file=sys.stderr,
              flush=True)
        clock.sample()
    return runs, work / f"seg-lite0-{CLASSIFIER_LABELS}-s0.onnx"


def segmenter_table(runs: list[dict], groups: list[str]) -> list[dict]:
    table = []
    for net in ("scratch", "lite0"):
        for n in sorted({r["labels"] for r in runs}):
            rs = [r for r in runs if r["network"] == net and r["labels"] == n]
            if not rs:
                continue
            row = rb.summarize(rs, keys=("patch_iou", "pixel_iou", "majority_iou", "minority_iou"),
                               network=net, labels=n, seeds=[r["seed"] for r in rs])
            row["groups"] = {g: float(np.mean([r["groups"][g] for r in rs])) for g in groups}
            row["train_seconds_mean"] = round(float(np.mean([r["train_seconds"] for r in rs])), 1)
            table.append(row)
    return table


def short_group(name: str) -> str:
    """'y=1,place=0' -> 'water/land' (bird / habitat)."""
    y, place = (int(part.split("=")[1]) for part in name.split(","))
    return f"{CLASS_NAMES[y][:-4]}/{CLASS_NAMES[place][:-4]}"


def print_segmenter(table: list[dict], groups: list[str]) -> bool | None:
    print("\nsegmenter: patch IoU on the 400 test composites against their masks (labels: majority groups only, "
          f"coverage > {COVERAGE}, {GRID} x {GRID}, {SEG_INPUT} px)")
    head = "".join(f"{short_group(g):>12}" for g in groups)
    print(f"{'network':<9}{'labels':>7}{'seeds':>6}{'patch IoU':>18}{'majority':>10}{'minority':>10}{head}"
          f"{'pixel IoU':>11}{'train s':>9}")
    for r in table:
        print(f"{r['network']:<9}{r['labels']:>7}{len(r['seeds']):>6}{r['patch_iou']:>10.3f} ± {r['patch_iou_sd']:.3f}"
              f"{r['majority_iou']:>10.3f}{r['minority_iou']:>10.3f}"
              + "".join(f"{r['groups'][g]:>12.3f}" for g in groups)
              + f"{r['pixel_iou']:>11.3f}{r['train_seconds_mean']:>9.0f}")
    at = {r["network"]: r for r in table if r["labels"] == CLASSIFIER_LABELS}
    if "lite0" not in at or "scratch" not in at:
        return None
    ok = at["lite0"]["patch_iou"] >= 0.75 and at["lite0"]["patch_iou"] - at["scratch"]["patch_iou"] >= 0.10
    print(f"target (200 labels: lite0 >= 0.75 and >= scratch + 0.10): {at['lite0']['patch_iou']:.3f} vs "
          f"{at['scratch']['patch_iou']:.3f} (+{at['lite0']['patch_iou'] - at['scratch']['patch_iou']:.3f}): "
          f"{'met' if ok else 'NOT met'}")
    return ok


# --- caches ----------------------------------------------------------------------------------------

def build_caches(ds, oracle_ds, seg: Path, work: Path, args) -> dict:
    """Learned masks + push-pull (and its hand-picked fill where the chosen one differs), the given masks
    + push-pull on the same grid, and the oracle's (its fills are never used: no swap)."""
    device = "cuda" if args.device == "gpu" else "cpu"
    pushpull = work / "pushpull.onnx"
    inet.export_onnx(inet.build("pushpull"), pushpull, "pushpull")
    caches = {"push-pull": work / "cache-learned"}
    precompute(ds, seg, pushpull, caches["push-pull"], PrecomputeConfig(device=device), progress=False)
    if args.thresholds != "chosen" and open_cache(caches["push-pull"]).fill_threshold != rb.HAND_PICKED.loose:
        caches["push-pull hand-picked"] = work / "cache-learned-hand"
        precompute(ds, seg, pushpull, caches["push-pull hand-picked"],
                   PrecomputeConfig(device=device, fill_threshold=rb.HAND_PICKED.loose), progress=False)
    if "gt-masks" in args.methods:
        caches["gt-masks"] = work / "cache-given"
        precompute(ds, None, pushpull, caches["gt-masks"], PrecomputeConfig(device=device), progress=False,
                   masks=GroundTruthMasks(ds.root / "masks", grid=GRID, input_size=SEG_INPUT))
    if "oracle" in args.methods:
        caches["oracle"] = work / "cache-oracle"
        precompute(oracle_ds, None, pushpull, caches["oracle"], PrecomputeConfig(device=device), progress=False,
                   masks=GroundTruthMasks(oracle_ds.root / "masks", grid=GRID, input_size=SEG_INPUT))
    return caches


# --- classifier ------------------------------------------------------------------------------------

class FrozenFeatures:
    """ImageNet EfficientNet-Lite0, frozen: normalised float32 NCHW images (the loader's output, MEAN/STD)
    -> float32 [B, 1280], the global average pool of its last layer. Run by onnxruntime (several times
    eager torch's speed on a CPU; its CUDA provider with ``--device gpu``)."""

    def __init__(self, size: int, work: Path, device: str, threads: int):
        from dali_abs.models.backbones import build_features
        from dali_abs.runtime import create_session

        maps, _ = build_features("lite0", size)

        class Pooled(nn.Module):
            def __init__(self):
                super().__init__()
                self.maps = maps

            def forward(self, x):
                return self.maps(x)[1].mean((2, 3))

        path = work / f"lite0-pooled-{size}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Pooled().eval(), (torch.rand(2, 3, size, size),), str(path), dynamo=False,
                              opset_version=17, input_names=["image"], output_names=["features"],
                              dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}})
        self.session = create_session(path, "cuda" if device == "gpu" else "cpu", threads=threads)
        self.dim = 1280

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.detach().float().cpu().numpy()
        return torch.from_numpy(self.session.run(None, {"image": x})[0])

    def of_loader(self, loader, epochs: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        feats, labels = [], []
        for _ in range(epochs):
            for b in loader:
                feats.append(self(b[0]["images"]))
                labels.append(b[0]["labels"].cpu().long().reshape(-1))
        return torch.cat(feats), torch.cat(labels)

    def of_split(self, ds, split: str, size: int, batch: int = 64):
        """Features, labels and groups of a split, the images read whole and resized as robustness.py scores."""
        samples = ds.split(split)
        feats = []
        for i in range(0, len(samples), batch):
            feats.append(self(normalize(load_images(samples[i:i + batch], size))))
        return torch.cat(feats), torch.tensor([s.label for s in samples]), [ds.group(s) for s in samples]


class LinearHead(nn.Module):
    """Standardised features (mean / sd of the training features) -> one linear layer -> class logits."""

    def __init__(self, feats: torch.Tensor, n_classes: int):
        super().__init__()
        self.register_buffer("mean", feats.mean(0))
        self.register_buffer("std", feats.std(0) + 1e-6)
        self.fc = nn.Linear(feats.shape[1], n_classes)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc((f - self.mean) / self.std)


def train_head(feats: torch.Tensor, labels: torch.Tensor, n_classes: int, seed: int, epochs: int) -> LinearHead:
    torch.manual_seed(seed)
    head = LinearHead(feats, n_classes)

    def batches(epoch: int):
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(labels), generator=g)
        for i in range(0, len(order), 64):
            idx = order[i:i + 64]
            yield feats[idx], labels[idx]

    fit(head, batches, epochs)
    return head.eval()


@torch.no_grad()
def accuracy(head: nn.Module, feats: torch.Tensor, labels: torch.Tensor) -> float:
    return float((head(feats).argmax(1) == labels).float().mean()) if len(labels) else 0.0


def classifier_part(ds, oracle_ds, caches: dict, work: Path, args, clock: Clock) -> list[dict]:
    fx = FrozenFeatures(args.size, work, args.device, args.threads)
    evals = {split: fx.of_split(ds, split, args.size) for split in ("val", "test")}
    plain = rb.HAND_PICKED if args.thresholds == "hand-picked" else rb.CHOSEN  # BG-gap of ERM and the oracle
    runs = [("ERM", caches["push-pull"], ds, None, plain)] if "erm" in args.methods else []
    if "pushpull" in args.methods:
        runs += rb.dali_rows("dali-abs, learned masks + push-pull", "push-pull", caches, ds, args)
    if "gt-masks" in caches:
        runs += rb.dali_rows("dali-abs, given masks + push-pull", "gt-masks", caches, ds, args, gt=True)
    for t in args.sweep_tight:  # learned masks at another tight cut, the chosen fill: how the cut matters
        swap = SwapConfig(tight=t)
        runs.append((f"dali-abs, learned masks + push-pull, tight {t} (sweep)", caches["push-pull"], ds, swap, swap))
    if "oracle" in caches:
        runs.append(("oracle: ERM on group-balanced data", caches["oracle"], oracle_ds, None, plain))
    gap_feats = {}  # (tight, loose) -> features of the two BG-gap loaders, shared by every seed and row
    table = []
    for name, cache, train_ds, swap, gap_th in runs:
        key = (gap_th.tight, gap_th.loose)
        if key not in gap_feats:
            gap_feats[key] = [fx.of_loader(loader) for loader in
                              rb.bg_gap_loaders(caches["push-pull"], ds, args.size, args.device, gap_th)]
        res = []
        for seed in args.seeds:
            t0 = time.perf_counter()
            loader = create_loader(cache, train_ds, batch_size=64, size=args.size, device=args.device, swap=swap,
                                   seed=seed, num_threads=args.threads)
            feats, labels = fx.of_loader(loader, args.views)
            head = train_head(feats, labels, ds.n_classes, seed, args.head_epochs)
            with torch.no_grad():
                scores = {split: group_accuracy(head(f).argmax(1), y, g, ds) for split, (f, y, g) in evals.items()}
            same, other = (accuracy(head, f, y) for f, y in gap_feats[key])
            res.append({"seed": seed, "worst": scores["test"]["worst_group_acc"], "avg": scores["test"]["avg_acc"],
                        "bg_gap": same - other, "per_group": scores["test"]["per_group"],
                        "val_worst": scores["val"]["worst_group_acc"], "val_avg": scores["val"]["avg_acc"],
                        "train_images": len(labels), "seconds": round(time.perf_counter() - t0, 1)})
            print(f"{name} seed={seed}: worst {res[-1]['worst']:.3f} avg {res[-1]['avg']:.3f} BG-gap "
                  f"{res[-1]['bg_gap']:.3f} ({res[-1]['seconds']:.0f} s)", file=sys.stderr, flush=True)
            clock.sample()
        table.append(rb.summarize(res, keys=("worst", "avg", "bg_gap", "val_worst"), method=name,
                                  thresholds=None if swap is None else swap_thresholds(swap, cache)))
    return table


def swap_thresholds(swap, cache) -> dict:
    th = open_cache(cache).thresholds
    return {"tight": th.tight if swap.tight is None else swap.tight,
            "loose": th.loose if swap.loose is None else swap.loose}


def verdict(table: list[dict]) -> dict:
    """ERM-oracle gap and the share of it each dali-abs row recovers (means over seeds)."""
    erm = next((r for r in table if r["method"] == "ERM"), None)
    oracle = next((r for r in table if r["method"].startswith("oracle")), None)
    if erm is None or oracle is None:
        return {}
    gap = oracle["worst"] - erm["worst"]
    out = {"erm_worst": erm["worst"], "oracle_worst": oracle["worst"], "gap": gap, "spurious": gap >= 0.20,
           "recovered": {}}
    for r in table:
        if r["method"].startswith("dali-abs"):
            r["recovered"] = (r["worst"] - erm["worst"]) / gap if gap > 0 else None
            out["recovered"][r["method"]] = r["recovered"]
    return out


def print_classifier(table: list[dict], v: dict, args) -> None:
    print(f"\nclassifier: frozen ImageNet Lite0 features + linear head, trained through the DALI loader "
          f"({args.device}), {args.size} px, {args.views} loader epochs, {len(args.seeds)} seeds; test split "
          "(100 per group)")
    print(f"{'training':<62}{'worst-group':>16}{'average':>16}{'BG-gap':>16}{'recovered':>11}")
    for r in table:
        rec = r.get("recovered")
        print(f"{r['method']:<62}" + "".join(f"{r[k]:>9.3f} ± {r[k + '_sd']:.3f}" for k in ("worst", "avg", "bg_gap"))
              + (f"{rec:>10.0%}" if rec is not None else f"{'-':>11}"))
    if v:
        print(f"target (ERM worst-group >= 20 points under the oracle's): {v['erm_worst']:.3f} vs "
              f"{v['oracle_worst']:.3f}, {100 * v['gap']:.1f} points: {'met' if v['spurious'] else 'NOT met'}")
        for name, rec in v["recovered"].items():
            if "learned" in name and "sweep" not in name and rec is not None:
                print(f"target (dali-abs, learned masks, recovers >= 60 % of the gap): {name}: {rec:.0%}: "
                      f"{'met' if rec >= 0.60 else 'NOT met'}")


# --- pictures --------------------------------------------------------------------------------------

def pictures(out: Path, ds, seg: Path, caches: dict, args) -> list[str]:
    """Two small PNGs: test composites with mask, labels, prediction and clean background; swapped samples."""
    from dali_abs.files import read_mask, read_rgb
    from dali_abs.labels import patch_coverage
    from dali_abs.preview import caption, grid_overlay, mask_overlay, save_grid
    from dali_abs.segmenter.inference import Segmenter
    from dali_abs.constants import MEAN, STD

    out.mkdir(parents=True, exist_ok=True)
    cache = open_cache(caches["push-pull"])
    test = ds.split("test")
    picks = []
    for g in sorted({ds.group(s) for s in test}):  # two test composites per group, spread over the split
        members = [s for s in test if ds.group(s) == g]
        picks += [members[len(members) // 5], members[3 * len(members) // 5]]
    probs = Segmenter(seg).predict_files([s.path for s in picks])[:, 0]
    rows = []
    for s, p in zip(picks, probs):
        img = read_rgb(s.path)
        mask = read_mask(ds.root / s.extra["mask_filename"])  # bool, True = bird
        rows.append([caption(img, short_group(ds.group_name(ds.group(s))), size=22), mask_overlay(img, mask),
                     grid_overlay(img, patch_coverage(mask, GRID) > COVERAGE), grid_overlay(img, p),
                     cache.background(cache.position(s.id), img)])
    paths = [save_grid(out / "real-photos-masks.png", rows, tile=112)]
    swapped = []
    for key, swap in (("push-pull", rb.CHOSEN), ("push-pull hand-picked", rb.HAND_PICKED), ("gt-masks", rb.CHOSEN)):
        if key not in caches:
            continue
        th = swap_thresholds(swap, caches[key])
        what = {"push-pull": "chosen", "push-pull hand-picked": "hand-picked", "gt-masks": "given"}[key]
        loader = create_loader(caches[key], ds, batch_size=16, size=args.size, device="cpu", swap=swap, seed=0,
                               num_threads=args.threads)
        x = next(iter(loader))[0]["images"].float().cpu()
        imgs = (x.permute(0, 2, 3, 1) * torch.tensor(STD) + torch.tensor(MEAN)).clamp(0, 1).mul(255).byte().numpy()
        swapped.append([caption(imgs[0], f"{what} {th['tight']}/{th['loose']}", size=20), *imgs[1:8]])
    paths.append(save_grid(out / "real-photos-swapped.png", swapped, tile=112))
    return paths


# --- main ------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the cub-birds-300 folder (photos, metadata.csv, masks/)")
    ap.add_argument("--out", help="work folder for datasets, models and caches (default: a temp dir, removed); "
                                  "datasets already there are reused")
    ap.add_argument("--only", choices=["segmenter", "classifier"],
                    help="one part only (classifier: trains only the lite0 segmenter it uses)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--threads", type=int, default=2, help="torch / onnxruntime / DALI threads (default 2)")
    ap.add_argument("--train", type=int, default=900, help="train composites (default 900)")
    ap.add_argument("--test", type=int, default=400, help="test composites (default 400, 100 per group)")
    ap.add_argument("--object-scale", type=float, default=0.5, help="bird size factor (default 0.5)")
    ap.add_argument("--dataset-seed", type=int, default=0)
    ap.add_argument("--counts", type=int, nargs="+", default=[50, 100, 200], help="label counts (default 50 100 200)")
    ap.add_argument("--seg-seeds", type=int, nargs="+", default=[0, 1, 2], help="lite0 seeds (default 0 1 2)")
    ap.add_argument("--scratch-seeds", type=int, nargs="+", default=[0],
                    help="from-scratch seeds (default 0: ~5 min a 200-label run on 2 cores)")
    ap.add_argument("--seg-epochs", type=int, default=80, help="segmenter epochs (default 80, as segmenter.py)")
    ap.add_argument("--seg-patience", type=int, default=25)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="classifier seeds (default 0 1 2)")
    ap.add_argument("--size", type=int, default=224, help="classifier input side (default 224)")
    ap.add_argument("--views", type=int, default=4, help="loader epochs whose features train the head (default 4)")
    ap.add_argument("--head-epochs", type=int, default=30, help="epochs of the head over those features (default 30)")
    ap.add_argument("--thresholds", default="both", choices=["chosen", "hand-picked", "both"],
                    help="learned-mask rows at the chosen thresholds, the hand-picked 0.8 / 0.1, or both (default)")
    ap.add_argument("--methods", nargs="+", default=["erm", "pushpull", "gt-masks", "oracle"],
                    choices=["erm", "pushpull", "gt-masks", "oracle"])
    ap.add_argument("--sweep-tight", type=float, nargs="*", default=[],
                    help="extra rows: learned masks cut at each of these tight thresholds (the chosen fill), "
                         "e.g. 0.6 0.7 0.8 0.9 0.95")
    ap.add_argument("--pictures", help="write the README pictures into this folder")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = Clock()
    tmp = None
    if args.out:
        work = Path(args.out).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="dali-abs-realphotos-")
        work = Path(tmp.name)
    bench, oracle = build_datasets(args, work)
    ds, oracle_ds = load_dataset(bench), load_dataset(oracle)
    groups = sorted({ds.group_name(ds.group(s)) for s in ds.split("test")})
    clock.lap("datasets")
    result = {"benchmark": "real_photos", "data": str(Path(args.data).resolve()), "device": args.device,
              "settings": {k: v for k, v in vars(args).items() if k not in ("data", "out", "pictures")},
              "dataset": json.loads((bench / "dataset.json").read_text())["counts"]}
    seg_runs, seg = segmenter_part(ds, bench / "masks", work, args, clock)
    seg_table = segmenter_table(seg_runs, groups)
    clock.lap("segmenter")
    if args.only != "classifier":
        result["segmenter"] = {"table": seg_table, "runs": seg_runs}
        result["segmenter"]["target_met"] = print_segmenter(seg_table, groups)
    if args.only != "segmenter":
        caches = build_caches(ds, oracle_ds, seg, work, args)
        recorded = {}
        for key, path in caches.items():
            th = open_cache(path).thresholds
            recorded[key] = {"tight": th.tight, "loose": th.loose, "tight_source": th.tight_source, **th.stats}
        clock.lap("caches")
        table = classifier_part(ds, oracle_ds, caches, work, args, clock)
        v = verdict(table)
        clock.lap("classifier")
        print_classifier(table, v, args)
        result["classifier"] = {"table": table, "verdict": v, "cache_thresholds": recorded}
        if args.pictures:
            result["pictures"] = pictures(Path(args.pictures), ds, seg, caches, args)
            clock.lap("pictures")
    result["time"] = clock.report()
    t = result["time"]
    print(f"\n({t['seconds']:.0f} s = {t['seconds'] / 60:.1f} min on {args.device}, "
          + ", ".join(f"{k} {s:.0f} s" for k, s in t["parts"].items())
          + f"; 1-min load average {t['load_average_1min']['min']}-{t['load_average_1min']['max']}, "
            f"mean {t['load_average_1min']['mean']}, on {os.cpu_count()} cores)")
    print(json.dumps(result, default=float))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
