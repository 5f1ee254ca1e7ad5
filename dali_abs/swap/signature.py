"""The one table of what the compositing kernel reads: its arguments, and the two records it reads
through them. Everything else is made from these tables: the NumPy record types the sampling op
writes and the twin reads (:func:`sample_dtype`, :data:`REFS_DTYPE`), the checks of an argument
list (:func:`check`), the CuPy launch arguments (:func:`cupy_args`) and the ctypes signature
and call of the CPU build (:func:`argtypes`, :func:`ctypes_args`). ``tests/test_swap_signature.py``
holds the tables against ``composite.cu`` (field names, C types, offsets, sizes) and the fill
codes against its ``#define ABS_FILL_*``.

The kernel (``abs_composite(ABS_COMPOSITE_PARAMS)`` in ``composite.cu``) takes:

- ``refs``: one :data:`REFS` record per sample: where its image, fill tile and parameter record
  are, their sizes, and the image's px per canvas px. Written by the op that holds the buffers
  (the GPU op from the shapes and pointers DALI hands it: host metadata only).
- ``mean_colour``: float32 [N,3] tile means (read only with ``fill="mean"``).
- ``out``: uint8 [N,H,W,3] HWC.
- the batch's scalars ``n, h, w, r, tight, loose, feather, fill_mode``.

Each sample's parameter record (:data:`SAMPLE`, then ``soft`` float32 [R*R] and ``perm`` int32
[R*R]) is written on the CPU side of the pipeline by :func:`dali_abs.swap.batch.pack_samples`
and reaches the kernel as data: nothing the kernel reads is copied back to the host.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from dali_abs.swap.config import FILLS, SwapError


@dataclass(frozen=True)
class Field:
    """A record field: ``count`` > 1 is a fixed-size array (``float affine[6]`` in C)."""

    name: str
    dtype: str
    count: int = 1
    doc: str = ""


# struct AbsSample: one sample's parameters, 4-byte fields only (no padding on any ABI); the
# record continues with soft[R*R] (float32) and perm[R*R] (int32).
SAMPLE = (
    Field("partner", "int32", doc="batch index of the sample whose background this one gets"),
    Field("swap", "uint32", doc="1 = composite, 0 = the image itself (crop, flip, resize only)"),
    Field("flip", "uint32", doc="1 = mirror the output horizontally"),
    Field("noise_seed", "uint32", doc="key of the noise / pixels fills"),
    Field("affine", "float32", 6, "inverse map canvas point -> foreground canvas point"),
    Field("fg_box", "float32", 4, "x0, y0, x1, y1 canvas px; alpha is 0 outside"),
    Field("crop_x0", "float32", doc="canvas x of the crop window's left edge"),
    Field("crop_y0", "float32", doc="canvas y of its top edge"),
    Field("crop_sx", "float32", doc="canvas px per output px, across"),
    Field("crop_sy", "float32", doc="canvas px per output px, down"),
    Field("box_y0", "float32", doc="the fill tile's region, canvas px (half-open; empty = no fill)"),
    Field("box_x0", "float32"),
    Field("box_y1", "float32"),
    Field("box_x1", "float32"),
)
TRAILER = (Field("soft", "float32", doc="R*R foreground probability, row-major"),
           Field("perm", "int32", doc="R*R patch permutation of the patches fill"))

# struct AbsRefs: one sample's buffers (pointers first: 8-byte aligned, 48 bytes in all).
REFS = (
    Field("image", "uint64", doc="uint8 HWC RGB image, ih x iw"),
    Field("tile", "uint64", doc="uint8 HWC RGB fill tile, th x tw"),
    Field("sample", "uint64", doc="the sample's parameter record"),
    Field("ih", "int32"), Field("iw", "int32"), Field("th", "int32"), Field("tw", "int32"),
    Field("img_sx", "float32", doc="image px per canvas px, across (iw / W)"),
    Field("img_sy", "float32", doc="down (ih / H)"),
)


@dataclass(frozen=True)
class Arg:
    """A kernel argument: an array (``shape`` in the batch's dims n, h, w, r) or a scalar (``shape`` ())."""

    name: str
    dtype: str  # a NumPy dtype name, or "AbsRefs" (the REFS record)
    shape: tuple = ()
    writes: bool = False


ARGS = (
    Arg("refs", "AbsRefs", ("n",)),
    Arg("mean_colour", "float32", ("n", 3)),
    Arg("out", "uint8", ("n", "h", "w", 3), writes=True),
    Arg("n", "int32"), Arg("h", "int32"), Arg("w", "int32"), Arg("r", "int32"),
    Arg("tight", "float32"), Arg("loose", "float32"), Arg("feather", "float32"),
    Arg("fill_mode", "int32"),
)

# C spelling of each dtype, as composite.cu writes it.
C_TYPES = {"int32": "int", "uint32": "unsigned int", "float32": "float", "uint8": "unsigned char",
           "uint64": "unsigned long long", "AbsRefs": "AbsRefs"}
_CTYPES = {"int32": ctypes.c_int, "float32": ctypes.c_float}


def _dtype(fields, align: bool) -> np.dtype:
    return np.dtype([(f.name, f.dtype, (f.count,)) if f.count > 1 else (f.name, f.dtype) for f in fields],
                    align=align)


REFS_DTYPE = _dtype(REFS, align=True)
HEADER_DTYPE = _dtype(SAMPLE, align=True)


def sample_dtype(r: int) -> np.dtype:
    """The parameter record of one sample on an R x R grid: :data:`SAMPLE`, then soft and perm."""
    fields = [(f.name, f.dtype, (f.count,)) if f.count > 1 else (f.name, f.dtype) for f in SAMPLE]
    return np.dtype(fields + [(t.name, t.dtype, (r * r,)) for t in TRAILER], align=True)


def fill_code(fill: str) -> int:
    """The kernel's ``fill_mode`` of a fill name (``ABS_FILL_<NAME>`` in composite.cu)."""
    return FILLS.index(fill)


def c_declaration(a: Arg) -> str:
    """How ``composite.cu`` declares the argument, e.g. ``const float* __restrict__ mean_colour``."""
    t = C_TYPES[a.dtype]
    if not a.shape:
        return f"{t} {a.name}"
    return f"{'' if a.writes else 'const '}{t}* __restrict__ {a.name}"


def _want(a: Arg, dims: dict) -> tuple[np.dtype, tuple]:
    return (REFS_DTYPE if a.dtype == "AbsRefs" else np.dtype(a.dtype)), tuple(
        d if isinstance(d, int) else int(dims[d]) for d in a.shape)


def check(values: dict, dims: dict) -> None:
    """Raise :class:`SwapError` unless every array of ``values`` has its dtype, shape (from ``dims``)
    and a C-contiguous layout; names the argument and what it got."""
    for a in ARGS:
        if not a.shape:
            continue
        v = values[a.name]
        dtype, shape = _want(a, dims)
        if getattr(v, "dtype", None) != dtype or tuple(getattr(v, "shape", ())) != shape:
            raise SwapError(f"kernel argument {a.name} must be {a.dtype} {shape}, got "
                            f"{getattr(v, 'dtype', type(v).__name__)} {tuple(getattr(v, 'shape', ()))}")
        if not v.flags.c_contiguous:
            raise SwapError(f"kernel argument {a.name} must be C-contiguous")


def _scalars(values: dict):
    return {a.name: np.dtype(a.dtype).type(values[a.name]) for a in ARGS if not a.shape}


def cupy_args(values: dict) -> tuple:
    """The CuPy launch arguments in the kernel's order: arrays as they are, scalars as exact NumPy types."""
    s = _scalars(values)
    return tuple(values[a.name] if a.shape else s[a.name] for a in ARGS)


def argtypes(extra=()) -> list:
    """ctypes argument types of ``ABS_COMPOSITE_PARAMS`` (arrays by address), then ``extra``."""
    return [ctypes.c_void_p if a.shape else _CTYPES[a.dtype] for a in ARGS] + list(extra)


def ctypes_args(values: dict) -> tuple:
    """The ctypes call arguments in the kernel's order: arrays by their address."""
    s = _scalars(values)
    return tuple(values[a.name].ctypes.data if a.shape else s[a.name].item() for a in ARGS)
