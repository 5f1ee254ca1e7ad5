"""File helpers shared by every stage: atomic writes and image reading with clear errors.

Conventions at this boundary:
- RGB images are returned as uint8 arrays, HWC, values 0..255.
- Masks are returned as bool arrays, HW, True = foreground. On disk a mask is a grayscale
  image with 255 = foreground and 0 = background; values above 127 count as foreground.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from dali_abs.errors import DatasetError


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it over ``path`` only on success.

    A reader never sees a half-written file, and a run killed mid-write leaves the old
    file (or none) in place, plus at most a ``.tmp`` file that the next write replaces.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 RGB, HWC, 0..255 (grayscale, RGBA, CMYK, 16-bit converted)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit grayscale: scale to 8 bits instead of clipping.
                arr = np.asarray(im, dtype=np.float64)
                peak = 65535.0 if arr.max() > 255 else 255.0
                gray = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
                return np.repeat(gray[:, :, None], 3, axis=2)
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: cannot decode image ({e}). Remove or replace the file, "
                           "or run `dali-abs data check` to list every such file.") from None


def _read_gray(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Decode a mask image to (gray values HW, peak value): 8-bit masks peak at 255, 16-bit at 65535."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                return arr, (65535.0 if arr.max() > 255 else 255.0)
            return np.asarray(im.convert("L")), 255.0
    except FileNotFoundError:
        raise DatasetError(f"{path}: mask file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: cannot decode mask image ({e})") from None


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask image to bool HW, True = foreground (pixel value > 127 of 0..255)."""
    arr, peak = _read_gray(path)
    return arr > (127 if peak == 255.0 else 32767)


def read_soft_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask image to float32 HW in 0..1, 1 = foreground (255 of 0..255; soft values kept)."""
    arr, peak = _read_gray(path)
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
