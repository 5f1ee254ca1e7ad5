"""Image reading converts every mode to uint8 RGB; masks use 255 = foreground; writes are atomic."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dali_abs.errors import DatasetError
from dali_abs.files import atomic_write_text, atomic_writer, read_mask, read_rgb, read_soft_mask


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16"])
def test_read_rgb_converts_modes(tmp_path, mode):
    path = tmp_path / f"x.{'tif' if mode == 'CMYK' else 'png'}"
    if mode == "I;16":
        Image.fromarray(np.full((5, 7), 40000, np.uint16)).save(path)
    else:
        Image.new(mode, (7, 5)).save(path)
    img = read_rgb(path)
    assert img.shape == (5, 7, 3) and img.dtype == np.uint8
    if mode == "I;16":
        assert img[0, 0, 0] == round(40000 / 65535 * 255)


def test_read_rgb_names_the_broken_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"broken.jpg: cannot decode image"):
        read_rgb(bad)
    with pytest.raises(DatasetError, match=r"gone.jpg: image file not found"):
        read_rgb(tmp_path / "gone.jpg")


def test_read_mask_polarity(tmp_path):
    arr = np.array([[0, 127, 128, 255]], np.uint8)
    Image.fromarray(arr).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").tolist() == [[False, False, True, True]]


def test_read_soft_mask_keeps_soft_values_in_0_1(tmp_path):
    Image.fromarray(np.array([[0, 51, 128, 255]], np.uint8)).save(tmp_path / "m.png")
    soft = read_soft_mask(tmp_path / "m.png")
    assert soft.dtype == np.float32 and np.allclose(soft, [[0.0, 0.2, 128 / 255, 1.0]])
    Image.fromarray(np.array([[0, 65535]], np.uint16)).save(tmp_path / "m16.png")
    assert read_soft_mask(tmp_path / "m16.png").tolist() == [[0.0, 1.0]]
    assert (read_soft_mask(tmp_path / "m.png") > 0.5).tolist() == read_mask(tmp_path / "m.png").tolist()


def test_atomic_writer_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as f:
            f.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temp file left behind


def test_atomic_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path, bomb_png):
    import time

    from dali_abs.files import MAX_PIXELS, ImageTooLarge

    bomb = bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 100_000
    for read in (read_rgb, read_mask):
        t0 = time.perf_counter()
        with pytest.raises(ImageTooLarge, match=r"bomb.png: too large: 20000x20000 = 400,000,000 px, over the "
                                                r"100,000,000-px limit.*downscale or remove"):
            read(bomb)
        assert time.perf_counter() - t0 < 2  # refused before decoding 400 Mpx
    assert MAX_PIXELS == 100_000_000
    small = tmp_path / "small.png"
    Image.new("L", (30, 20)).save(small)
    with pytest.raises(ImageTooLarge, match="600 px, over the 599-px limit"):
        read_rgb(small, max_pixels=599)
    assert read_rgb(small, max_pixels=600).shape == (20, 30, 3)
