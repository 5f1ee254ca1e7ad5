"""The precompute cache on disk, and the reading API the loader uses (:func:`open_cache`).

Layout of a cache folder (format version :data:`FORMAT_VERSION`)::

    CACHE/plan.json                 settings of the run (dataset fingerprint, model hashes, grid, ...)
    CACHE/chunks/c00000.fills.bin   fills of chunk 0: the JPEGs of the images with a non-empty fill, each
                                    without the parts all of them share (:mod:`dali_abs.cache.jpeg_parts`),
                                    concatenated (sizes in the chunk record; offsets are their running sum)
    CACHE/chunks/c00000.masks.npz   uint8 [n, R, R]: soft foreground probability, round(p * 255), deflated
                                    as is or as 2-D deltas (``masks`` or ``masks_delta``: :func:`read_masks`),
                                    written deterministically
    CACHE/chunks/c00000.json        the chunk record, written last (its presence = chunk finished): file
                                    names, sizes and SHA-256, the fills' shared JPEG parts (``jpeg``), the
                                    images as columns (``images``, :mod:`dali_abs.cache.columns`), the skipped
    CACHE/parts/shard-<i>-of-<n>.json  written by each shard when its chunks are done
    CACHE/manifest.json             written by ``cache merge`` (or the last shard): the cache is complete

Per image the cache stores:

- the **soft patch mask**: foreground probability on the R x R grid as uint8 ``round(p * 255)``
  (so loose and tight masks are chosen at load time by thresholding);
- the **fill**: the inpainter's output inside the bounding box of the loose mask
  (``p > fill_threshold``: the loose threshold recorded with the segmenter, chosen on its
  validation images, unless the user passed one; 0.1 = background probability < 0.9 as in the
  paper for ground-truth masks and for segmenters that record none),
  cut from the working-size (segmenter input size S) image, resized to the source's resolution
  where that is smaller (:func:`tile_size`: never more pixels than the source has) and stored as
  JPEG; the box's pixels more than :data:`PLACEHOLDER_RING` px away from the loose cells hold a
  smooth placeholder (:meth:`Cache.placeholder`; the loader never shows them). The box
  is in **grid cells** ``(r0, c0, r1, c1)`` (half-open), so it maps onto the source image at
  any resolution: rows ``r0 * H / R .. r1 * H / R``, columns ``c0 * W / R .. c1 * W / R``.

The manifest's ``thresholds`` record the fill (loose) threshold and the tight (cut-out)
threshold the loader uses unless told otherwise, each with where it came from
(:attr:`Cache.thresholds`, shown by ``dali-abs cache info``).

The clean background of image j is image j with its loose-mask cells replaced by the fill
(resized to the cells' size in the image): see :meth:`Cache.background`. A loader that
decodes image j anyway (to pair it with another sample's foreground) needs no second
full-image decode, only the small fill JPEG.

Version 1 caches (whole JPEGs in the fills file, one JSON object per image in ``entries``) still
read: :func:`read_chunk_record` gives both as version 1's ``entries``, and
:meth:`Cache.fill_bytes` the same JPEG bytes either way.

Every file is written atomically (temp file + rename); the chunk record is written after
its fills and mask files and names their SHA-256, so a killed run leaves either a finished
chunk or one that the next run redoes. All writes are deterministic (PIL JPEG with fixed
quality and no metadata), so a resumed run yields
byte-identical files.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from dali_abs.cache.columns import decode_columns, encode_columns
from dali_abs.cache.jpeg_parts import Parts, compact, rebuild, shared_parts, stored_size, tables_of
from dali_abs.errors import DaliAbsError
from dali_abs.files import atomic_write_bytes, atomic_write_text
from dali_abs.segmenter.thresholds import DEFAULT_LOOSE, DEFAULT_TIGHT, Thresholds

FORMAT = "dali-abs-cache"
FORMAT_VERSION = 2  # written; READ_VERSIONS are read
READ_VERSIONS = (1, 2)
PLAN = "plan.json"
MANIFEST = "manifest.json"
CHUNKS = "chunks"
PARTS = "parts"
# Library defaults where nothing was chosen (a segmenter that records no thresholds): the paper's.
DEFAULT_FILL_THRESHOLD = DEFAULT_LOOSE  # foreground probability above which a cell is filled (loose mask)
DEFAULT_TIGHT_THRESHOLD = DEFAULT_TIGHT  # foreground probability above which a cell is cut out (tight mask)


class CacheError(DaliAbsError, ValueError):
    """A cache folder that is missing, incomplete, or does not match what was asked."""


def manifest_thresholds(manifest: dict) -> Thresholds:
    """The tight and fill (loose) thresholds a cache's plan or manifest records, with their sources.

    Caches written before the tight threshold was recorded get the library default 0.5, said so.
    """
    t = manifest.get("thresholds", {})
    return Thresholds(tight=float(t.get("tight", DEFAULT_TIGHT_THRESHOLD)), loose=float(t["fill"]),
                      tight_source=t.get("tight_source", "library default (the cache records no tight threshold)"),
                      loose_source=t.get("fill_source", "precompute --fill-threshold or its default"))


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunk_name(k: int) -> str:
    return f"c{k:05d}"


def part_name(shard: int, shards: int) -> str:
    return f"shard-{shard}-of-{shards}.json"


def quantize(prob: np.ndarray) -> np.ndarray:
    """Float foreground probability 0..1 -> uint8 round(p * 255)."""
    return np.clip(np.rint(np.asarray(prob, np.float32) * 255.0), 0, 255).astype(np.uint8)


def threshold_mask(mask_u8: np.ndarray, threshold: float) -> np.ndarray:
    """Bool cells where the stored probability (``mask_u8 / 255``) is above ``threshold``."""
    return mask_u8.astype(np.float32) / np.float32(255.0) > np.float32(threshold)


def bounding_box(cells: np.ndarray) -> tuple[int, int, int, int]:
    """Half-open (r0, c0, r1, c1) of the True cells of a 2-D bool grid; (0, 0, 0, 0) when none."""
    rows, cols = np.nonzero(cells.any(1))[0], np.nonzero(cells.any(0))[0]
    if rows.size == 0:
        return (0, 0, 0, 0)
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def encode_jpeg(rgb: np.ndarray, quality: int, optimize: bool = True) -> bytes:
    """Deterministic baseline JPEG bytes (PIL, fixed quality, 4:2:0, no metadata) of uint8 HWC RGB
    ``rgb``. ``optimize``: Huffman tables optimised for the image; either way the same pixels
    decode (the tables only code the same coefficients)."""
    from PIL import Image

    img = Image.fromarray(rgb)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality), optimize=bool(optimize), progressive=False)
    return buf.getvalue()


def encode_fill(rgb: np.ndarray, quality: int) -> bytes:
    """The fill JPEG of a tile (:func:`encode_jpeg`) with the Huffman tables that store it in fewer
    bytes (:func:`~dali_abs.cache.jpeg_parts.stored_size`): the standard ones, which the chunk
    record holds once, or ones optimised for the tile, which it stores with itself (on a small
    tile they are a quarter of the file). The same pixels decode either way."""
    best = encode_jpeg(rgb, quality, optimize=True)
    std = encode_jpeg(rgb, quality, optimize=False)
    parts = fill_parts(best)
    return std if parts is not None and stored_size(std, parts) <= stored_size(best, parts) else best


@functools.lru_cache(maxsize=1)
def _standard_tables() -> bytes:
    """The Huffman tables PIL writes without optimize (ITU T.81 Annex K): any image gives them."""
    return tables_of(encode_jpeg(np.zeros((1, 1, 3), np.uint8), 90, optimize=False))


def fill_parts(jpeg: bytes) -> Parts | None:
    """The parts that the fills of a chunk share with ``jpeg`` (:mod:`dali_abs.cache.jpeg_parts`),
    the encoder's standard Huffman tables among them; None for a JPEG of another layout."""
    return shared_parts(jpeg, _standard_tables())


PLACEHOLDER_RING = 2  # tile px around the loose cells kept as the inpainter wrote them


def tile_size(box, grid: int, work_size: int, source_hw) -> tuple[int, int]:
    """(rows, columns) of the stored fill of the box cells ``(r0, c0, r1, c1)``: the box's extent at
    the work size, or at the source image's size (``source_hw`` = rows, columns) where that is
    smaller, so that no fill holds more pixels than its source has; at least 1 x 1."""
    r0, c0, r1, c1 = (int(v) for v in box)
    h, w = (int(v) for v in source_hw)
    patch = int(work_size) // int(grid)
    return (min((r1 - r0) * patch, max(1, round((r1 - r0) * h / grid))),
            min((c1 - c0) * patch, max(1, round((c1 - c0) * w / grid))))


def stored_tile_size(manifest: dict, box, source_hw) -> tuple[int, int]:
    """The fill size a cache stores for ``box``: :func:`tile_size`, or in caches written before fills
    were capped at the source's resolution, the box at the work size."""
    grid, work = int(manifest["grid"]), int(manifest["work_size"])
    if "placeholder_ring" in manifest.get("fill_encoding", {}):
        return tile_size(box, grid, work, source_hw)
    r0, c0, r1, c1 = (int(v) for v in box)
    return (r1 - r0) * (work // grid), (c1 - c0) * (work // grid)


def _grow(mask: np.ndarray, steps: int) -> np.ndarray:
    """``mask`` (bool 2-D) grown by ``steps`` pixels, one 8-neighbourhood step at a time."""
    for _ in range(steps):
        grown = mask.copy()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        mask = grown
    return mask


def placeholder_mask(tile_hw, cells: np.ndarray, ring: int = PLACEHOLDER_RING) -> np.ndarray:
    """Bool [rows, columns]: the tile pixels that hold the smooth placeholder, not the fill. ``cells``:
    bool [r1-r0, c1-c0] the box's loose cells; a tile pixel belongs to the cell its centre lies in
    (the tile spans the box linearly). Pixels within ``ring`` px of a loose cell keep the
    inpainter's output: the loader's bilinear reads of the loose cells reach one pixel beyond them."""
    th, tw = (int(v) for v in tile_hw)
    ch, cw = cells.shape
    ry = ((np.arange(th) + 0.5) * ch / th).astype(np.intp)
    cx = ((np.arange(tw) + 0.5) * cw / tw).astype(np.intp)
    near = cells[np.minimum(ry, ch - 1)][:, np.minimum(cx, cw - 1)]
    return ~_grow(near, int(ring))


def hole_margin(box, grid: int, work_size: int, source_hw, ring: int = PLACEHOLDER_RING) -> int:
    """Work-size px by which the inpainter's hole reaches past the loose cells, so that the
    ``ring`` tile px the stored fill keeps around them (:func:`placeholder_mask`) are fill too."""
    r0, c0, r1, c1 = (int(v) for v in box)
    patch = int(work_size) // int(grid)
    th, tw = tile_size(box, grid, work_size, source_hw)
    return int(np.ceil(ring * max((r1 - r0) * patch / th, (c1 - c0) * patch / tw)))


def fill_hole(cells: np.ndarray, grid: int, work_size: int, source_hw) -> np.ndarray:
    """float32 [1, S, S] inpainter hole (1 = fill) of one image at the work size S: its loose cells
    (bool [R, R]) grown by :func:`hole_margin` px (8-neighbourhood)."""
    patch = int(work_size) // int(grid)
    hole = np.repeat(np.repeat(cells, patch, 0), patch, 1)
    box = bounding_box(cells)
    if box[2] > box[0]:
        hole = _grow(hole, hole_margin(box, grid, work_size, source_hw))
    return hole[None].astype(np.float32)


def _smooth_extension(tile: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``tile`` with the pixels outside ``keep`` replaced by a smooth continuation of the kept ones
    (a mask-weighted pyramid: averages going down, bilinear going up), so the placeholder has no
    edge against the fill and costs the JPEG almost nothing."""
    from PIL import Image

    def level(img: np.ndarray, w: np.ndarray) -> np.ndarray:
        h, wd = w.shape
        if w.min() > 0 or (h <= 1 and wd <= 1):
            return img
        h2, w2 = (h + 1) // 2, (wd + 1) // 2
        pi = np.zeros((h2 * 2, w2 * 2, 3), np.float32)
        pw = np.zeros((h2 * 2, w2 * 2), np.float32)
        pi[:h, :wd], pw[:h, :wd] = img * w[..., None], w
        si, sw = pi.reshape(h2, 2, w2, 2, 3).sum((1, 3)), pw.reshape(h2, 2, w2, 2).sum((1, 3))
        coarse = level(si / np.maximum(sw, np.float32(1e-12))[..., None], (sw > 0).astype(np.float32))
        up = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(coarse[..., k])).resize((wd, h), Image.BILINEAR))
                       for k in range(3)], -1)
        return np.where(w[..., None] > 0, img, up)

    out = level(tile.astype(np.float32), keep.astype(np.float32))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def fill_tile(filled: np.ndarray, cells: np.ndarray, box, grid: int, source_hw) -> np.ndarray:
    """The stored fill of one image: uint8 HWC of :func:`tile_size`, cut from ``filled`` (the
    inpainter's output at the work size, uint8 HWC, its hole the loose cells grown by
    :func:`hole_margin`) over the box cells ``box``, resized down to the source's resolution where
    that is smaller (PIL bilinear, antialiased), with the :func:`placeholder_mask` pixels replaced
    by a smooth continuation of the fill: the loader never shows them, and they cost the JPEG
    almost nothing."""
    from PIL import Image

    r0, c0, r1, c1 = (int(v) for v in box)
    patch = filled.shape[0] // int(grid)
    crop = filled[r0 * patch:r1 * patch, c0 * patch:c1 * patch]
    th, tw = tile_size(box, grid, filled.shape[0], source_hw)
    if (th, tw) != crop.shape[:2]:
        crop = np.asarray(Image.fromarray(crop).resize((tw, th), Image.BILINEAR))
    crop = np.ascontiguousarray(crop)
    sub = cells[r0:r1, c0:c1]
    if sub.all():
        return crop
    keep = ~placeholder_mask((th, tw), sub)
    return _flatten_far_blocks(_smooth_extension(crop, keep), keep)


JPEG_MCU = 16  # px: the JPEG's coding unit at 4:2:0 (a 16 x 16 luma area and its two 8 x 8 chroma blocks)
FLAT_MARGIN = 2  # px between a flattened unit and the nearest kept pixel (chroma upsampling reads 1 px across)


def _flatten_far_blocks(tile: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``tile`` with every JPEG coding unit (:data:`JPEG_MCU` px squares from the tile's corner)
    that has no kept pixel within :data:`FLAT_MARGIN` px set to one colour: the mean of the pixels it
    replaces, so the tile's mean colour stays within half a level. A flat unit costs the JPEG a
    few bits where a smooth gradient costs a few coefficients. The kept pixels decode exactly as
    before: JPEG codes each unit on its own, and the decoder's chroma upsampling reads at most one
    pixel into the next unit, which the margin keeps away from them."""
    near = _grow(keep, FLAT_MARGIN)
    th, tw = keep.shape
    u = JPEG_MCU
    hu, wu = -(-th // u), -(-tw // u)
    pad = np.zeros((hu * u, wu * u), bool)
    pad[:th, :tw] = near
    far_units = ~pad.reshape(hu, u, wu, u).any((1, 3))
    if not far_units.any():
        return tile
    flat = np.kron(far_units, np.ones((u, u), bool))[:th, :tw]
    out = tile.copy()
    out[flat] = np.rint(tile[flat].reshape(-1, 3).mean(0)).astype(np.uint8)
    return out


def decode_image(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def concat_bytes(blobs: Sequence[bytes]) -> tuple[bytes, list[tuple[int, int]]]:
    """The blobs back to back, and each one's (offset, size)."""
    spans, off = [], 0
    for b in blobs:
        spans.append((off, len(b)))
        off += len(b)
    return b"".join(blobs), spans


def write_json(path: Path, obj, compact: bool = False) -> None:
    text = json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj, indent=1)
    atomic_write_text(path, text + "\n")


def read_json(path: Path, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CacheError(f"{path}: {what} not found") from None
    except (OSError, ValueError) as e:
        raise CacheError(f"{path}: cannot read {what} ({e})") from None


MASKS_SUFFIX = "masks.npz"


def masks_delta(masks: np.ndarray) -> np.ndarray:
    """uint8 [n, R, R]: each cell minus its left and upper neighbours plus its upper-left one
    (modulo 256; missing neighbours count 0): a segmenter's soft masks change smoothly, so most
    of these are small and deflate 13-26 % smaller. :func:`masks_undelta` inverts it exactly."""
    a = masks.astype(np.int16)
    d = np.diff(np.diff(a, axis=2, prepend=0), axis=1, prepend=0)
    return (d & 255).astype(np.uint8)


def masks_undelta(delta: np.ndarray) -> np.ndarray:
    """The masks of :func:`masks_delta` (two running sums, modulo 256)."""
    return np.cumsum(np.cumsum(delta, axis=1, dtype=np.uint8), axis=2, dtype=np.uint8)


def encode_masks(masks: np.ndarray) -> bytes:
    """An ``.npz`` holding the masks (uint8 [n, R, R]), deflated, as ``masks`` or as their 2-D
    delta ``masks_delta`` (:func:`masks_delta`), whichever is smaller: ground-truth coverage is
    mostly 0 and 255 and deflates best as is; a segmenter's smooth probabilities deflate 13-26 %
    smaller as deltas (the benchmark's). Lossless either way (:func:`read_masks`). Written with a fixed zip
    timestamp, so the same masks give the same bytes (a resumed precompute is byte-identical)."""
    import zipfile

    def npz(name: str, arr: np.ndarray) -> bytes:
        npy = io.BytesIO()
        np.save(npy, arr)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, npy.getvalue(), compresslevel=9)
        return buf.getvalue()

    plain = npz("masks", masks)
    delta = npz("masks_delta", masks_delta(masks))
    return delta if len(delta) < len(plain) else plain


def read_masks(path: Path) -> np.ndarray:
    """The masks of one chunk file: ``.masks.npz`` holding ``masks`` or ``masks_delta``
    (:func:`encode_masks`), or ``.masks.npy`` (caches written before the npz)."""
    try:
        data = np.load(path)
        if isinstance(data, np.ndarray):
            return data
        with data:
            return masks_undelta(data["masks_delta"]) if "masks_delta" in data.files else data["masks"]
    except FileNotFoundError:
        raise
    except Exception as e:  # a damaged .npz fails in many ways (zip, zlib, the npy header's parser): one error
        raise ValueError(f"not a readable masks file ({type(e).__name__}: {e})") from None


def write_chunk(root: Path, k: int, entries: list[dict], masks: np.ndarray, fills: list[bytes | None],
                skipped: list[dict]) -> dict:
    """Write chunk ``k`` (fills, masks, then the record) atomically; returns the record as
    :func:`read_chunk_record` returns it.

    ``entries[i]`` (dict with at least ``index``) pairs with ``masks[i]`` and ``fills[i]``
    (JPEG bytes, None when the loose mask is empty). On disk (version 2) the fills are stored
    without the JPEG parts they share (:mod:`dali_abs.cache.jpeg_parts`; the record holds those
    once, under ``jpeg``) and the entries as columns (:mod:`dali_abs.cache.columns`, under
    ``images``; ``fill`` = the stored size, 0 for none; offsets are the running sum).
    """
    d = root / CHUNKS
    name = chunk_name(k)
    parts = next((p for p in (fill_parts(f) for f in fills if f is not None) if p is not None), None)
    stored = [None if f is None else compact(f, parts) for f in fills]
    blob = b"".join(f for f in stored if f is not None)
    rows = [{**e, "fill": 0 if f is None else len(f)} for e, f in zip(entries, stored)]
    images = encode_columns(rows)
    decoded = decode_columns(images)
    if decoded != rows:  # the columns are exact by construction: a failure here is a bug
        raise CacheError(f"{d / name}: the columnar record does not give the entries back")
    mask_bytes = encode_masks(np.ascontiguousarray(masks, np.uint8).reshape(len(entries), *masks.shape[1:]))
    atomic_write_bytes(d / f"{name}.fills.bin", blob)
    atomic_write_bytes(d / f"{name}.{MASKS_SUFFIX}", mask_bytes)
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, "chunk": k,
              "fills": f"{name}.fills.bin", "fills_sha256": sha256_bytes(blob), "fills_bytes": len(blob),
              "masks": f"{name}.{MASKS_SUFFIX}", "masks_sha256": sha256_bytes(mask_bytes), "masks_bytes": len(mask_bytes),
              "jpeg": parts.to_json() if parts is not None else None, "images": images, "skipped": skipped}
    write_json(d / f"{name}.json", record, compact=True)
    return {**record, "entries": _fill_spans(decoded), "jpeg_parts": parts}


def _fill_spans(rows: list[dict]) -> list[dict]:
    """``rows`` (version 2: ``fill`` = stored size, 0 for none) with ``fill`` = [offset, size] or
    None, as version 1 stored it: the fills lie back to back in the chunk's fills file."""
    off = 0
    for e in rows:
        size = int(e["fill"])
        e["fill"] = [off, size] if size else None
        off += size
    return rows


def _expand(rec: dict, path: Path) -> dict:
    """A version 2 record with ``entries`` (one dict per image, ``fill`` = [offset, size] or None,
    as in version 1) and ``jpeg_parts`` (:class:`~dali_abs.cache.jpeg_parts.Parts` or None);
    version 1 records get ``jpeg_parts`` None."""
    if rec.get("format_version", 1) < 2:
        return {**rec, "jpeg_parts": None}
    try:
        entries = _fill_spans(decode_columns(rec["images"]))
        parts = Parts.from_json(rec["jpeg"]) if rec.get("jpeg") else None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:  # AttributeError: a list for a dict
        raise CacheError(f"{path}: damaged chunk record ({type(e).__name__}: {e}); delete it and rerun the same "
                         "`dali-abs precompute` command (it redoes that chunk)") from None
    return {**rec, "entries": entries, "jpeg_parts": parts}


def read_chunk_record(root: Path, k: int) -> dict | None:
    """The record of chunk ``k`` (format version 1 or 2, as :func:`_expand` makes it), or None when
    the chunk is not finished."""
    path = root / CHUNKS / f"{chunk_name(k)}.json"
    if not path.is_file():
        return None
    rec = read_json(path, "chunk record")
    if not isinstance(rec, dict):
        raise CacheError(f"{path}: not a chunk record of this cache (a JSON {type(rec).__name__}, not an object)")
    if rec.get("format") != FORMAT or rec.get("chunk") != k:
        raise CacheError(f"{path}: not a chunk record of this cache (format {rec.get('format')!r}, "
                         f"chunk {rec.get('chunk')!r})")
    return _expand(rec, path)


# What readers of manifest.json rely on: key -> type (nested keys dotted). One table for
# open_cache, cache info and cache verify, so a hand-edited or damaged manifest is one clear error.
MANIFEST_FIELDS = {"grid": int, "work_size": int, "chunks": int, "dataset": dict, "dataset.root": str,
                   "dataset.fingerprint": str, "models": dict, "thresholds": dict, "thresholds.fill": (int, float),
                   "fill_encoding": dict, "mask_encoding": str, "counts": dict, "bytes": dict, "skipped": list,
                   "chunk_files": list}


def check_manifest(manifest, path: Path) -> dict:
    """``manifest`` when it holds every field of :data:`MANIFEST_FIELDS` with its type, else a
    :class:`CacheError` naming the first field at fault and the fix."""
    fix = f"Rewrite it from the chunk records with `dali-abs cache merge {path.parent}`, or rebuild the cache"
    if not isinstance(manifest, dict):
        raise CacheError(f"{path}: damaged cache manifest: not a JSON object. {fix}")
    for key, kind in MANIFEST_FIELDS.items():
        value, found = manifest, True
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                found = False
                break
            value = value[part]
        if not found:
            raise CacheError(f"{path}: damaged cache manifest: {key!r} is missing. {fix}")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CacheError(f"{path}: damaged cache manifest: {key!r} is {value!r}, not of type "
                             f"{getattr(kind, '__name__', 'number')}. {fix}")
        if kind is int and value < (1 if key in ("grid", "work_size") else 0):
            raise CacheError(f"{path}: damaged cache manifest: {key!r} is {value}. {fix}")
    return manifest


def manifest_problems(root: Path, manifest: dict) -> list[str]:
    """Settings of ``manifest.json`` that differ from the run's ``plan.json`` (an edited or damaged manifest).

    ``merge`` writes the manifest as the plan plus counts, so every plan key must hold the same value.
    """
    plan_path = root / PLAN
    if not plan_path.is_file():
        return [f"{plan_path}: missing (every cache has one; copy the whole cache folder)"]
    plan = read_json(plan_path, "cache plan")
    diff = [k for k in plan if manifest.get(k) != plan[k]]
    if not diff:
        return []
    shown = ", ".join(f"{k} {manifest.get(k)!r} (plan: {plan[k]!r})" if not isinstance(plan[k], dict) else k
                      for k in diff[:4])
    return [f"{root / MANIFEST}: differs from {PLAN} in {shown}; the manifest was edited or damaged: "
            f"run `dali-abs cache merge {root}` to rewrite it"]


def chunk_problems(root: Path, k: int, rec: dict, listed: dict, hashes: bool = True) -> list[str]:
    """What is wrong with the files of finished chunk ``k`` (its record ``rec``), each naming the file.

    Against the record: its fill spans tile its ``fills_bytes``; the fills and masks files exist with
    the byte sizes it names and (``hashes``) the SHA-256 it names; against the manifest's entry
    ``listed`` (from ``chunk_files``): the record and both files have the SHA-256 the manifest
    holds. Without ``hashes`` only the spans, presence and sizes are checked (no file is read).
    One truth for ``cache verify`` and for :func:`open_cache`.
    """
    d = root / CHUNKS
    fix = (f"delete {d / (chunk_name(k) + '.json')} and rerun the same `dali-abs precompute` command (it redoes "
           f"that chunk), or rebuild the cache")
    problems = []
    if hashes and listed.get("record_sha256") != sha256_file(d / f"{chunk_name(k)}.json"):
        problems.append(f"{d / (chunk_name(k) + '.json')}: SHA-256 differs from the one {MANIFEST} holds "
                        f"(the record was edited or damaged); {fix}")
    spans = _spans_problem(rec)
    if spans:  # without the hashes nothing else sees it, and the loader would read past a fill
        problems.append(f"{d / (chunk_name(k) + '.json')}: {spans} (the record was edited or damaged); {fix}")
    for key in ("fills", "masks"):
        p = d / str(rec[key])
        if not p.is_file():
            problems.append(f"{p}: missing; {fix}")
            continue
        size = p.stat().st_size
        if size != rec[f"{key}_bytes"]:
            problems.append(f"{p}: {size} bytes, its record says {rec[f'{key}_bytes']} (truncated or "
                            f"overwritten); {fix}")
        elif hashes and not (sha256_file(p) == rec[f"{key}_sha256"] == listed.get(f"{key}_sha256")):
            problems.append(f"{p}: SHA-256 differs from the one its record and {MANIFEST} hold (bytes changed "
                            f"on disk); {fix}")
    return problems


def _spans_problem(rec: dict) -> str | None:
    """Where the record's fill spans fail to tile its fills file (``fills_bytes``), else None."""
    end = 0
    for e in rec["entries"]:
        span = e.get("fill")
        if span is None:
            continue
        if not (isinstance(span, list) and len(span) == 2 and all(type(v) is int for v in span)
                and span[0] == end and span[1] >= 0):
            return f"image {e.get('id')!r} has fill span {span!r}, expected [{end}, size]"
        end += span[1]
    if end != rec["fills_bytes"]:
        return f"its fill sizes add up to {end} B, its fills_bytes says {rec['fills_bytes']!r}"
    return None


def masks_problem(path: Path, masks: np.ndarray, n: int, grid: int) -> str | None:
    """The masks array of a chunk is uint8 [n, R, R] for its n entries and the manifest's grid R."""
    if masks.dtype != np.uint8 or masks.shape != (n, grid, grid):
        return (f"{path}: masks are {masks.dtype} {list(masks.shape)}, expected uint8 [{n}, {grid}, {grid}] "
                f"({n} entries in the record, grid {grid} in {MANIFEST})")
    return None


@dataclass
class Cache:
    """A finished cache, read for training.

    Attributes: :attr:`root`, :attr:`manifest`, :attr:`grid` (R), :attr:`work_size` (S, the px
    size the fill was computed at), :attr:`fill_threshold`, :attr:`thresholds` (tight and fill
    thresholds with their sources: what the loader uses by default), :attr:`ids` (cached image ids, dataset
    order), :attr:`indices` (their dataset sample index), :attr:`relpaths` (path under the dataset
    root), :attr:`labels`, :attr:`masks` (uint8 [N, R, R], ``round(p * 255)``), :attr:`boxes`
    (int32 [N, 4] grid-cell boxes ``r0, c0, r1, c1``; all zero = nothing filled), :attr:`fill_spans`
    (int64 [N, 3]: chunk number, byte offset in its fills file, byte size; size 0 = no fill),
    :attr:`sizes` (int32 [N, 2]: rows, columns of each source image).
    """

    root: Path
    manifest: dict
    ids: list[str]
    indices: np.ndarray
    relpaths: list[str]
    labels: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    fill_spans: np.ndarray
    sizes: np.ndarray
    hashes_checked: bool = False  # open_cache compared every file with the SHA-256 the manifest holds
    jpeg_parts: list = None  # per chunk: the JPEG parts its fills share (Parts), None where stored whole (version 1)

    @property
    def grid(self) -> int:
        return int(self.manifest["grid"])

    @property
    def work_size(self) -> int:
        return int(self.manifest["work_size"])

    @property
    def fill_threshold(self) -> float:
        return float(self.manifest["thresholds"]["fill"])

    @property
    def thresholds(self) -> Thresholds:
        """The recorded tight (cut-out) and loose (= fill) thresholds and where they came from."""
        return manifest_thresholds(self.manifest)

    @property
    def data_root(self) -> Path:
        return Path(self.manifest["dataset"]["root"])

    def __len__(self) -> int:
        return len(self.ids)

    def position(self, image_id: str) -> int:
        """Row of ``image_id`` in the cache arrays."""
        if not hasattr(self, "_pos"):
            self._pos = {s: i for i, s in enumerate(self.ids)}
        try:
            return self._pos[image_id]
        except KeyError:
            raise CacheError(f"{self.root}: image id {image_id!r} is not in the cache "
                             "(skipped or not in the dataset; see `dali-abs cache info`)") from None

    def _row(self, key: str | int) -> int:
        return key if isinstance(key, (int, np.integer)) else self.position(key)

    def mask(self, key: str | int) -> np.ndarray:
        """Float32 [R, R] foreground probability (quantised to 1/255)."""
        return self.masks[self._row(key)].astype(np.float32) / 255.0

    def loose(self, key: str | int, threshold: float | None = None) -> np.ndarray:
        """Bool [R, R] loose mask (default: the threshold the fill was computed with)."""
        return threshold_mask(self.masks[self._row(key)], self.fill_threshold if threshold is None else threshold)

    def tight(self, key: str | int, threshold: float | None = None) -> np.ndarray:
        """Bool [R, R] tight mask (cut-out alpha), foreground probability above ``threshold``
        (default: the cache's recorded tight threshold)."""
        return threshold_mask(self.masks[self._row(key)], self.thresholds.tight if threshold is None else threshold)

    def fill_files(self) -> list[Path]:
        """The chunks' fills files in chunk order (``fill_spans[:, 0]`` indexes this list)."""
        return [self.root / CHUNKS / f"{chunk_name(k)}.fills.bin" for k in range(int(self.manifest["chunks"]))]

    def fill_bytes(self, key: str | int) -> bytes | None:
        """The fill JPEG of an image (the encoder's bytes, put back together from the stored form:
        :func:`~dali_abs.cache.jpeg_parts.rebuild`), None when its loose mask is empty."""
        k, off, size = self.fill_spans[self._row(key)].tolist()
        if size == 0:
            return None
        if not hasattr(self, "_maps"):
            self._maps = {}
        if k not in self._maps:  # a plain ndarray over the map: slicing a np.memmap costs more than the copy
            self._maps[k] = np.asarray(np.memmap(self.root / CHUNKS / f"{chunk_name(k)}.fills.bin", np.uint8, "r"))
        return rebuild(self._maps[k][off:off + size].tobytes(), self.jpeg_parts[k] if self.jpeg_parts else None)

    def fill(self, key: str | int) -> np.ndarray | None:
        """uint8 HWC RGB fill over the box (:func:`tile_size`: the box at the work size or at the
        source's size where that is smaller), None when nothing was filled."""
        data = self.fill_bytes(key)
        return None if data is None else decode_image(data)

    def placeholder(self, key: str | int, tile_hw=None) -> np.ndarray | None:
        """Bool [rows, columns] of the fill: True where it holds the smooth placeholder (never
        shown by the loader), None when nothing was filled. ``tile_hw``: the fill's size when known."""
        row = self._row(key)
        r0, c0, r1, c1 = (int(v) for v in self.boxes[row])
        if r1 <= r0:
            return None
        if tile_hw is None:
            tile_hw = self.fill(row).shape[:2]
        ring = self.manifest.get("fill_encoding", {}).get("placeholder_ring", 0)
        return placeholder_mask(tile_hw, self.loose(row)[r0:r1, c0:c1], ring)

    def background(self, key: str | int, image: np.ndarray | None = None) -> np.ndarray:
        """uint8 HWC RGB clean background at the source image's size.

        ``image``: the decoded source image (uint8 HWC RGB); read from the dataset when None.
        Cells of the loose mask are replaced by the fill, resized (bilinear) to the box's
        size in the image; all other pixels are the source pixels.
        """
        from PIL import Image

        row = self._row(key)
        if image is None:
            from dali_abs.files import read_rgb

            image = read_rgb(self.data_root / self.relpaths[row])
        out = np.array(image, np.uint8, copy=True)
        r0, c0, r1, c1 = (int(v) for v in self.boxes[row])
        if r1 <= r0:
            return out
        h, w = out.shape[:2]
        R = self.grid
        ys = [round(i * h / R) for i in range(R + 1)]
        xs = [round(i * w / R) for i in range(R + 1)]
        y0, y1, x0, x1 = ys[r0], ys[r1], xs[c0], xs[c1]
        if y1 <= y0 or x1 <= x0:
            return out
        fill = np.asarray(Image.fromarray(self.fill(row)).resize((x1 - x0, y1 - y0), Image.BILINEAR))
        cells = self.loose(row)[r0:r1, c0:c1]
        sel = np.zeros((y1 - y0, x1 - x0), bool)
        for i in range(r1 - r0):
            for j in range(c1 - c0):
                if cells[i, j]:
                    sel[ys[r0 + i] - y0:ys[r0 + i + 1] - y0, xs[c0 + j] - x0:xs[c0 + j + 1] - x0] = True
        region = out[y0:y1, x0:x1]
        region[sel] = fill[sel]
        return out


def open_cache(path: str | os.PathLike, hashes: bool = True) -> Cache:
    """Open a finished cache (one with ``manifest.json``; run ``dali-abs cache merge`` after sharded runs).

    Refuses (:class:`CacheError` naming the file) a cache whose files are missing or of other sizes than
    their records say, whose masks do not fit the manifest's grid, whose manifest differs from its
    plan, and (``hashes``, default) whose record, fills or masks files differ from the SHA-256 the
    manifest holds: the checks of ``dali-abs cache verify`` that need no image decode (a cost of
    reading the cache once; ``hashes=False`` skips the reading, e.g. for a cache just verified).
    """
    root = Path(path)
    if not root.is_dir():
        raise CacheError(f"{root}: cache folder not found")
    mpath = root / MANIFEST
    if not mpath.is_file():
        hint = ("the run is unfinished or sharded: rerun `dali-abs precompute` with the same arguments, "
                "or run `dali-abs cache merge` after every shard finished") if (root / PLAN).is_file() else \
               "not a dali-abs cache folder"
        raise CacheError(f"{root}: no {MANIFEST} ({hint})")
    manifest = read_json(mpath, "cache manifest")
    if manifest.get("format") != FORMAT or manifest.get("format_version") not in READ_VERSIONS:
        raise CacheError(f"{mpath}: format {manifest.get('format')!r} version {manifest.get('format_version')!r}; "
                         f"this version reads {FORMAT!r} versions {', '.join(map(str, READ_VERSIONS))}. "
                         "Rebuild the cache.")
    check_manifest(manifest, mpath)
    R, n_chunks = int(manifest["grid"]), int(manifest["chunks"])
    problems = manifest_problems(root, manifest)
    listed = {c.get("chunk"): c for c in manifest.get("chunk_files", [])}
    records = []
    for k in range(n_chunks):
        rec = read_chunk_record(root, k)
        if rec is None:
            raise CacheError(f"{root}: chunk {k} is missing although the manifest lists it; run "
                             "`dali-abs cache verify` and rerun the precompute")
        problems += chunk_problems(root, k, rec, listed.get(k, {}), hashes=hashes)
        records.append(rec)
    if problems:
        more = f" (and {len(problems) - 1} more problems: `dali-abs cache verify {root}` lists them)" \
            if len(problems) > 1 else ""
        raise CacheError(problems[0] + more)
    ids, idx, rel, lab, masks, boxes, spans, sizes = [], [], [], [], [], [], [], []
    for k, rec in enumerate(records):
        mp = root / CHUNKS / rec["masks"]
        try:
            m = read_masks(mp)
        except (OSError, ValueError) as e:
            raise CacheError(f"{mp}: unreadable ({e}); run `dali-abs cache verify {root}`") from None
        bad = masks_problem(mp, m, len(rec["entries"]), R)
        if bad:
            raise CacheError(bad)
        masks.append(m)
        for e in rec["entries"]:
            ids.append(e["id"])
            idx.append(e["index"])
            rel.append(e["path"])
            lab.append(e["label"])
            boxes.append(e["box"])
            spans.append((k, *(e["fill"] or (0, 0))))
            sizes.append(tuple(e["size"])[::-1])  # stored as (w, h)
    return Cache(root, manifest, ids, np.asarray(idx, np.int64), rel, np.asarray(lab, np.int64),
                 np.concatenate(masks) if masks else np.zeros((0, R, R), np.uint8),
                 np.asarray(boxes, np.int32).reshape(-1, 4), np.asarray(spans, np.int64).reshape(-1, 3),
                 np.asarray(sizes, np.int32).reshape(-1, 2), hashes_checked=hashes,
                 jpeg_parts=[rec["jpeg_parts"] for rec in records])
