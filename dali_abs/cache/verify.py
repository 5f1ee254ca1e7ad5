"""``dali-abs cache verify`` and ``dali-abs cache info``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dali_abs.cache.format import (CHUNKS, FORMAT, MANIFEST, READ_VERSIONS, PLAN, CacheError, check_manifest,
                                   chunk_name, chunk_problems, decode_image, manifest_problems, masks_problem,
                                   placeholder_mask, read_chunk_record, read_json, read_masks, rebuild, stored_tile_size,
                                   threshold_mask)


# a fill whose loose-mask pixels average at most this (0..255) is black: a NaN fill cast to uint8 is 0
# (JPEG ringing at the box's edge leaves a few pixels at 1-4)
BLACK = 2.0


def _load_manifest(root: Path) -> dict:
    if not root.is_dir():
        raise CacheError(f"{root}: cache folder not found")
    if not (root / MANIFEST).is_file():
        what = "an unfinished or unmerged cache" if (root / PLAN).is_file() else "not a dali-abs cache folder"
        raise CacheError(f"{root}: no {MANIFEST} ({what}); finish the precompute or run `dali-abs cache merge`")
    return read_json(root / MANIFEST, "cache manifest")


def verify(path: str | os.PathLike, dataset=None, decode: bool = True) -> dict:
    """Check a cache; returns ``{"ok", "problems", "counts", "stale"}`` (problems: list of strings).

    Checks: format version; the manifest's settings equal the plan's; every chunk's record, fills
    and mask files present with the sizes and SHA-256 the manifest and record name
    (:func:`~dali_abs.cache.format.chunk_problems`, as at :func:`~dali_abs.cache.format.open_cache`);
    mask arrays uint8 [n, R, R]; the fills tile their file
    exactly, and each is a JPEG that decodes (``decode``) to its box's size; at most half of a
    chunk's fills black in their loose-mask pixels (:data:`BLACK`: the trace of NaN fills); each
    dataset image exactly once (cached or skipped). With ``dataset``: images changed (path,
    label, split, size or mtime), added, or removed since the precompute.
    """
    root = Path(path)
    m = _load_manifest(root)
    problems: list[str] = []
    if m.get("format") != FORMAT or m.get("format_version") not in READ_VERSIONS:
        problems.append(f"format {m.get('format')!r} v{m.get('format_version')!r}, "
                        f"expected {FORMAT!r} v{' or v'.join(map(str, READ_VERSIONS))}")
        return {"cache": str(root), "ok": False, "problems": problems}
    try:
        check_manifest(m, root / MANIFEST)
    except CacheError as e:
        return {"cache": str(root), "ok": False, "problems": [str(e)]}
    problems += manifest_problems(root, m)
    R = int(m["grid"])
    by_chunk = {c["chunk"]: c for c in m.get("chunk_files", [])}
    records: dict[str, dict] = {}
    seen: dict[int, int] = {}
    cached = skipped = fills_checked = black_fills = 0
    fill = float(m["thresholds"]["fill"])
    for k in range(int(m["chunks"])):
        name = chunk_name(k)
        try:
            rec = read_chunk_record(root, k)
        except CacheError as e:
            problems.append(str(e))
            continue
        if rec is None:
            problems.append(f"chunk {k}: record {CHUNKS}/{name}.json missing")
            continue
        file_problems = chunk_problems(root, k, rec, by_chunk.get(k, {}))
        problems += file_problems
        for e in rec["entries"] + rec["skipped"]:
            if e["index"] in seen:
                problems.append(f"image {e['id']!r} is in chunks {seen[e['index']]} and {k}")
            seen[e["index"]] = k
            records[e["id"]] = e
        cached += len(rec["entries"])
        skipped += len(rec["skipped"])
        if file_problems:
            continue
        try:
            masks = read_masks(root / CHUNKS / rec["masks"])
        except Exception as e:
            problems.append(f"chunk {k}: {rec['masks']} unreadable ({e})")
            continue
        bad = masks_problem(root / CHUNKS / rec["masks"], masks, len(rec["entries"]), R)
        if bad:
            problems.append(bad)
            continue
        data = (root / CHUNKS / rec["fills"]).read_bytes()  # chunk_problems found the spans tiling it
        black = filled = 0
        for i, e in enumerate(rec["entries"]):
            r0, c0, r1, c1 = e["box"]
            if e["fill"] is None:
                if r1 > r0:
                    problems.append(f"image {e['id']!r}: box {e['box']} but no fill stored")
                continue
            off, size = e["fill"]
            try:
                jpeg = rebuild(data[off:off + size], rec["jpeg_parts"])
            except ValueError:
                jpeg = b""
            if jpeg[:2] != b"\xff\xd8":
                problems.append(f"image {e['id']!r}: fill span {e['fill']} of {rec['fills']} is not a JPEG")
                continue
            if decode:
                try:
                    img = decode_image(jpeg)
                except Exception as exc:
                    problems.append(f"image {e['id']!r}: fill does not decode ({exc})")
                    continue
                want_shape = (*stored_tile_size(m, e["box"], e["size"][::-1]), 3)
                if img.shape != want_shape:
                    problems.append(f"image {e['id']!r}: fill is {list(img.shape)}, expected {list(want_shape)}")
                    continue
                cells = threshold_mask(masks[i], fill)[r0:r1, c0:c1]
                filled += 1
                pixels = img[~placeholder_mask(img.shape[:2], cells, ring=0)]  # the loose cells' pixels
                black += bool(pixels.size and pixels.mean() <= BLACK)
            fills_checked += 1
        black_fills += black
        if black and black * 2 >= filled:
            problems.append(f"chunk {k}: {black} of its {filled} fills are black (filled pixels average <= {BLACK:g} of 255): "
                            "what an inpainter that output NaN leaves (versions before the output checks). "
                            "Rebuild the cache with a model that passes them")
    n = int(m["dataset"]["images"])
    if len(seen) != n or set(seen) != set(range(n)):
        problems.append(f"the cache covers {len(seen)} of the {n} planned images")
    counts = {"images": n, "cached": cached, "skipped": skipped, "fills_checked": fills_checked,
              "black_fills": black_fills}
    if counts["cached"] != m["counts"]["cached"] or counts["skipped"] != m["counts"]["skipped"]:
        problems.append(f"manifest counts {m['counts']} differ from the chunks' ({cached} cached, {skipped} skipped)")
    out = {"cache": str(root), "ok": not problems, "problems": problems, "counts": counts}
    if dataset is not None:
        stale = staleness(records, dataset)
        out["stale"] = stale
        out["fingerprint_matches"] = dataset.fingerprint() == m["dataset"]["fingerprint"]
        if stale["changed"] or stale["added"] or stale["removed"]:
            out["ok"] = False
    return out


def staleness(records: dict[str, dict], dataset) -> dict:
    """Images changed / added / removed in ``dataset`` against the cache's per-image records."""
    changed, added = [], []
    current = dataset.by_id()
    for sid, s in current.items():
        e = records.get(sid)
        if e is None:
            added.append(sid)
            continue
        why = []
        if e["path"] != s.relpath:
            why.append("path")
        if e.get("label") != s.label or e.get("split") != s.split:
            why.append("label/split")
        try:
            st = s.path.stat()
            if e.get("file_bytes") != st.st_size or e.get("mtime_ns") != st.st_mtime_ns:
                why.append("file content (size or mtime)")
        except OSError:
            why.append("file missing")
        if why:
            changed.append({"id": sid, "what": why})
    removed = sorted(set(records) - set(current))
    return {"changed": changed, "added": added, "removed": removed}


def info(path: str | os.PathLike) -> dict:
    """Sizes, bytes per image, grid, models, thresholds, counts and the skipped list of a cache."""
    root = Path(path)
    m = check_manifest(_load_manifest(root), root / MANIFEST)
    on_disk = sum(p.stat().st_size for p in (root / CHUNKS).iterdir() if p.is_file() and not p.name.startswith("."))
    return {"cache": str(root), "format_version": m["format_version"], "dataset": m["dataset"],
            "models": m["models"], "grid": m["grid"], "work_size": m["work_size"], "thresholds": m["thresholds"],
            "fill_encoding": m["fill_encoding"], "mask_encoding": m["mask_encoding"], "chunks": m["chunks"],
            "counts": m["counts"], "bytes": {**m["bytes"], "on_disk": on_disk}, "skipped": m["skipped"],
            "ignored": m.get("ignored", [])}
