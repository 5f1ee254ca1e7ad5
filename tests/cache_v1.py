"""A cache in the format version 1 layout, written from a version 2 cache (test helper).

Version 1 stored each fill as the whole JPEG, each chunk record as one JSON object per image
with ``fill`` = [offset, size], and the masks always as ``masks.npy`` in the deflated ``.npz``;
the rest (plan, manifest) was laid out as now. :func:`write_v1` writes that layout the way version 1's
``write_chunk`` did, with the same contents (the fill JPEGs as :meth:`Cache.fill_bytes` gives
them), so the tests can hold the reader for old caches to them.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from dali_abs.cache.format import (CHUNKS, MANIFEST, PLAN, chunk_name, concat_bytes, open_cache, read_chunk_record,
                                   read_masks, sha256_bytes, write_json)


V1_MASK_ENCODING = ("uint8 [R,R] round(255 * foreground probability), one deflated .masks.npz per chunk "
                    "(np.load(path)['masks'])")
V1_PLACEHOLDER = "a smooth continuation of the fill, more than placeholder_ring px from the loose cells (the inpainter's hole reaches that far)"


def v1_masks(masks) -> bytes:
    """Version 1's masks file: the masks as ``masks.npy`` in a deflated zip with a fixed timestamp."""
    npy = io.BytesIO()
    np.save(npy, masks)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("masks.npy", date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, npy.getvalue(), compresslevel=9)
    return buf.getvalue()


def write_v1(src: Path, dst: Path) -> Path:
    """Copy the finished version 2 cache ``src`` to ``dst`` in the version 1 layout; merge it there."""
    from dali_abs.cache.precompute import merge

    cache = open_cache(src)
    (dst / CHUNKS).mkdir(parents=True)
    plan = json.loads((src / PLAN).read_text())
    fe = plan["fill_encoding"]
    fill_encoding = {"format": fe["format"], "quality": fe["quality"], "huffman": "optimized",
                     **{key: fe[key] for key in ("resolution", "placeholder_ring")},
                     "placeholder": V1_PLACEHOLDER, "region": fe["region"]}
    write_json(dst / PLAN, {**plan, "format_version": 1, "mask_encoding": V1_MASK_ENCODING,
                            "fill_encoding": fill_encoding})
    row = 0
    for k in range(int(plan["chunks"])):
        rec = read_chunk_record(src, k)
        name = chunk_name(k)
        fills = [cache.fill_bytes(row + i) for i in range(len(rec["entries"]))]
        row += len(rec["entries"])
        blob, spans = concat_bytes([f for f in fills if f is not None])
        it = iter(spans)
        entries = [{**e, "fill": list(next(it)) if f is not None else None} for e, f in zip(rec["entries"], fills)]
        (dst / CHUNKS / f"{name}.fills.bin").write_bytes(blob)
        masks = v1_masks(read_masks(src / CHUNKS / rec["masks"]))
        (dst / CHUNKS / rec["masks"]).write_bytes(masks)
        write_json(dst / CHUNKS / f"{name}.json",
                   {"format": rec["format"], "format_version": 1, "chunk": k,
                    "fills": f"{name}.fills.bin", "fills_sha256": sha256_bytes(blob), "fills_bytes": len(blob),
                    "masks": rec["masks"], "masks_sha256": sha256_bytes(masks), "masks_bytes": len(masks),
                    "entries": entries, "skipped": rec["skipped"]}, compact=True)
    merge(dst)
    assert (dst / MANIFEST).is_file()
    return dst
