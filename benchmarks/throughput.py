"""Loader throughput, side by side in one run: plain DALI vs dali-abs swapping vs the peers' way.

    python benchmarks/throughput.py [--device cpu] [--batch 32 64] [--batches 40] [--rounds 3] [--tight T] [--cub DIR]

For each dataset (the built-in benchmark at its default 128 px, and cub-birds-300 at --cub,
default ../shared/data/cub-birds-300) and each batch size, at 224 px output, ``num_threads=2``.
Every way reads the same images, the loader's split (cub-birds-300: its 164 training images), in the
same epochs:

- A: plain DALI pipeline (decode, random resized crop, flip, normalise), its reader set as the
  loader's (the same files in the same order, shuffled after every epoch, the last batch padded and
  returned partial: ``LastBatchPolicy.PARTIAL``, the loader's default), so both pay for the padding;
- B: dali-abs (``create_loader``: ``SwapConfig()``: swap p = 1, class-balanced backgrounds,
  cached fills, translation);
- W: dali-abs with the paper's Waterbirds preset (``SwapConfig.waterbirds()``: rotation, scale);
- C: the swap written the way the peers do it: a torch ``DataLoader`` with 2 workers over a
  PIL-based Dataset that reads the image, its full-size mask PNG and a full clean-background
  JPEG of another image per sample, translation only (the files are written from our cache);
  shuffled, the last batch kept.

Each round measures A, B, W and C one after the other (this machine is noisy; ratios within
one round are comparable), each over whole epochs after a warm-up epoch; the table gives the
median img/s over rounds and the median of the per-round ratios. Targets: B/A >= 1.0 at batch 32 and 64, W/A >= 0.95, B/C and W/C >= 3.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dali_abs.cache.format import open_cache
from dali_abs.cache.precompute import PrecomputeConfig, precompute
from dali_abs.dataset import load_dataset
from dali_abs.labels import labels_from_masks
from dali_abs.loader.iterator import create_loader, split_rows
from dali_abs.loader.ops import normalize_node, swap_thresholds
from dali_abs.swap import Normalize, SwapConfig
from dali_abs.models import inpainter as inet
from dali_abs.segmenter.train import train_segmenter
from dali_abs.synthetic import SyntheticConfig, make_dataset
from dali_abs.constants import MEAN, STD

CUB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cub-birds-300"


def plain_dali(files: list[str], labels: list[int], batch: int, size: int, threads: int, device: str):
    """The plain pipeline, read as the loader reads: the same files in the same order, shuffled after
    every epoch, the last batch padded and returned partial (so both pay for the same padding)."""
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.base_iterator import LastBatchPolicy
    from nvidia.dali.plugin.pytorch import DALIGenericIterator

    gpu = device == "gpu"

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=0 if gpu else None, seed=0)
    def pipe():
        jpegs, lab = fn.readers.file(files=files, labels=labels, shuffle_after_epoch=True, seed=0, pad_last_batch=True,
                                     name="Reader")
        images = fn.decoders.image(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB)
        images = fn.random_resized_crop(images, size=[size, size], random_area=[0.7, 1.0], antialias=False)
        images = normalize_node(images, Normalize.imagenet(), mirror=fn.random.coin_flip())
        return images, lab

    return DALIGenericIterator([pipe()], ["images", "labels"], reader_name="Reader", auto_reset=True,
                               last_batch_policy=LastBatchPolicy.PARTIAL)


class PeerSwapDataset(torch.utils.data.Dataset):
    """The reference implementation's way: per sample, PIL-decode the image, its mask PNG and a
    clean background JPEG of a class-balanced partner; paste with nearest resampling; crop, flip."""

    def __init__(self, images: list[str], masks: list[str], backgrounds: list[str], labels: list[int], size: int):
        self.images, self.masks, self.backgrounds, self.labels, self.size = images, masks, backgrounds, labels, size
        self.by_class = {c: [i for i, y in enumerate(labels) if y == c] for c in sorted(set(labels))}
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        rng = np.random.default_rng()
        img = Image.open(self.images[i]).convert("RGB")
        mask = Image.open(self.masks[i]).convert("L")
        c = rng.choice(list(self.by_class))
        j = int(rng.choice(self.by_class[c]))
        bg = Image.open(self.backgrounds[j]).convert("RGB").resize(img.size, Image.BILINEAR)
        dx, dy = rng.integers(-img.width // 8, img.width // 8 + 1, size=2)
        fg_mask = mask.transform(img.size, Image.AFFINE, (1, 0, -dx, 0, 1, -dy), resample=Image.NEAREST)
        fg = img.transform(img.size, Image.AFFINE, (1, 0, -dx, 0, 1, -dy), resample=Image.NEAREST)
        bg.paste(fg, (0, 0), fg_mask)
        w, h = bg.size
        area = rng.uniform(0.7, 1.0) * w * h
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = min(w, int(round(np.sqrt(area * ratio)))), min(h, int(round(np.sqrt(area / ratio))))
        x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        out = bg.crop((x0, y0, x0 + cw, y0 + ch)).resize((self.size, self.size), Image.BILINEAR)
        if rng.random() < 0.5:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        t = torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1).float().div_(255)
        return (t - self.mean) / self.std, self.labels[i]


def write_peer_files(cache, ds, rows: list[int], out: Path, tight: float | None = None
                     ) -> tuple[list[str], list[str], list[str], list[int]]:
    """Full-size tight-mask PNGs and clean-background JPEGs of cache ``rows`` (the peers' storage)."""
    from PIL import Image

    from dali_abs.files import read_rgb

    out.mkdir(parents=True, exist_ok=True)
    imgs, masks, bgs, labels = [], [], [], []
    for row in rows:
        src = ds.root / cache.relpaths[row]
        img = read_rgb(src)
        h, w = img.shape[:2]
        cut = cache.tight(row, tight).astype(np.uint8) * 255
        Image.fromarray(cut).resize((w, h), Image.NEAREST).save(out / f"{row}.png")
        Image.fromarray(cache.background(row, img)).save(out / f"{row}.jpg", quality=90)
        imgs.append(str(src))
        masks.append(str(out / f"{row}.png"))
        bgs.append(str(out / f"{row}.jpg"))
        labels.append(int(cache.labels[row]))
    return imgs, masks, bgs, labels


def rate(loader, batches: int, get) -> float:
    """Images per second over whole epochs (at least ``batches`` batches) after one warm-up epoch
    (pipeline build, worker start, first decodes): every way delivers each image once per epoch,
    so all count the same images, partial last batches included."""
    for b in loader:
        get(b)
    n = done = 0
    t0 = time.perf_counter()
    while done < batches:
        for b in loader:
            n += get(b)
            done += 1
    return n / (time.perf_counter() - t0)


def prepare(tmp: Path, threads: int, cub: Path) -> dict[str, tuple[Path, Path]]:
    """Datasets and their caches: the built-in benchmark and cub-birds-300 (if present)."""
    t0 = time.perf_counter()
    data = make_dataset(tmp / "builtin", SyntheticConfig(), progress=False)
    ds = load_dataset(data)
    labels = labels_from_masks(ds, data / "masks", grid=8, count=200, majority_only=True, progress=False)
    seg, fill = tmp / "seg.onnx", tmp / "fill.onnx"
    train_segmenter(ds, labels, seg, input_size=128, epochs=15, threads=threads, progress=False, seed=0)
    inet.export_onnx(inet.build("pushpull"), fill, "pushpull")
    sets = {"built-in (128 px)": data}
    if cub.is_dir():
        sets["cub-birds-300 (227 px)"] = cub
    else:  # said, not silent: the targets are on cub-birds-300
        print(f"cub-birds-300 not found at {cub}: measuring the built-in benchmark only (pass --cub DIR)",
              file=sys.stderr)
    out = {}
    for name, root in sets.items():
        cache = tmp / f"cache-{len(out)}"
        # cub-birds-300 has no split column of ours: read it as an ImageFolder-like manifest via metadata
        precompute(load_dataset(root, _columns_for(root, cub)), seg, fill, cache, PrecomputeConfig(device="cpu"),
                   progress=False)
        out[name] = (root, cache)
    print(f"prepared datasets, segmenter and caches in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


def _columns_for(root: Path, cub: Path):
    from dali_abs.dataset import Columns

    return Columns(label="y_waterbird", split="split_flag") if root == cub else Columns()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 64], help="batch sizes (default 32 64)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, default=40,
                    help="timed batches per measurement, at least (whole epochs are timed)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tight", type=float, default=None,
                    help="the cut-out threshold for B, W, C and the kernel (default: each cache's, as the loader; "
                         "the segmenter this script trains chooses it, so the work per image follows the rule)")
    ap.add_argument("--cub", type=Path, default=CUB, help="the cub-birds-300 folder (default: ../shared/data/cub-birds-300)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results, kernel, cut = {}, {}, {}
    count = lambda b: len(b[0]["labels"])  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        for name, (root, cache_dir) in prepare(Path(tmp), args.threads, args.cub).items():
            ds = load_dataset(root, _columns_for(root, args.cub))
            cache = open_cache(cache_dir)
            # the images the loader reads (its split), in its order: every way reads the same epoch
            rows = split_rows(cache, ds, _train_split(ds))
            rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
            files = [str(ds.root / cache.relpaths[r]) for r in rows]
            labels = [int(cache.labels[r]) for r in rows]
            tight = swap_thresholds(SwapConfig(tight=args.tight), cache.thresholds).tight  # as the loader
            cut[name] = {"tight": tight, "loose": cache.thresholds.loose, "foreground": float(
                np.mean([cache.tight(i, tight).mean() for i in range(len(cache))]))}
            peer = PeerSwapDataset(*write_peer_files(cache, ds, rows, Path(tmp) / f"peer-{len(results)}", tight),
                                   size=args.size)
            kernel[name] = kernel_ns_per_px(cache, ds, args.size, tight=tight)
            for batch in args.batch:
                rounds = {"A": [], "B": [], "W": [], "C": []}
                for _ in range(args.rounds):
                    a = plain_dali(files, labels, batch, args.size, args.threads, args.device)
                    rounds["A"].append(rate(a, args.batches, count))
                    del a
                    for key, swap in (("B", SwapConfig(tight=args.tight)), ("W", SwapConfig.waterbirds(tight=args.tight))):
                        b = create_loader(cache, ds, batch_size=batch, size=args.size, device=args.device,
                                          num_threads=args.threads, split=_train_split(ds), swap=swap)
                        rounds[key].append(rate(b, args.batches, count))
                        del b
                    c = torch.utils.data.DataLoader(peer, batch_size=batch, shuffle=True, num_workers=2,
                                                    persistent_workers=True)
                    rounds["C"].append(rate(c, args.batches, lambda b: len(b[1])))
                    del c
                med = {k: statistics.median(v) for k, v in rounds.items()}
                # ratios per round (side by side in one round), then their median
                ratio = lambda x, y: statistics.median(p / q for p, q in zip(rounds[x], rounds[y]))  # noqa: E731
                results[f"{name}, batch {batch}"] = {
                    "img_per_s": med, "rounds": rounds, "B/A": ratio("B", "A"), "W/A": ratio("W", "A"),
                    "B/C": ratio("B", "C"), "W/C": ratio("W", "C")}
    print(f"\n{'dataset, batch':<36}{'A plain':>9}{'B swap':>9}{'W preset':>9}{'C peers':>9}{'B/A':>7}{'W/A':>7}"
          f"{'B/C':>7}{'W/C':>7}")
    for name, r in results.items():
        m = r["img_per_s"]
        print(f"{name:<36}{m['A']:>9.0f}{m['B']:>9.0f}{m['W']:>9.0f}{m['C']:>9.0f}{r['B/A']:>7.2f}{r['W/A']:>7.2f}"
              f"{r['B/C']:>7.2f}{r['W/C']:>7.2f}")
    print(f"(img/s, median of {args.rounds} rounds, ratios: median of the per-round ratios; {args.device}, "
          f"{args.threads} threads, {args.size} px, {os.cpu_count()} CPU cores)")
    print("targets: B/A >= 1.0 (batch 32 and 64), W/A >= 0.95, B/C and W/C >= 3")
    for name, c in cut.items():
        print(f"{name}: cut at tight {c['tight']:g} ({'--tight' if args.tight is not None else 'the cache'}'s), "
              f"loose {c['loose']:g}: {c['foreground']:.1%} of the cells are cut out")
    print(f"\nthe compositing alone, one core, a 64 x {args.size} x {args.size} batch (ns per output pixel):")
    print(f"{'dataset, swap':<48}{'per-pixel body':>16}{'row renderer':>14}")
    for name, rows in kernel.items():
        for swap, (body, fast) in rows.items():
            print(f"{name + ', ' + swap:<48}{body:>16.1f}{fast:>14.1f}")
    print(json.dumps({"benchmark": "throughput", "device": args.device, "threads": args.threads, "batch": args.batch,
                      "size": args.size, "cpu_count": os.cpu_count(), "results": results, "kernel_ns_per_px": kernel,
                      "thresholds": cut}))
    return 0


def kernel_ns_per_px(cache, ds, size: int, n: int = 64, tight: float | None = None) -> dict[str, tuple[float, float]]:
    """ns per output pixel of the CPU backend alone (one thread): per-pixel body and row renderer,
    for no swap, SwapConfig() and the Waterbirds preset, on the first n cached images."""
    from dali_abs import swap
    from dali_abs.files import read_rgb
    from dali_abs.swap import cpu

    rows = list(range(min(n, len(cache))))
    images = [read_rgb(ds.root / cache.relpaths[i]) for i in rows]
    fills = [cache.fill(i) if cache.fill_bytes(i) else np.zeros((8, 8, 3), np.uint8) for i in rows]
    soft = np.stack([cache.mask(i) for i in rows])
    boxes = (cache.boxes[rows] / np.float32(cache.grid)).astype(np.float32)
    out = {}
    for name, cfg in (("no swap", swap.SwapConfig(p=0.0, tight=tight)), ("SwapConfig()", swap.SwapConfig(tight=tight)),
                      ("SwapConfig.waterbirds()", swap.SwapConfig.waterbirds(tight=tight))):
        cfg = swap_thresholds(cfg, cache.thresholds)  # None: the cache's, as the loader
        params = swap.sample_params(cache.labels[rows], np.random.default_rng(0), cfg, image_size=(size, size),
                                    soft=soft, augment=swap.AugmentConfig())
        b = swap.batch(images, soft, fills, boxes, params, cfg, size)
        times = []
        for vector in (False, True):
            cpu.composite(b, threads=1, vector=vector)
            ts = []
            for _ in range(5):
                t0 = time.thread_time()
                cpu.composite(b, threads=1, vector=vector)
                ts.append(time.thread_time() - t0)
            times.append(statistics.median(ts) / (len(rows) * size * size) * 1e9)
        out[name] = tuple(times)
    return out


def _train_split(ds) -> str:
    return "train" if ds.split_counts().get("train") else next(iter(ds.split_counts()))


if __name__ == "__main__":
    sys.exit(main())
