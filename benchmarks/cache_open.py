"""Benchmark of the integrity check at cache open (not a timed test).

``create_loader`` opens its cache with :func:`dali_abs.cache.format.open_cache`, which refuses
a damaged cache before the first batch. Without hashes it checks presence and sizes of every
chunk file, the masks against the grid and the manifest against the plan; with hashes
(the default, ``LoaderConfig.check_cache``) it also reads every record, fills and masks file
once for its SHA-256. This measures both, side by side, on a large cache built cheaply: chunk
files written directly (:func:`~dali_abs.cache.format.write_chunk` + ``merge``, no decode, no
model) with real JPEG fills of the sizes a 16 x 16 grid at 224 px gives (a photo-like
texture, boxes of 4 x 4 to 12 x 12 cells), 256 images a chunk.

The first open after the build may be served from the page cache (the files were just
written); ``--cold`` drops it first (needs root; Linux ``/proc/sys/vm/drop_caches``).

    python benchmarks/cache_open.py [--images 50000] [--keep DIR] [--cold]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

GRID, WORK, CHUNK = 16, 224, 256


def _fills(rng: np.random.Generator, n: int = 64) -> list[bytes]:
    """``n`` JPEG fills (q90) of boxes of 4..12 cells a side, from a smooth photo-like texture."""
    from PIL import Image

    patch = WORK // GRID
    coarse = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    tex = np.asarray(Image.fromarray(coarse).resize((WORK, WORK), Image.BICUBIC)).astype(np.int16)
    tex = np.clip(tex + rng.integers(-12, 12, tex.shape), 0, 255).astype(np.uint8)
    out = []
    for _ in range(n):
        h, w = (int(v) * patch for v in rng.integers(4, 13, 2))
        y, x = rng.integers(0, WORK - h + 1), rng.integers(0, WORK - w + 1)
        buf = io.BytesIO()
        Image.fromarray(tex[y:y + h, x:x + w]).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def build(root: Path, images: int, seed: int = 0) -> dict:
    from dali_abs.cache.format import FORMAT, FORMAT_VERSION, PLAN, write_chunk, write_json
    from dali_abs.cache.precompute import merge

    rng = np.random.default_rng(seed)
    fills = _fills(rng)
    chunks = -(-images // CHUNK)
    plan = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "dataset": {"root": str(root / "data"), "layout": "metadata", "fingerprint": "synthetic",
                        "images": images, "ignored": []},
            "models": {"segmenter": {"path": "seg.onnx", "sha256": "0" * 64, "grid": GRID, "input_size": WORK},
                       "inpainter": {"path": "fill.onnx", "sha256": "0" * 64, "fill": "pushpull"}},
            "grid": GRID, "work_size": WORK, "thresholds": {"fill": 0.1, "tight_default": 0.5},
            "mask_encoding": "uint8 [R,R]", "fill_encoding": {"format": "jpeg", "quality": 90},
            "chunk_size": CHUNK, "chunks": chunks, "max_pixels": 100_000_000}
    root.mkdir(parents=True)
    write_json(root / PLAN, plan)
    for k in range(chunks):
        idx = range(k * CHUNK, min(images, (k + 1) * CHUNK))
        entries, blobs = [], []
        for i in idx:
            blob = fills[i % len(fills)]
            entries.append({"id": f"im{i:07d}", "index": i, "path": f"img/{i:07d}.jpg", "label": i % 10,
                            "split": "train", "size": [500, 375], "box": [2, 2, 10, 10], "file_bytes": 30_000,
                            "mtime_ns": 0, "decoder": "dali"})
            blobs.append(blob)
        masks = rng.integers(0, 255, (len(entries), GRID, GRID), dtype=np.uint8)
        write_chunk(root, k, entries, masks, blobs, [])
    return merge(root)


def _drop_page_cache() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    from dali_abs.cache.format import open_cache

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--keep", type=Path, help="build the cache here and keep it (default: a temp folder)")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each open (root)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cache-open-")) if args.keep is None else None
    root = args.keep if args.keep is not None else tmp / "cache"
    try:
        t0 = time.perf_counter()
        manifest = build(root, args.images)
        build_s = time.perf_counter() - t0
        data_bytes = sum(p.stat().st_size for p in (root / "chunks").iterdir())
        rows: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):  # side by side, alternating; the best of the repeats
            for hashes in (False, True):
                cold = _drop_page_cache() if args.cold else False  # affects every process on the machine
                t = time.perf_counter()
                cache = open_cache(root, hashes=hashes)
                rows[hashes].append(time.perf_counter() - t)
                assert len(cache) == args.images
        sizes_s, hash_s = min(rows[False]), min(rows[True])
        mb = data_bytes / 1e6
        res = {"images": args.images, "chunks": manifest["chunks"], "cache_mb": round(mb, 1),
               "bytes_per_image": round(data_bytes / args.images), "build_s": round(build_s, 1),
               "open_sizes_only_ms": round(sizes_s * 1e3, 1), "open_with_hashes_ms": round(hash_s * 1e3, 1),
               "hash_cost_ms": round((hash_s - sizes_s) * 1e3, 1),
               "hash_mb_per_s": round(mb / max(hash_s - sizes_s, 1e-9), 1),
               "page_cache": "dropped before each open" if args.cold and cold else "warm (files just written)",
               "cpu_count": os.cpu_count()}
        print(f"{args.images} images, {res['chunks']} chunks, {mb:.1f} MB of chunk files "
              f"({res['bytes_per_image']} B/image), built in {build_s:.1f} s")
        print(f"open_cache, sizes/grid/plan only : {res['open_sizes_only_ms']:8.1f} ms")
        print(f"open_cache, with SHA-256 (default): {res['open_with_hashes_ms']:8.1f} ms "
              f"(+{res['hash_cost_ms']:.1f} ms = {res['hash_mb_per_s']:.0f} MB/s; page cache {res['page_cache']})")
        print(json.dumps(res))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
