"""Native CPU compositing: ``kernels/composite.cu`` itself, compiled as C++ for the host.

The CUDA kernel text is compiled with the C++ compiler (g++ by default) through
``kernels/cpu_shim.cuh``, which turns the CUDA qualifiers into nothing and the built-in
thread indices into per-thread globals. A small host launcher runs one "CUDA thread" per
output pixel, the pixel range split into contiguous chunks over a few host threads (the kernel
body is per pixel and stateless, so any partition gives the same output). Float arithmetic is
kept IEEE-exact (``-ffp-contract=off``, no ``-ffast-math``), so the result equals
:func:`dali_abs.loader.composite.composite_cpu`, the NumPy twin, pixel for pixel.

The shared library is built on first use and cached under ``$XDG_CACHE_HOME/dali-abs``
(default ``~/.cache/dali-abs``) as ``native-<sha256 of sources, compiler and flags>.so``; the
build writes a temporary file and renames it, so concurrent builds never leave a broken file.
ctypes releases the GIL for the call.

Environment: ``DALI_ABS_CXX`` the compiler (default ``g++``); ``DALI_ABS_NATIVE=0`` turns the
native path off; ``DALI_ABS_THREADS`` the default thread count (default: the CPUs this
process may run on, at most 16). Without a compiler, or if the build fails, :func:`native_available`
returns False after one warning and :func:`dali_abs.loader.composite.composite_host` uses
the NumPy twin.
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
from dali_abs.loader.composite import _check, _mean_colour
from dali_abs.loader.params import FILLS, SwapConfig, SwapError

_ABI = 2  # bump when the launcher's C signature changes
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-ffp-contract=off", "-fno-math-errno",
         "-fvisibility=hidden", "-Wall")

_LAUNCHER = r"""
#include <thread>
#include <vector>

#define ABS_EXPORT extern "C" __attribute__((visibility("default")))
ABS_EXPORT int abs_native_abi() { return %(abi)d; }

// Runs the CUDA threads first..last-1 on the calling host thread. A plain function (not a
// lambda with captures): its arguments are locals, so the compiler can keep the kernel's
// per-launch values in registers across the per-pixel calls.
// x86-64 with glibc (ifunc): also a clone for CPUs with SSE4.1, picked at load time by the
// dynamic linker. There floorf is one roundss instead of a long SSE2 sequence (same IEEE
// results; ~1.5x faster overall). No -march=native: the cached library must run on any x86-64.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__) && \
    !defined(ABS_NATIVE_NO_CLONES)
__attribute__((target_clones("sse4.1", "default")))
#endif
static void abs_run_range(long long first, long long last, long long grid, long long block,
    const unsigned char* images, const float* soft, const unsigned char* fills, const float* boxes,
    const int* partner, const unsigned char* swap, const float* affine, const unsigned int* noise_seed,
    const int* perm, const float* mean_colour, const float* fg_box, unsigned char* out, int n, int h, int w, int r, int f,
    float tight, float loose, float feather, int fill_mode) {
  ABS_SHIM_RUN_RANGE(first, last, grid, block,
                     abs_composite(images, soft, fills, boxes, partner, swap, affine, noise_seed, perm,
                                   mean_colour, fg_box, out, n, h, w, r, f, tight, loose, feather, fill_mode));
}

// One CUDA thread per output pixel: blocks of 2^20 threads, enough blocks to cover the batch,
// so every thread's grid-stride loop runs exactly once. Host thread t runs the CUDA threads of
// the t-th contiguous chunk of the pixel range.
ABS_EXPORT int abs_composite_host(
    const unsigned char* images, const float* soft, const unsigned char* fills, const float* boxes,
    const int* partner, const unsigned char* swap, const float* affine, const unsigned int* noise_seed,
    const int* perm, const float* mean_colour, const float* fg_box, unsigned char* out, int n, int h, int w, int r, int f,
    float tight, float loose, float feather, int fill_mode, int threads) {
  const long long total = (long long)n * h * w;
  const long long block = 1LL << 20, grid = (total + block - 1) / block;
  auto run = [=](long long first, long long last) {
    abs_run_range(first, last, grid, block, images, soft, fills, boxes, partner, swap, affine, noise_seed, perm,
                  mean_colour, fg_box, out, n, h, w, r, f, tight, loose, feather, fill_mode);
  };
  const long long min_chunk = 16384;  // pixels; below that a thread costs more than it saves
  long long t = threads < 1 ? 1 : threads;
  if (t > (total + min_chunk - 1) / min_chunk) t = (total + min_chunk - 1) / min_chunk;
  if (t <= 1) {
    run(0, total);
    return 1;
  }
  // chunk bounds on multiples of 64 px (192 bytes of output): no cache line written by two threads
  const long long chunk = ((total + t - 1) / t + 63) / 64 * 64;
  std::vector<std::thread> pool;
  long long first = 0;
  int used = 1;
  try {
    for (; first + chunk < total; first += chunk) {
      pool.emplace_back(run, first, first + chunk);
      ++used;
    }
  } catch (...) {  // could not start a thread: the calling thread does the rest
  }
  run(first, total);
  for (auto& th : pool) th.join();
  return used;
}
"""


class NativeUnavailable(DaliAbsError, RuntimeError):
    """The native compositing library could not be built or loaded."""


_LOCK = threading.Lock()
_STATE: dict = {}  # "lib": the loaded CDLL or None (unavailable), "why": reason, "path": .so path


def translation_unit() -> str:
    """The full C++ source compiled for the host: shim, kernel text, launcher."""
    from dali_abs.kernels import source

    return "\n".join([
        # kernels become always-inline functions: inlined into the launcher's per-pixel loop
        "#define ABS_SHIM_GLOBAL __attribute__((always_inline)) inline",
        '#line 1 "cpu_shim.cuh"', source("cpu_shim.cuh"),
        '#line 1 "composite.cu"', source("composite.cu"),
        '#line 1 "native_launcher.cpp"', _LAUNCHER % {"abi": _ABI},
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
    fn.argtypes = [ctypes.c_void_p] * 12 + [ctypes.c_int] * 5 + [ctypes.c_float] * 3 + [ctypes.c_int] * 2
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
    """``DALI_ABS_THREADS``, else the CPUs this process may run on (at most 16)."""
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
    return max(1, min(cpus, MAX_DEFAULT_THREADS))


def composite_native(images: np.ndarray, soft: np.ndarray, fills: np.ndarray, boxes: np.ndarray,
                     params: dict, cfg: SwapConfig, *, threads: int | None = None) -> np.ndarray:
    """:func:`~dali_abs.loader.composite.composite_cpu` computed by the kernel text on the CPU
    (same inputs, same checks, same output: a new uint8 [N,H,W,3] array). ``threads``: host
    threads (default :func:`default_threads`). Raises :class:`NativeUnavailable` if the
    library cannot be built; use :func:`~dali_abs.loader.composite.composite_host` to fall back."""
    n, h, w, r, f, p = _check(images, soft, fills, boxes, params, cfg)
    for name, a in (("images", images), ("soft", soft), ("fills", fills), ("boxes", boxes)):
        if not isinstance(a, np.ndarray):
            raise SwapError(f"composite_native needs NumPy arrays, got {name} of type {type(a).__name__}")
    lib = _load()
    if lib is None:
        raise NativeUnavailable(f"native compositing unavailable: {_STATE.get('why')}")
    if threads is None:
        threads = default_threads()
    elif int(threads) < 1:
        raise SwapError(f"threads must be >= 1, got {threads}")
    if not p["swap"].any():
        return images.copy()
    mean = _mean_colour(np, fills) if cfg.fill == "mean" else np.zeros((n, 3), np.float32)
    out = np.empty_like(images)
    lib.abs_composite_host(
        images.ctypes.data, soft.ctypes.data, fills.ctypes.data, boxes.ctypes.data, p["partner"].ctypes.data,
        p["swap"].ctypes.data, p["affine"].ctypes.data, p["noise_seed"].ctypes.data, p["perm"].ctypes.data,
        mean.ctypes.data, p["fg_box"].ctypes.data, out.ctypes.data, n, h, w, r, f, cfg.tight, cfg.loose, cfg.feather,
        FILLS.index(cfg.fill), int(threads))
    return out
