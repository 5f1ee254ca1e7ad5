"""Benchmark of ``dali-abs precompute`` (not a timed test).

Measures, on this machine:

- images/s of the whole precompute (DALI decode, segmenter, push-pull fill, JPEG encode, write)
  and the share of time in each stage;
- cache bytes per image against source bytes per image;
- a table of storage alternatives for the clean background, each with bytes per image and
  the time to decode one (PIL, one thread): full background JPEG at source size and at the
  work size, the fill region only (chosen), the fill region at half resolution, raw uint8
  arrays (what ``fn.readers.numpy`` reads), plus what tar members (webdataset) would add.

Default data: the built-in benchmark at 224 px (``SyntheticConfig(size=224)``) made in a temp
folder; ``--data`` takes any dataset (e.g. /work/shared/data/cub-birds-300 with
``--col-label y_waterbird --col-split split_flag``). Default segmenter: a PatchCNN (16 x 16
grid, 224 px) trained briefly on ground-truth patch labels of the built-in data, or
``--segmenter``. ``--backbone lite0`` trains the default segmenter on the frozen pretrained
EfficientNet-Lite0 instead (issue 13's target: >= 30 img/s at 224 px with the push-pull fill on
a 2-core CPU); ``--compare`` runs both default segmenters side by side on the same data and
prints their images/s and the ratio. Prints a readable report and one JSON line at the end.

    python benchmarks/precompute.py [--data DATA] [--segmenter seg.onnx] [--images N]
    python benchmarks/precompute.py --backbone lite0 [--seg-input-size 224]
    python benchmarks/precompute.py --compare
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def _jpeg(a: np.ndarray, q: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=q)
    return buf.getvalue()


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _decode_ms(blobs: list[bytes]) -> float:
    from PIL import Image

    t = time.perf_counter()
    for b in blobs:
        if b[:6] == b"\x93NUMPY":
            np.load(io.BytesIO(b))
        else:
            with Image.open(io.BytesIO(b)) as im:
                im.load()
    return (time.perf_counter() - t) / max(1, len(blobs)) * 1000


def alternatives(cache, n: int = 200) -> list[dict]:
    """Bytes per image and decode ms of the ways a background could be stored, on ``n`` cached images."""
    from PIL import Image

    from dali_abs.files import read_rgb

    S, R = cache.work_size, cache.grid
    rows = np.linspace(0, len(cache) - 1, min(n, len(cache))).astype(int)
    kinds: dict[str, list[bytes]] = {k: [] for k in (
        "full background JPEG q90, source size", "full background JPEG q90, work size",
        "fill region JPEG q90, work size (chosen)", "fill region JPEG q90, half work size",
        "fill region JPEG q75, work size", "full background raw uint8, work size (.npy)",
        "fill region raw uint8, work size (.npy)")}
    for r in rows:
        src = read_rgb(cache.data_root / cache.relpaths[r])
        bg = cache.background(int(r), src)
        bg_w = np.asarray(Image.fromarray(bg).resize((S, S), Image.BILINEAR))
        fill = cache.fill(int(r))
        if fill is None:
            fill = np.zeros((0, 0, 3), np.uint8)
        kinds["full background JPEG q90, source size"].append(_jpeg(bg))
        kinds["full background JPEG q90, work size"].append(_jpeg(bg_w))
        kinds["full background raw uint8, work size (.npy)"].append(_npy(bg_w))
        kinds["fill region raw uint8, work size (.npy)"].append(_npy(fill))
        if fill.size:
            kinds["fill region JPEG q90, work size (chosen)"].append(cache.fill_bytes(int(r)))
            h, w = fill.shape[:2]
            half = np.asarray(Image.fromarray(fill).resize((max(1, w // 2), max(1, h // 2)), Image.BILINEAR))
            kinds["fill region JPEG q90, half work size"].append(_jpeg(half))
            kinds["fill region JPEG q75, work size"].append(_jpeg(fill, 75))
    src_bytes = float(np.mean([(cache.data_root / cache.relpaths[r]).stat().st_size for r in rows]))
    mask_bytes = R * R
    out = []
    for name, blobs in kinds.items():
        per = sum(len(b) for b in blobs) / len(rows)  # images without a fill store nothing
        out.append({"storage": name, "bytes_per_image": round(per, 1),
                    "with_mask_bytes_per_image": round(per + mask_bytes, 1),
                    "ratio_to_source": round((per + mask_bytes) / src_bytes, 3),
                    "decode_ms": round(_decode_ms(blobs[:100]), 3)})
    out.append({"storage": f"soft mask uint8 {R}x{R} (stored)", "bytes_per_image": mask_bytes,
                "with_mask_bytes_per_image": mask_bytes, "ratio_to_source": round(mask_bytes / src_bytes, 4),
                "decode_ms": 0.0})
    m = cache.manifest
    sizes = [int(s[2]) for s in cache.fill_spans if s[2]]  # a tar member costs a 512 B header + padding to 512 B
    overhead = (sum(512 + (n + 511) // 512 * 512 - n for n in sizes) + 1024 * int(m["chunks"])) / len(cache)
    out.append({"storage": "if fills were tar members (webdataset): extra B", "bytes_per_image": round(overhead, 1),
                "with_mask_bytes_per_image": None, "ratio_to_source": round(overhead / src_bytes, 4),
                "decode_ms": None})
    out.append({"storage": "chunk record JSON (id, path, stat, box, offsets)",
                "bytes_per_image": round(m["bytes"]["records"] / len(cache), 1), "with_mask_bytes_per_image": None,
                "ratio_to_source": round(m["bytes"]["records"] / len(cache) / src_bytes, 4), "decode_ms": None})
    return out


def default_models(tmp: Path, data: Path, epochs: int, seed: int = 0, backbone: str | None = None,
                   input_size: int = 224) -> tuple[Path, Path, dict]:
    from dali_abs.dataset import load_dataset
    from dali_abs.labels import labels_from_masks
    from dali_abs.models import inpainter as inet
    from dali_abs.segmenter.train import train_segmenter

    ds = load_dataset(data)
    labels = labels_from_masks(ds, data / "masks", grid=16, threshold=0.25, count=200, majority_only=True,
                               seed=seed, progress=False)
    t = time.perf_counter()
    seg = tmp / f"seg-{backbone or 'patchcnn'}.onnx"
    metrics = train_segmenter(ds, labels, seg, input_size=input_size, epochs=epochs, seed=seed, backbone=backbone,
                              progress=False)
    inet.export_onnx(inet.build("pushpull"), tmp / "fill.onnx", "pushpull")
    return seg, tmp / "fill.onnx", {"network": backbone or "PatchCNN", "input_size": input_size,
                                    "train_seconds": round(time.perf_counter() - t, 1),
                                    "val_balanced_accuracy": metrics.get("val_balanced_accuracy")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="dataset folder (default: the built-in benchmark at 224 px, made in a temp dir)")
    ap.add_argument("--col-label", default="y")
    ap.add_argument("--col-split", default="split")
    ap.add_argument("--segmenter", help="segmenter ONNX (default: train one briefly on the built-in data)")
    ap.add_argument("--inpainter", help="inpainter ONNX (default: the push-pull fill)")
    ap.add_argument("--images", type=int, default=1200, help="train images of the built-in data (default 1200)")
    ap.add_argument("--seg-epochs", type=int, default=10,
                    help="epochs of the default segmenter (default 10; fewer leave background probabilities "
                         "above the 0.1 loose threshold, so the fill covers the whole image)")
    ap.add_argument("--backbone", default=None,
                    help="train the default segmenter on this pretrained backbone (e.g. lite0; frozen, cached views)")
    ap.add_argument("--seg-input-size", type=int, default=224, help="input size of the default segmenter (default 224)")
    ap.add_argument("--compare", action="store_true",
                    help="run precompute with both default segmenters (PatchCNN, then lite0) side by side")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--fill-threshold", type=float, default=None,
                    help="loose-mask threshold (foreground probability; default the segmenter's recorded one)")
    args = ap.parse_args()

    from dali_abs.cache.format import open_cache
    from dali_abs.cache.precompute import PrecomputeConfig, precompute
    from dali_abs.dataset import Columns, load_dataset
    from dali_abs.models import inpainter as inet
    from dali_abs.synthetic import SyntheticConfig, make_dataset

    with tempfile.TemporaryDirectory(prefix="bench-precompute-") as tmpdir:
        tmp = Path(tmpdir)
        builtin = tmp / "builtin"
        need_builtin = args.data is None or args.segmenter is None
        if need_builtin:
            make_dataset(builtin, SyntheticConfig(size=224, train=args.images), progress=False)
        data = Path(args.data) if args.data else builtin
        segs: list[tuple[Path, dict]] = []
        if args.segmenter is None:
            for b in ([None, "lite0"] if args.compare else [args.backbone]):
                seg, fill, info = default_models(tmp, builtin, args.seg_epochs, backbone=b,
                                                 input_size=args.seg_input_size)
                segs.append((seg, info))
        else:
            fill = inet.export_onnx(inet.build("pushpull"), tmp / "fill.onnx", "pushpull")
            segs.append((Path(args.segmenter), {}))
        if args.inpainter:
            fill = Path(args.inpainter)
        cols = Columns(label=args.col_label, split=args.col_split)
        ds = load_dataset(data, cols)
        cfg = PrecomputeConfig(batch_size=args.batch_size, chunk_size=args.chunk_size)
        if args.fill_threshold is not None:
            cfg = PrecomputeConfig(batch_size=args.batch_size, chunk_size=args.chunk_size,
                                   fill_threshold=args.fill_threshold)
        runs = []
        for i, (seg, train_info) in enumerate(segs):
            res = precompute(ds, seg, fill, tmp / f"cache{i}", cfg, progress=True)
            runs.append(report(res, open_cache(tmp / f"cache{i}"), ds, data if args.data else "built-in, 224 px",
                               seg, train_info, cfg, with_alternatives=i == 0))
        if len(runs) == 2:
            a, b = runs
            print(f"\nside by side: {b['segmenter']['network']} {b['images_per_s']} img/s vs "
                  f"{a['segmenter']['network']} {a['images_per_s']} img/s: ratio {b['images_per_s'] / a['images_per_s']:.2f}")
        for r in runs:
            r["data"] = str(data) if args.data else "builtin-224"
            print(json.dumps(r))


def report(res: dict, cache, ds, where, seg: Path, train_info: dict, cfg, with_alternatives: bool) -> dict:
    """Print one precompute run's speed, time shares and bytes; its JSON record."""
    b = cache.manifest["bytes"]
    stages = res["stage_seconds"]
    total = sum(stages.values())
    shares = {k: round(v / total, 3) for k, v in stages.items()}
    alts = alternatives(cache) if with_alternatives else []
    net = train_info.get("network") or cache.manifest["models"]["segmenter"].get("arch", str(seg))
    print(f"\nprecompute of {len(ds.samples)} images ({where}), segmenter {net}, grid {cache.grid} at "
          f"{cache.work_size} px, fill {cache.manifest['models']['inpainter']['fill']}")
    print(f"  {res['images_per_s']} images/s ({res['seconds']} s, setup {res['setup_seconds']} s)")
    print("  time shares: " + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
    print(f"  cache {b['per_image']} B/image (fills+masks {b['data_per_image']} B), source {b['source_per_image']} "
          f"B/image: ratio {b['ratio_to_source']}")
    box_area = float(np.mean([(x[2] - x[0]) * (x[3] - x[1]) for x in cache.boxes])) / cache.grid ** 2
    loose_frac = float(np.mean([cache.loose(i).mean() for i in range(len(cache))]))
    print(f"  images with a fill: {cache.manifest['counts']['filled']} of {cache.manifest['counts']['cached']}; "
          f"loose cells {loose_frac:.1%}; mean box area {box_area:.1%} of the image")
    if box_area > 0.95:
        print("  WARNING: the loose mask's box covers nearly every image (segmenter undertrained or its background "
              "probabilities sit above the fill threshold); sizes then show the worst case. Pass a better "
              "--segmenter or a higher --fill-threshold.")
    if alts:
        print("\n  storage alternative                                   B/image  +mask B   x source  decode ms")
        for a in alts:
            print(f"  {a['storage']:<52} {a['bytes_per_image']:>8} {str(a['with_mask_bytes_per_image']):>8} "
                  f"{a['ratio_to_source']:>9} {str(a['decode_ms']):>9}")
    return {"benchmark": "precompute", "images": len(ds.samples), "images_per_s": res["images_per_s"],
            "seconds": res["seconds"], "stage_seconds": stages, "stage_shares": shares,
            "cache_bytes_per_image": b["per_image"], "source_bytes_per_image": b["source_per_image"],
            "ratio_to_source": b["ratio_to_source"], "filled": cache.manifest["counts"]["filled"],
            "fill_threshold": cache.fill_threshold, "mean_box_area": round(box_area, 4),
            "loose_cell_fraction": round(loose_frac, 4), "segmenter": train_info or {"network": net, "path": str(seg)},
            "alternatives": alts}


if __name__ == "__main__":
    main()
