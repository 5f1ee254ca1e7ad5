"""CPU backend: ``composite.cu`` itself, compiled as C++ for the host.

The CUDA kernel text is compiled with the C++ compiler (g++ by default) through
``cpu_shim.cuh``, which turns the CUDA qualifiers into nothing. A small host
launcher calls the kernel's per-pixel body (``abs_composite_pixel``) for every output pixel,
the output rows split into contiguous chunks over a few host threads (the body is per pixel
and stateless, so any partition gives the same output). Float arithmetic is kept IEEE-exact (``-ffp-contract=off``, no ``-ffast-math``), so the result equals
:func:`dali_abs.swap.twin.composite_cpu`, the NumPy twin, pixel for pixel.

The shared library is built on first use and cached under ``$XDG_CACHE_HOME/dali-abs``
(default ``~/.cache/dali-abs``) as ``native-<sha256 of sources, compiler and flags>.so``; the
build writes a temporary file and renames it, so concurrent builds never leave a broken file.
ctypes releases the GIL for the call.

Environment: ``DALI_ABS_CXX`` the compiler (default ``g++``); ``DALI_ABS_NATIVE=0`` turns the
native path off; ``DALI_ABS_THREADS`` the default thread count (default: one more than
the CPUs this process may run on, at most 16: :func:`default_threads`). Without a compiler, or
if the build fails, :func:`native_available` returns False after one warning and
:func:`composite_host` uses the NumPy twin.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

from dali_abs.errors import DaliAbsError
from dali_abs.swap import signature
from dali_abs.swap.batch import Batch, mean_colour
from dali_abs.swap.config import SwapError, check_normalize

_ABI = 8  # bump when the launcher's C signature changes
# abs_composite_host's arguments after ABS_COMPOSITE_PARAMS: threads, vector, normalisation
# (NormArgs or NULL); tests/test_swap_signature.py reads them against cpu_launcher.cpp
HOST_EXTRA_ARGTYPES = (ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-ffp-contract=off", "-fno-math-errno",
         "-fvisibility=hidden", "-Wall")


class NativeUnavailable(DaliAbsError, RuntimeError):
    """The native compositing library could not be built or loaded."""


_LOCK = threading.Lock()
_STATE: dict = {}  # "lib": the loaded CDLL or None (unavailable), "why": reason, "path": .so path


def translation_unit() -> str:
    """The full C++ source compiled for the host: shim, kernel text, launcher."""
    from dali_abs.swap.sources import source

    return "\n".join([
        '#line 1 "cpu_shim.cuh"', source("cpu_shim.cuh"),
        '#line 1 "composite.cu"', source("composite.cu"),
        "#if defined(__x86_64__) && defined(__GNUC__)\n#define ABS_HAVE_ROWS 1",
        '#line 1 "composite_rows.h"', source("composite_rows.h"),
        "#else\n#define ABS_HAVE_ROWS 0\n#endif",
        '#line 1 "normalize_rows.h"', source("normalize_rows.h"),
        f"#define ABS_NATIVE_ABI {_ABI}", '#line 1 "cpu_launcher.cpp"', source("cpu_launcher.cpp"),
    ])


def compiler() -> str:
    return os.environ.get("DALI_ABS_CXX") or "g++"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dali-abs"


def library_path(cxx: str | None = None) -> Path:
    """Where the library for the current sources, compiler and flags lives (built or not)."""
    cxx = compiler() if cxx is None else cxx
    key = hashlib.sha256("\0".join([translation_unit(), cxx, *FLAGS]).encode()).hexdigest()
    return cache_dir() / f"native-{key[:32]}.so"


def _compile(cxx: str, src: str, target: Path) -> None:
    """Build ``target`` from ``src`` atomically (temporary file in the same folder, then rename)."""
    exe = shutil.which(cxx)
    if exe is None:
        raise NativeUnavailable(f"C++ compiler {cxx!r} not found (set DALI_ABS_CXX)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_so = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        with tempfile.TemporaryDirectory(prefix="dali-abs-native-") as d:
            cpp = Path(d) / "composite_native.cpp"
            cpp.write_text(src, encoding="utf-8")
            res = subprocess.run([exe, *FLAGS, str(cpp), "-o", tmp_so], capture_output=True, text=True,
                                 timeout=300)
        if res.returncode != 0:
            raise NativeUnavailable(f"{cxx} failed (exit {res.returncode}): {res.stderr.strip()[-2000:]}")
        os.chmod(tmp_so, 0o755)
        os.replace(tmp_so, target)
    finally:
        if os.path.exists(tmp_so):
            os.unlink(tmp_so)


def _open(path: Path):
    lib = ctypes.CDLL(str(path))
    if lib.abs_native_abi() != _ABI:
        raise NativeUnavailable(f"{path}: wrong launcher ABI")
    fn = lib.abs_composite_host
    fn.restype = ctypes.c_int
    fn.argtypes = signature.argtypes(extra=HOST_EXTRA_ARGTYPES)
    lib.abs_native_f16.restype = ctypes.c_int
    return lib


def _load():
    """The loaded library, building it if needed; None (and one warning) if that fails."""
    if "lib" in _STATE:
        return _STATE["lib"]
    with _LOCK:
        if "lib" in _STATE:
            return _STATE["lib"]
        lib, why, path = None, None, None
        if os.environ.get("DALI_ABS_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
            why = "disabled by DALI_ABS_NATIVE"
        else:
            try:
                cxx = compiler()
                path = library_path(cxx)
                if path.is_file():
                    try:
                        lib = _open(path)
                    except (OSError, AttributeError, NativeUnavailable):
                        lib = None  # unreadable / stale file: rebuild over it
                if lib is None:
                    _compile(cxx, translation_unit(), path)
                    lib = _open(path)
            except (OSError, subprocess.SubprocessError, AttributeError, NativeUnavailable) as e:
                lib, why = None, f"{type(e).__name__}: {e}"
                warnings.warn(f"dali-abs: native CPU compositing unavailable ({why}); using the slower "
                              "NumPy twin composite_cpu", RuntimeWarning, stacklevel=3)
        _STATE.update(lib=lib, why=why, path=path)
        return lib


def native_available() -> bool:
    """True if the native library is built (or builds now) and loads; False after one warning."""
    return _load() is not None


def _forget() -> None:
    """Drop the loaded-library state (tests: next call looks at the environment again)."""
    with _LOCK:
        _STATE.clear()


MAX_DEFAULT_THREADS = 16  # threads are started per call; more rarely pays off for one batch


def default_threads() -> int:
    """``DALI_ABS_THREADS``, else one more than the CPUs this process may run on (at most 16).

    One more: in a loader the compositing runs while the iterator's thread copies the previous
    batch out, and with rows handed out as threads ask, a spare thread keeps every core busy when
    one is taken (2-core CPU, batch of 32: +9 % for ``SwapConfig()``, +10 % for the Waterbirds
    preset end to end, against as many threads as cores)."""
    env = os.environ.get("DALI_ABS_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise SwapError(f"DALI_ABS_THREADS must be a positive integer, got {env!r}") from None
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus + 1, MAX_DEFAULT_THREADS))


class NormArgs(ctypes.Structure):
    """``abs_norm::Args`` of normalize_rows.h: where and how the launcher normalises (field by
    field as declared there: tests/test_swap_signature.py)."""

    _fields_ = [("out", ctypes.c_void_p), ("mean", ctypes.c_void_p), ("inv", ctypes.c_void_p), ("half", ctypes.c_int)]


def composite(b: Batch, *, threads: int | None = None, vector: bool = True, out: np.ndarray | None = None,
              normalize=None, normalized: np.ndarray | None = None) -> np.ndarray:
    """The batch composited by the kernel text on the CPU: a uint8 [N,H,W,3] array (``out`` when
    given, C-contiguous of that shape and dtype: a buffer reused from batch to batch), equal to
    :func:`dali_abs.swap.twin.composite` byte for byte. ``vector``: whole rows eight pixels at a
    time (``composite_rows.h``) where the CPU has AVX2 and the sample allows it (False: the
    per-pixel body everywhere; same output). ``threads``: host threads (default
    :func:`default_threads`). ``normalize`` (a :class:`~dali_abs.swap.config.Normalize`): return
    the batch normalised to [N,3,H,W] float instead (into ``normalized`` when given), each chunk
    as soon as it is composited, the bytes of :func:`normalize_images` on the uint8 result. Raises
    :class:`NativeUnavailable` if the library cannot be built; :func:`composite_host` falls back
    to the twin instead."""
    if b.on_gpu:
        raise SwapError("the CPU backend composites host (NumPy) batches; this one holds CuPy arrays")
    check_normalize(normalize)
    lib = _load()
    if lib is None:
        raise NativeUnavailable(f"native compositing unavailable: {_STATE.get('why')}")
    if threads is None:
        threads = default_threads()
    elif int(threads) < 1:
        raise SwapError(f"threads must be >= 1, got {threads}")
    mean = mean_colour(np, b.fills) if b.cfg.fill == "mean" else np.zeros((b.n, 3), np.float32)
    out = _output(b, out)
    values = b.kernel_values(b.refs(lambda a: a.ctypes.data), mean, out)
    signature.check(values, b.dims())
    norm = None
    if normalize is not None:
        normalized = _normalized(out, normalize, normalized, "normalized")
        if normalize.dtype == "float16" and not lib.abs_native_f16():  # this CPU: NumPy rounds it after
            lib.abs_composite_host(*signature.ctypes_args(values), int(threads), int(bool(vector)), None)
            return normalize_images(out, normalize, out=normalized)
        m, inv = normalize.constants()
        norm = NormArgs(normalized.ctypes.data, m.ctypes.data, inv.ctypes.data, int(normalize.dtype == "float16"))
    lib.abs_composite_host(*signature.ctypes_args(values), int(threads), int(bool(vector)),
                           None if norm is None else ctypes.byref(norm))
    return out if normalize is None else normalized


def _output(b: Batch, out: np.ndarray | None) -> np.ndarray:
    shape = (b.n, b.h, b.w, 3)
    return np.empty(shape, np.uint8) if out is None else _checked(out, "out", np.uint8, shape)


def _checked(a, name: str, dtype, shape: tuple, shown: str | None = None) -> np.ndarray:
    """``a`` if it is a C-contiguous ``dtype`` NumPy array of ``shape`` (None: any length there),
    else a SwapError naming ``shown`` (default: the shape) and what ``a`` is."""
    dtype = np.dtype(dtype)
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != len(shape) or not a.flags.c_contiguous \
            or any(k is not None and k != m for k, m in zip(shape, a.shape)):
        raise SwapError(f"{name} must be a C-contiguous {dtype} {shown or shape} NumPy array, got "
                        f"{getattr(a, 'dtype', type(a))} {getattr(a, 'shape', '')}")
    return a


def composite_host(b: Batch, out: np.ndarray | None = None, normalize=None,
                   normalized: np.ndarray | None = None) -> np.ndarray:
    """The CPU loader's compositing: :func:`composite` (the kernel text compiled for the host,
    multi-threaded) when it builds, else the twin :func:`dali_abs.swap.twin.composite` (after one
    warning); the same bytes either way, in ``out`` when given; normalised as :func:`composite`
    does with ``normalize``."""
    check_normalize(normalize)
    if native_available():
        return composite(b, out=out, normalize=normalize, normalized=normalized)
    from dali_abs.swap import twin

    res = twin.composite(b)
    if out is not None:
        _output(b, out)[...] = res
        res = out
    return res if normalize is None else normalize_images(res, normalize, out=normalized)


def normalize_images(images: np.ndarray, norm, *, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [N,H,W,3] composites -> [N,3,H,W] float32 / float16 (:class:`~dali_abs.swap.config.Normalize`),
    byte for byte DALI's crop_mirror_normalize: :func:`dali_abs.swap.twin.normalize`, written into
    ``out`` (a C-contiguous buffer of that shape and dtype) when given. Natively the batch is
    normalised while it is composited (:func:`composite` with ``normalize=``), not here."""
    from dali_abs.swap import twin

    check_normalize(norm, "norm", optional=False)
    _checked(images, "images", np.uint8, (None, None, None, 3), "[N,H,W,3]")
    out = _normalized(images, norm, out)
    out[...] = twin.normalize(images, norm)
    return out


def _normalized(images: np.ndarray, norm, out: np.ndarray | None, name: str = "out") -> np.ndarray:
    """The [N,3,H,W] buffer for ``images`` (uint8 [N,H,W,3]) normalised by ``norm``: ``out``, checked, or a new one."""
    n, h, w, _ = images.shape
    dtype = np.dtype(norm.dtype)
    return np.empty((n, 3, h, w), dtype) if out is None else _checked(out, name, dtype, (n, 3, h, w))
