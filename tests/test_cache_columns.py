"""The chunk records' columns: exact round trips, and smaller than one JSON object per image."""

from __future__ import annotations

import json

import numpy as np

from dali_abs.cache.columns import decode_columns, encode_column, encode_columns


def test_columns_give_every_row_back_exactly():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        row = {"index": int(3 * i + rng.integers(0, 3)), "id": f"{i:06d}", "path": f"images/cls{i % 3}/{i:06d}.jpg",
               "file_bytes": int(rng.integers(1000, 9000)), "mtime_ns": 1764590000123456789 + i * 1234567,
               "size": [128, 96], "format": "JPEG" if i % 5 else "PNG", "mode": "RGB", "label": i % 2,
               "split": "train", "box": [int(v) for v in rng.integers(0, 16, 4)],
               "fill": int(rng.integers(1, 900)) if i % 4 else 0, "flag": bool(i % 2), "score": 0.5 + i,
               "note": None if i % 7 else "odd"}
        if i % 9 == 0:
            row["mask_file"] = f"m/{i}.png"  # a key some rows lack
        rows.append(row)
    table = encode_columns(rows)
    assert decode_columns(table) == rows
    assert decode_columns(json.loads(json.dumps(table))) == rows  # through JSON, as on disk
    assert [list(r) for r in decode_columns(table)][1] == list(rows[1])  # key order kept
    assert len(json.dumps(table, separators=(",", ":"))) < 0.5 * len(json.dumps(rows, separators=(",", ":")))
    assert decode_columns(encode_columns([])) == []


def test_each_column_takes_its_smallest_exact_encoding():
    assert encode_column(["train"] * 5) == {"all": "train"}
    assert encode_column([7, 8, 9, 10]) == {"range": [7, 1]}
    assert "delta" in encode_column([100000000, 100000003, 100000004, 100000010])
    assert "front" in encode_column([f"images/birds/{i:04d}.jpg" for i in range(20)])
    assert "levels" in encode_column(["JPEG", "PNG", "JPEG", "JPEG", "PNG", "JPEG"] * 3)
    assert encode_column([[500, 375 + i % 3] for i in range(20)])["tuple"][0] == {"all": 500}  # image sizes
    assert encode_column([True, 1, True]) == {"values": [True, 1, True]}  # a bool is not the int 1
    for values in ([True, 1, True], [1, 1.0], [[1], [1, 2]], [None, 0], ["a", None]):
        assert decode_columns(encode_columns([{"v": v} for v in values])) == [{"v": v} for v in values]
