"""Per-image records as columns: the chunk record's compact form (format version 2).

A chunk record of version 1 held one JSON object per image, every key repeated (about 250 B per
image). Version 2 holds one column per key, each in the smallest of a few lossless encodings:

- ``{"all": v}``: every row holds ``v`` (a split, an image format, the decoder);
- ``{"range": [v0, d]}``: integers ``v0, v0 + d, v0 + 2d, ...`` (dataset indices of a chunk
  without skipped images);
- ``{"delta": [v0, d1, d2, ...]}``: integers as differences from the row before (dataset
  indices, file modification times);
- ``{"front": [...]}``: strings, each either itself or ``[k, suffix]``: the first ``k`` characters
  of the string before, then ``suffix`` (relative paths in one folder share their start);
- ``{"levels": [...], "codes": [...]}``: strings from a few distinct values;
- ``{"tuple": [column, ...]}``: lists of one length (a box, an image size), one column per position;
- ``{"values": [...]}``: anything else, as is.

``"absent"`` (row numbers) marks rows that lack the key; their place in the column holds None.
:func:`decode_columns` inverts :func:`encode_columns` exactly (``decode(encode(rows)) == rows``;
:func:`~dali_abs.cache.format.write_chunk` checks it before writing).
"""

from __future__ import annotations

import copy
import json


def _size(obj) -> int:
    return len(json.dumps(obj, separators=(",", ":")))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _front(values: list[str]) -> list:
    out, prev = [], ""
    for s in values:
        k = 0
        for a, b in zip(prev, s):
            if a != b:
                break
            k += 1
        out.append([k, s[k:]] if k > 3 else s)  # a short shared start costs more than it saves
        prev = s
    return out


def encode_column(values: list) -> dict:
    """The smallest lossless encoding of one column (see the module docstring)."""
    first = values[0] if values else None
    if values and all(type(v) is type(first) and v == first for v in values):
        return {"all": first}
    candidates = [{"values": list(values)}]
    if values and all(_is_int(v) for v in values):
        steps = [b - a for a, b in zip(values, values[1:])]
        if steps and all(d == steps[0] for d in steps):
            return {"range": [values[0], steps[0]]}
        candidates.append({"delta": [values[0]] + steps})
    elif values and all(isinstance(v, str) for v in values):
        candidates.append({"front": _front(values)})
        levels = sorted(set(values))
        if len(levels) <= len(values) // 2:
            at = {s: i for i, s in enumerate(levels)}
            candidates.append({"levels": levels, "codes": [at[s] for s in values]})
    elif values and all(isinstance(v, list) and len(v) == len(first) for v in values) and first:
        candidates.append({"tuple": [encode_column([v[i] for v in values]) for i in range(len(first))]})
    return min(candidates, key=_size)


def decode_column(col: dict, n: int) -> list:
    if "all" in col:
        v = col["all"]
        return [copy.deepcopy(v) for _ in range(n)] if isinstance(v, (list, dict)) else [v] * n
    if "range" in col:
        start, step = col["range"]
        return [start + i * step for i in range(n)]
    if "delta" in col:
        out, acc = [], 0
        for i, d in enumerate(col["delta"]):
            acc = d if i == 0 else acc + d
            out.append(acc)
        return out
    if "front" in col:
        out, prev = [], ""
        for item in col["front"]:
            prev = prev[:item[0]] + item[1] if isinstance(item, list) else item
            out.append(prev)
        return out
    if "levels" in col:
        return [col["levels"][c] for c in col["codes"]]
    if "tuple" in col:
        parts = [decode_column(c, n) for c in col["tuple"]]
        return [list(t) for t in zip(*parts)] if parts else [[] for _ in range(n)]
    return list(col["values"])


def encode_columns(rows: list[dict]) -> dict:
    """``{"n": rows, "columns": {key: encoded column}}`` of a list of flat dicts (JSON values)."""
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    cols = {}
    for key in keys:
        values = [r.get(key) for r in rows]
        col = encode_column(values)
        absent = [i for i, r in enumerate(rows) if key not in r]
        if absent:
            col["absent"] = absent
        cols[key] = col
    return {"n": len(rows), "columns": cols}


def decode_columns(table: dict) -> list[dict]:
    """The rows of :func:`encode_columns` (keys in their column order)."""
    n = int(table["n"])
    rows: list[dict] = [{} for _ in range(n)]
    for key, col in table["columns"].items():
        values = decode_column(col, n)
        if len(values) != n:
            raise ValueError(f"column {key!r} holds {len(values)} values for {n} rows")
        absent = set(col.get("absent", ()))
        for i, (r, v) in enumerate(zip(rows, values)):
            if i not in absent:
                r[key] = v
    return rows
