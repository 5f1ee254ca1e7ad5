"""Damaged JPEGs: one rule (dali_abs.jpeg.jpeg_defect) for data check and precompute, on real files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from dali_abs.cache.format import open_cache
from dali_abs.cli import main
from dali_abs.jpeg import jpeg_defect


def photo_jpeg(seed: int = 0, size: tuple[int, int] = (240, 320)) -> bytes:
    """A JPEG of smooth colour ramps with a textured square (a photo-like mix of flat and busy blocks)."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    img = np.dstack([x % 256, y % 256, (x + y) % 256]).astype(np.uint8)
    img[h // 4:3 * h // 4, w // 4:3 * w // 4] = np.random.default_rng(seed).integers(0, 255, (h // 2, w // 2, 3))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def flip_middle(data: bytes, n: int = 64) -> bytes:
    """``n`` bytes inverted in the middle of the scan; header and end marker intact."""
    b = bytearray(data)
    mid = len(b) // 2
    for i in range(mid, mid + n):
        b[i] ^= 0xFF
    assert b[-2:] == b"\xff\xd9"
    return bytes(b)


def test_a_jpeg_with_flipped_bytes_is_damaged_although_pil_and_dali_decode_it(tmp_path):
    good = photo_jpeg()
    bad = flip_middle(good)
    (tmp_path / "bad.jpg").write_bytes(bad)
    # the premise: both decoders in our chain return an image for it, without an error
    with Image.open(io.BytesIO(bad)) as im:
        im.load()
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        data, _ = fn.readers.file(files=[str(tmp_path / "bad.jpg")])
        return fn.decoders.image(data, device="cpu", output_type=types.RGB)

    p = pipe()
    p.build()
    assert np.asarray(p.run()[0][0]).shape == (240, 320, 3)

    assert jpeg_defect(tmp_path / "bad.jpg").startswith("corrupt JPEG data (the decoder reports 'Corrupt JPEG data")
    assert jpeg_defect(None, good) is None
    assert jpeg_defect(None, good[:len(good) // 2]).startswith("truncated JPEG")
    gray = io.BytesIO()
    Image.fromarray(np.full((40, 50), 90, np.uint8)).save(gray, "JPEG")
    cmyk = io.BytesIO()
    Image.new("CMYK", (40, 50), (10, 20, 30, 40)).save(cmyk, "JPEG")
    prog = io.BytesIO()
    Image.open(io.BytesIO(good)).save(prog, "JPEG", progressive=True)
    assert jpeg_defect(None, gray.getvalue()) is jpeg_defect(None, cmyk.getvalue()) is \
        jpeg_defect(None, prog.getvalue()) is None


def test_data_check_and_precompute_skip_the_same_damaged_jpegs_for_the_same_reason(tmp_path, tiny_models, capsys):
    seg, fill = tiny_models
    root = tmp_path / "folder"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            (root / c / f"good{i}.jpg").write_bytes(photo_jpeg(seed=10 * i + ord(c)))
    (root / "a" / "flipped.jpg").write_bytes(flip_middle(photo_jpeg(seed=1)))
    trunc = photo_jpeg(seed=2)
    (root / "b" / "cut.jpg").write_bytes(trunc[:len(trunc) * 2 // 3])

    report = tmp_path / "report.json"
    assert main(["data", "check", str(root), "--report", str(report), "--json"]) == 1
    capsys.readouterr()
    checked = {p["path"]: p["reason"] for p in json.loads(report.read_text())["problems"]}
    assert set(checked) == {"a/flipped.jpg", "b/cut.jpg"}
    assert checked["a/flipped.jpg"].startswith("corrupt JPEG data") and "re-export or replace" in checked["a/flipped.jpg"]
    assert checked["b/cut.jpg"].startswith("truncated JPEG")

    out = tmp_path / "cache"
    assert main(["precompute", str(root), "--segmenter", str(seg), "--inpainter", str(fill), "--out", str(out),
                 "--json"]) == 0
    capsys.readouterr()
    cache = open_cache(out)
    assert {s["path"]: s["reason"] for s in cache.manifest["skipped"]} == checked  # same files, same words
    assert sorted(cache.relpaths) == sorted(f"{c}/good{i}.jpg" for c in "ab" for i in range(4))
