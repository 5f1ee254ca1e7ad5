"""File helpers shared by every stage: atomic writes and image reading with clear errors.

Conventions at this boundary:
- RGB images are returned as uint8 arrays, HWC, values 0..255.
- Masks are returned as bool arrays, HW, True = foreground. On disk a mask is a grayscale
  image with 255 = foreground and 0 = background; values above 127 count as foreground.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from dali_abs.errors import DaliAbsError, DatasetError


TEMP_SUFFIX = ".tmp"


def _temp_pattern(path: Path) -> re.Pattern:
    """The names :func:`atomic_writer` gives the temporary files of ``path`` (mkstemp: 8 random
    characters of a-z, 0-9 and _ between the prefix and the suffix)."""
    return re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}{re.escape(TEMP_SUFFIX)}")


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that writers of ``path`` killed mid-write (kill -9, power loss)
    left beside it; only names :func:`atomic_writer` makes for this path. Returns those removed.

    Call it where no other writer of ``path`` can be running (at the start of the program
    that owns the file): a live writer's temporary file looks the same.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = _temp_pattern(path)
    removed = []
    for p in path.parent.iterdir():
        if pattern.fullmatch(p.name) and p.is_file() and not p.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return sorted(removed)


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it over ``path`` only on success.

    A reader never sees a half-written file, and a run killed mid-write leaves the old
    file (or none) in place, plus a ``.<name>.XXXXXXXX.tmp`` file that
    :func:`remove_stale_temps` deletes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    # mkstemp makes the file 0600; give it the mode a plain open() would (shared clusters).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_writer(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_writer(path, "w") as f:
        f.write(text)


def read_text(path: str | os.PathLike, error: type[DaliAbsError] = DaliAbsError) -> str:
    """The whole file as text, UTF-8 (a leading byte-order mark dropped); ``error`` names the
    file, the first bad byte and its line when it is not UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise error(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}). Save it as UTF-8, e.g. "
                    f"`iconv -f latin1 -t utf-8 {Path(path).name} > fixed.csv`") from None


def read_csv(path: str | os.PathLike, error: type[DaliAbsError] = DaliAbsError,
             as_dicts: bool = False) -> tuple[list[str] | None, Iterator]:
    """(header, rows) of a UTF-8 CSV file (see :func:`read_text`); rows are field lists, or with
    ``as_dicts`` dicts keyed by the header (``csv.DictReader``). The header is None for an empty
    file. The csv module's errors (a field over its 131,072-character limit, a NUL byte) are
    ``error`` naming the file and row."""
    f = io.StringIO(read_text(path, error), newline="")
    reader = csv.DictReader(f) if as_dicts else csv.reader(f)

    def bad(e: csv.Error):
        line = (reader.reader if as_dicts else reader).line_num  # DictReader's own count lags on errors
        return error(f"{path} row {line}: not valid CSV ({e}); fix or remove the row")

    try:
        header = reader.fieldnames if as_dicts else next(reader, None)
    except csv.Error as e:
        raise bad(e) from None

    def rows() -> Iterator:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise bad(e) from None
            yield row

    return header, rows()


# Images with more pixels are refused from their header, before any pixel is decoded: a
# 20000 x 20000 PNG of a few kB (a decompression bomb) would otherwise take 1.2 GB to decode.
# The one limit every reader uses; `precompute --max-pixels` and `data check --max-pixels` default to it.
MAX_PIXELS = 100_000_000


class ImageError(DatasetError):
    """An image (or mask) file that cannot be used: ``path``, and ``reason`` without the path."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


class ImageTooLarge(ImageError):
    """An image over the pixel limit (refused from its header, never decoded)."""


def _too_large(path, w: int, h: int, limit: int) -> ImageTooLarge:
    return ImageTooLarge(path, f"too large: {w}x{h} = {w * h:,} px, over the {limit:,}-px limit (a decompression "
                               "bomb, or far more pixels than training needs); downscale or remove the file")


def _header_size(path) -> tuple[int, int] | None:
    """Width and height from the header of a file PIL refused to open as a decompression bomb."""
    from PIL import Image

    Image.init()
    with open(path, "rb") as fp:
        prefix = fp.read(16)
        for fmt in Image.ID:
            factory, accept = Image.OPEN[fmt]
            try:
                if accept is None or accept(prefix) is True:
                    fp.seek(0)
                    return factory(fp, os.fspath(path)).size
            except Exception:  # not this format
                continue
    return None


@contextlib.contextmanager
def open_image(path: str | os.PathLike, what: str = "image", max_pixels: int | None = None) -> Iterator:
    """Open an image file with PIL, refusing it before decoding when it has more than
    ``max_pixels`` (default :data:`MAX_PIXELS`) pixels.

    Every error while opening or decoding inside the ``with`` block (missing file, not an
    image, truncated data, a decompression bomb) is an :class:`ImageError` naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > limit:
                raise _too_large(path, w, h, limit)
            yield im
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(path, f"{what} file not found") from None
    except Image.DecompressionBombError as e:  # over PIL's own hard limit (2 x Image.MAX_IMAGE_PIXELS)
        try:
            size = _header_size(path)
        except OSError:
            size = None
        if size is not None:
            raise _too_large(path, *size, limit) from None
        raise ImageTooLarge(path, f"too large: {e} Downscale or remove the file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        raise ImageError(path, f"cannot decode {what} ({type(e).__name__}: {e}). Remove or replace the file, "
                               "or run `dali-abs data check` to list every such file") from None


def read_rgb(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file to uint8 RGB, HWC, 0..255 (grayscale, RGBA, CMYK, 16-bit converted).

    Refused (:class:`ImageTooLarge`) over ``max_pixels``, default :data:`MAX_PIXELS`."""
    with open_image(path, max_pixels=max_pixels) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit grayscale: scale to 8 bits instead of clipping.
            arr = np.asarray(im, dtype=np.float64)
            peak = 65535.0 if arr.max() > 255 else 255.0
            gray = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
            return np.repeat(gray[:, :, None], 3, axis=2)
        return np.asarray(im.convert("RGB"))


def _read_gray(path: str | os.PathLike, max_pixels: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a mask image to (gray values HW, peak value): 8-bit masks peak at 255, 16-bit at 65535.

    Refused (:class:`ImageTooLarge`) over ``max_pixels``, default :data:`MAX_PIXELS`."""
    with open_image(path, "mask image", max_pixels=max_pixels) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float64)
            return arr, (65535.0 if arr.max() > 255 else 255.0)
        return np.asarray(im.convert("L")), 255.0


def read_mask(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read a mask image to bool HW, True = foreground (pixel value > 127 of 0..255)."""
    arr, peak = _read_gray(path, max_pixels)
    return arr > (127 if peak == 255.0 else 32767)


def read_soft_mask(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read a mask image to float32 HW in 0..1, 1 = foreground (255 of 0..255; soft values kept)."""
    arr, peak = _read_gray(path, max_pixels)
    return (np.asarray(arr, np.float32) / np.float32(peak)).astype(np.float32)


def write_image(path: str | os.PathLike, array: np.ndarray, quality: int = 90) -> None:
    """Write uint8 HWC RGB or HW grayscale atomically; format from the suffix (.jpg/.png)."""
    import io

    from PIL import Image

    path = Path(path)
    if array.dtype != np.uint8:
        raise TypeError(f"write_image expects uint8 (0..255), got {array.dtype}")
    buf = io.BytesIO()
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    kwargs = {"quality": quality} if fmt == "JPEG" else {}
    Image.fromarray(array).save(buf, format=fmt, **kwargs)
    atomic_write_bytes(path, buf.getvalue())
