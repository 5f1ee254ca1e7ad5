"""Fills stored without the JPEG parts they share: the loader decodes the encoder's bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dali_abs.cache.format import encode_jpeg
from dali_abs.cache.format import fill_parts
from dali_abs.cache.jpeg_parts import compact, rebuild, shared_parts


def test_compact_fills_rebuild_to_the_encoders_bytes():
    rng = np.random.default_rng(1)
    tiles = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((1, 1), (8, 8), (24, 40), (56, 14), (7, 300))]
    jpegs = [encode_jpeg(t, 90) for t in tiles]
    parts = shared_parts(jpegs[0])
    for j in jpegs:
        stored = compact(j, parts)
        assert rebuild(stored, parts) == j and stored[:2] != b"\xff\xd8"
        assert len(j) - len(stored) >= 180  # start, quantisation tables, frame and scan headers, end
    # another quality has other quantisation tables: stored whole, read as is
    other = encode_jpeg(tiles[2], 75)
    assert compact(other, parts) == other and rebuild(other, parts) == other
    # another encoder's layout (progressive; restart markers): stored whole
    buf = io.BytesIO()
    Image.fromarray(tiles[2]).save(buf, format="JPEG", quality=90, progressive=True)
    assert shared_parts(buf.getvalue()) is None and compact(buf.getvalue(), parts) == buf.getvalue()
    assert rebuild(jpegs[1], None) == jpegs[1]  # version 1 caches: no shared parts


def test_a_damaged_compact_fill_is_a_value_error():
    j = encode_jpeg(np.zeros((16, 16, 3), np.uint8), 90)
    parts = shared_parts(j)
    stored = compact(j, parts)
    with pytest.raises(ValueError, match="too short"):
        rebuild(stored[:3], parts)
    with pytest.raises(ValueError, match="inside its Huffman tables"):
        rebuild(stored[:40], parts)


def test_a_fill_takes_the_tables_that_store_it_smaller_and_decodes_the_same():
    from dali_abs.cache.format import decode_image, encode_fill
    from dali_abs.cache.jpeg_parts import stored_size

    rng = np.random.default_rng(2)
    smooth = np.clip(rng.normal(120, 2, (24, 40, 3)), 0, 255).astype(np.uint8)  # a small fill: standard tables
    busy = rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)  # a large busy one: its own tables
    for tile, own in ((smooth, False), (busy, True)):
        best, fill = encode_jpeg(tile, 90), encode_fill(tile, 90)
        parts = fill_parts(best)
        assert (compact(fill, parts)[4] != 0) == own
        assert stored_size(fill, parts) <= stored_size(best, parts)
        assert np.array_equal(decode_image(fill), decode_image(best))  # the tables only code the coefficients
