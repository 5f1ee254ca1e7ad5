"""The native CPU compositing (composite.cu compiled for the host, dali_abs.swap.cpu)
against the NumPy twin, its thread partition, its build cache and its fallback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from dali_abs import swap
from dali_abs.swap import AugmentConfig, SwapConfig, SwapError
from dali_abs.swap import cpu as native
from dali_abs.swap.twin import composite_cpu
from swap_cases import (CASES, RECORDED, case_id, make_batch, paper_swap, paper_waterbirds, params_for, ragged_batch,
                        recorded_digests)

ROOT = Path(__file__).resolve().parents[1]

def native_on(images, soft, fills, boxes, params, cfg, size=None, **kw):
    """The CPU backend on the kornia-style inputs."""
    return native.composite(swap.batch(images, soft, fills, boxes, params, cfg, size), **kw)

def host_on(images, soft, fills, boxes, params, cfg, size=None):
    return native.composite_host(swap.batch(images, soft, fills, boxes, params, cfg, size))

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The library built once for this module, in a private cache dir."""
    if shutil.which("g++") is None:
        pytest.fail("g++ is needed to compile the kernel text for the CPU (Debian: apt-get install g++)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
        for var in ("DALI_ABS_CXX", "DALI_ABS_NATIVE", "DALI_ABS_THREADS"):
            mp.delenv(var, raising=False)
        native._forget()
        assert native.native_available(), native._STATE.get("why")
        yield native._STATE["path"]
    native._forget()

@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """Empty cache dir, default environment, no library loaded; state dropped afterwards."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for var in ("DALI_ABS_CXX", "DALI_ABS_NATIVE", "DALI_ABS_THREADS"):
        monkeypatch.delenv(var, raising=False)
    native._forget()
    yield tmp_path / "xdg" / "dali-abs"
    native._forget()

# --- parity with the twin ------------------------------------------------------------------

@pytest.mark.parametrize("cfg", CASES, ids=case_id)
def test_native_equals_the_twin_pixel_for_pixel(built, cfg):
    rng = np.random.default_rng(300 + CASES.index(cfg))
    # small odd sides (not divisible by R), and a batch large enough to be split over threads
    for n, h, w, r, f in ((6, 37, 53, 6, 11), (8, 96, 80, 16, 32)):
        images, soft, fills, boxes = make_batch(rng, n, h, w, r, f)
        p = params_for(rng, soft, cfg, h, w)
        twin = composite_cpu(images, soft, fills, boxes, p, cfg)
        got = native_on(images, soft, fills, boxes, p, cfg, threads=3)
        assert got.dtype == np.uint8 and got.shape == images.shape and got is not images
        assert int((got != twin).any(-1).sum()) == 0, f"{cfg.fill}: {(got != twin).any(-1).sum()} pixels differ"
        assert np.array_equal(host_on(images, soft, fills, boxes, p, cfg), twin)
    # a ragged batch (as DALI hands it over) resized, cropped and flipped to 61 x 47
    images, soft, fills, boxes = ragged_batch(rng, 9, 8)
    p = params_for(rng, soft, cfg, 61, 47, augment=AugmentConfig(area=(0.3, 1.0)))
    twin = composite_cpu(images, soft, fills, boxes, p, cfg, size=(61, 47))
    got = native_on(images, soft, fills, boxes, p, cfg, size=(61, 47), threads=2)
    assert got.shape == (9, 61, 47, 3) and np.array_equal(got, twin)

@pytest.mark.parametrize("kind, name", list(RECORDED), ids=[f"{k}-{n}" for k, n in RECORDED])
def test_native_gives_the_recorded_bytes(built, kind, name):
    assert recorded_digests(kind, name, native_on) == RECORDED[kind, name]

ROW_CASES = [paper_swap(), paper_swap(p=0.5, scale=(0.6, 1.4)), paper_swap(tight=0.3, loose=0.0, translate=0.5),
             paper_waterbirds(), paper_waterbirds(feather=1.5), paper_swap(fill="noise"),
             paper_swap(background="own", foreground=False), paper_swap(background="own", backdrop=(9, 99, 199), p=0.5)]

@pytest.mark.parametrize("cfg", ROW_CASES, ids=["default", "scaled-p0.5", "loose0", "rotated", "rotated-feathered",
                                                "noise-fill", "no-foreground", "backdrop-p0.5"])
def test_the_row_path_equals_the_per_pixel_body(built, cfg):
    """composite_rows.h (eight pixels a step from per-sample tables) gives the same bytes
    as the per-pixel body and the twin: widths below, at and above 8, crops, flips, ragged
    sources, every image's last row and column sampled."""
    rng = np.random.default_rng(700 + ROW_CASES.index(cfg))
    for n, h, w, r, f in ((5, 9, 5, 4, 3), (7, 33, 8, 8, 16), (6, 31, 45, 16, 12)):
        images, soft, fills, boxes = make_batch(rng, n, h, w, r, f)
        p = params_for(rng, soft, cfg, h, w)
        twin = composite_cpu(images, soft, fills, boxes, p, cfg)
        rows = native_on(images, soft, fills, boxes, p, cfg, threads=2)
        body = native_on(images, soft, fills, boxes, p, cfg, threads=2, vector=False)
        assert np.array_equal(rows, body) and np.array_equal(rows, twin)
    images, soft, fills, boxes = ragged_batch(rng, 10, 16)
    for size in ((61, 47), (128, 96), (17, 9)):
        p = params_for(rng, soft, cfg, *size, augment=AugmentConfig(area=(0.2, 1.0)))
        twin = composite_cpu(images, soft, fills, boxes, p, cfg, size=size)
        rows = native_on(images, soft, fills, boxes, p, cfg, size=size, threads=3)
        assert np.array_equal(rows, twin), f"{size}: {(rows != twin).any(-1).sum()} pixels differ"
        assert np.array_equal(rows, native_on(images, soft, fills, boxes, p, cfg, size=size,
                                                            vector=False))

def _at_page_end(x: np.ndarray, keep: list) -> np.ndarray:
    """A copy of x whose last byte sits right before an unreadable page: a read past it faults."""
    import ctypes
    import mmap

    page = mmap.PAGESIZE
    pages = (x.nbytes + page - 1) // page + 1
    m = mmap.mmap(-1, pages * page)
    buf = (ctypes.c_char * (pages * page)).from_buffer(m)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(ctypes.addressof(buf) + (pages - 1) * page, page, 0) == 0  # PROT_NONE
    a = np.frombuffer(m, np.uint8, count=x.nbytes, offset=(pages - 1) * page - x.nbytes).reshape(x.shape)
    a[...] = x
    keep.append((m, buf))
    return a

@pytest.mark.skipif(sys.platform != "linux", reason="guard pages through libc mprotect")
@pytest.mark.parametrize("cfg", [paper_swap(), paper_swap(rotation=(-180.0, 180.0), scale=(0.5, 2.0))],
                         ids=["axis-aligned", "rotated"])
def test_no_read_passes_the_end_of_an_image_or_tile(built, cfg):
    """Sources of 1 x 1 px and up, each ending right before an unreadable page (the row
    renderer reads four bytes per RGB pixel): no fault, the twin's bytes."""
    rng = np.random.default_rng(41)
    keep: list = []
    _, soft, _, boxes = make_batch(rng, 6, 8, 8, 4, 4, degenerate_box=False)
    soft[:3] = 1.0  # whole-image foregrounds: every lane gathers from the foreground image
    sides = [(1, 1), (1, 2), (2, 1), (1, 1), (3, 5), (2, 2)]
    images = [_at_page_end(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), keep) for h, w in sides]
    fills = [_at_page_end(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), keep) for h, w in reversed(sides)]
    for size in ((16, 16), (9, 13)):
        p = params_for(rng, soft, cfg, *size)
        got = native_on(images, soft, fills, boxes, p, cfg, size=size, threads=2)
        assert np.array_equal(got, composite_cpu(images, soft, fills, boxes, p, cfg, size=size))

@needs_gxx
def test_the_plain_x86_64_build_equals_the_twin_too(fresh, monkeypatch):
    """Without the SSE4.1 clone (what a CPU without SSE4.1 runs) the output is the same."""
    monkeypatch.setattr(native, "FLAGS", native.FLAGS + ("-DABS_NATIVE_NO_CLONES",))
    rng = np.random.default_rng(24)
    for cfg in (paper_swap(), paper_waterbirds(fill="noise", feather=1.5)):
        images, soft, fills, boxes = make_batch(rng, 8, 64, 56, 8, 16)
        p = params_for(rng, soft, cfg, 64, 56)
        got = native_on(images, soft, fills, boxes, p, cfg, threads=2)
        assert np.array_equal(got, composite_cpu(images, soft, fills, boxes, p, cfg))
    assert "-DABS_NATIVE_NO_CLONES" in native.FLAGS and native._STATE["path"].parent == fresh

def test_thread_count_does_not_change_the_output(built, monkeypatch):
    rng = np.random.default_rng(21)
    cfg = paper_waterbirds(fill="cached", feather=1.0, p=0.9)
    images, soft, fills, boxes = make_batch(rng, 12, 72, 68, 8, 16)  # 58752 px: up to 4 chunks
    p = params_for(rng, soft, cfg, 72, 68)
    lib = native._load()
    launch, used = lib.abs_composite_host, []
    monkeypatch.setattr(lib, "abs_composite_host", lambda *a: used.append(launch(*a)) or used[-1], raising=False)
    outs = [native_on(images, soft, fills, boxes, p, cfg, threads=t) for t in (1, 2, 3, 4, 16)]
    assert used == [1, 2, 3, 4, 4]  # 16 requested: at most one thread per 16384 px
    for o in outs[1:]:
        assert np.array_equal(o, outs[0])
    assert np.array_equal(outs[0], composite_cpu(images, soft, fills, boxes, p, cfg))
    monkeypatch.delenv("DALI_ABS_THREADS", raising=False)  # default: one spare thread over the CPUs
    assert native.default_threads() == min(len(os.sched_getaffinity(0)) + 1, native.MAX_DEFAULT_THREADS)
    monkeypatch.setenv("DALI_ABS_THREADS", "2")
    assert native.default_threads() == 2
    assert np.array_equal(native_on(images, soft, fills, boxes, p, cfg), outs[0])
    assert used[-1] == 2

def test_no_swapped_sample_returns_a_copy_and_checks_match_the_twin(built):
    rng = np.random.default_rng(22)
    images, soft, fills, boxes = make_batch(rng)
    cfg = paper_swap(p=0.0)
    p = params_for(rng, soft, cfg, 48, 40)
    out = native_on(images, soft, fills, boxes, p, cfg)
    assert out is not images and np.array_equal(out, images)
    with pytest.raises(SwapError, match=r"images must be uint8 \[N,H,W,3\]"):
        native_on(images.astype(np.float32), soft, fills, boxes, p, cfg)
    with pytest.raises(SwapError, match=r"must index the batch \(0..7\), got values 8..8"):
        native_on(images, soft, fills, boxes, {**p, "partner": np.full(8, 8, np.int32)}, cfg)
    with pytest.raises(SwapError, match="threads must be >= 1, got 0"):
        native_on(images, soft, fills, boxes, p, cfg, threads=0)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_native_normalize_equals_the_twin(built, dtype):
    from dali_abs.swap import Normalize
    from dali_abs.swap.twin import normalize as twin_normalize

    images = np.random.default_rng(24).integers(0, 256, (5, 17, 23, 3), dtype=np.uint8)  # odd sizes: the tails
    norm = Normalize.imagenet(dtype)
    out = native.normalize_images(images, norm)
    assert out.shape == (5, 3, 17, 23) and out.dtype == np.dtype(dtype) and out.flags.c_contiguous
    assert out.tobytes() == twin_normalize(images, norm).tobytes()
    with pytest.raises(SwapError, match=r"out must be a C-contiguous float32 \(5, 3, 17, 23\) NumPy array, got float64"):
        native.normalize_images(images, Normalize.imagenet(), out=np.empty((5, 3, 17, 23)))
    with pytest.raises(SwapError, match=r"images must be a C-contiguous uint8 \[N,H,W,3\] NumPy array, got uint8 "
                                        r"\(5, 17, 23, 3\)"):
        native.normalize_images(images[:, ::-1], norm)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
# 12 x 72 x 68: several chunks over the threads; 71 x 67: odd plane sizes and chunks starting
# mid-sample, the tails of abs_norm::pixels (its only caller now)
@pytest.mark.parametrize("n, h, w", [(12, 72, 68), (5, 71, 67)])
def test_compositing_and_normalising_in_one_pass_gives_the_same_bytes(built, dtype, n, h, w):
    from dali_abs.swap import Normalize
    from dali_abs.swap.twin import normalize as twin_normalize

    rng = np.random.default_rng(25)
    cfg = paper_waterbirds(fill="cached")
    images, soft, fills, boxes = make_batch(rng, n, h, w, 8, 16)
    b = swap.batch(images, soft, fills, boxes, params_for(rng, soft, cfg, h, w), cfg)
    norm = Normalize.imagenet(dtype)
    expected = twin_normalize(native.composite(b, threads=1), norm).tobytes()
    for threads in (1, 3):
        assert native.composite(b, threads=threads, normalize=norm).tobytes() == expected


def test_a_reused_output_buffer_gets_the_same_bytes(built):
    rng = np.random.default_rng(23)
    cfg = paper_waterbirds(fill="cached")
    images, soft, fills, boxes = make_batch(rng)
    b = swap.batch(images, soft, fills, boxes, params_for(rng, soft, cfg, 48, 40), cfg)
    buf = np.full((8, 48, 40, 3), 7, np.uint8)
    assert native.composite(b, out=buf) is buf and np.array_equal(buf, native.composite(b))
    with pytest.raises(SwapError, match=r"out must be a C-contiguous uint8 \(8, 48, 40, 3\) NumPy array, got uint8 "
                                        r"\(8, 48, 41, 3\)"):
        native.composite(b, out=np.empty((8, 48, 41, 3), np.uint8))

# --- build cache ---------------------------------------------------------------------------

@needs_gxx
def test_the_cached_library_is_reused_and_a_broken_one_rebuilt(fresh, monkeypatch):
    # a truncated / foreign file where the library should be is rebuilt, not trusted
    so = native.library_path()
    assert so.parent == fresh and so.name.startswith("native-") and so.suffix == ".so"
    fresh.mkdir(parents=True)
    so.write_bytes(b"not a shared library")
    assert native.native_available() and native._STATE["path"] == so
    assert so.stat().st_size > 1000
    assert [p.name for p in fresh.iterdir()] == [so.name]  # no temporary files left behind
    mtime = so.stat().st_mtime_ns
    native._forget()

    def no_compile(*a):
        raise AssertionError("recompiled although the cached library exists")

    monkeypatch.setattr(native, "_compile", no_compile)
    assert native.native_available() and native._STATE["path"] == so
    assert so.stat().st_mtime_ns == mtime

@needs_gxx
def test_concurrent_builds_leave_one_good_library(fresh):
    code = "from dali_abs.swap import cpu as native; assert native.native_available(), native._STATE"
    env = {**os.environ, "XDG_CACHE_HOME": str(fresh.parent)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for pr in procs:
        _, err = pr.communicate(timeout=120)
        assert pr.returncode == 0, err
    files = list(fresh.iterdir())
    assert len(files) == 1 and files[0].suffix == ".so", files
    assert native.native_available() and native._STATE["path"] == files[0]

# --- fallback ------------------------------------------------------------------------------

@pytest.mark.parametrize("cxx", ["/nonexistent/g++", "false"])
def test_a_broken_compiler_falls_back_to_the_twin_with_one_warning(fresh, monkeypatch, cxx):
    monkeypatch.setenv("DALI_ABS_CXX", cxx)
    rng = np.random.default_rng(23)
    cfg = paper_swap(fill="mean", feather=2.0)
    images, soft, fills, boxes = make_batch(rng)
    p = params_for(rng, soft, cfg, 48, 40)
    with pytest.warns(RuntimeWarning, match="native CPU compositing unavailable.*using the slower NumPy twin"):
        assert not native.native_available()
    assert cxx in native._STATE["why"] or "failed" in native._STATE["why"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only one warning per process
        assert not native.native_available()
        out = host_on(images, soft, fills, boxes, p, cfg)
    assert np.array_equal(out, composite_cpu(images, soft, fills, boxes, p, cfg))
    with pytest.raises(native.NativeUnavailable, match="unavailable"):
        native_on(images, soft, fills, boxes, p, cfg)
    assert not fresh.exists() or not list(fresh.iterdir())  # no partial library left

def test_native_can_be_switched_off_without_a_warning(fresh, monkeypatch):
    monkeypatch.setenv("DALI_ABS_NATIVE", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not native.native_available()
    assert native._STATE["why"] == "disabled by DALI_ABS_NATIVE"


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_without_the_library_the_twin_composites_and_normalises_the_same(fresh, monkeypatch, dtype):
    from dali_abs.swap import Normalize

    rng = np.random.default_rng(26)
    cfg = paper_waterbirds(fill="cached")
    images, soft, fills, boxes = make_batch(rng)
    b = swap.batch(images, soft, fills, boxes, params_for(rng, soft, cfg, 48, 40), cfg)
    norm = Normalize.imagenet(dtype)
    expected = native.composite_host(b, normalize=norm).tobytes()
    native._forget()
    monkeypatch.setenv("DALI_ABS_NATIVE", "0")
    buf = np.empty((8, 3, 48, 40), np.dtype(dtype))
    assert swap.composite(b, normalize=norm, normalized=buf) is buf and buf.tobytes() == expected
    assert native._STATE["why"] == "disabled by DALI_ABS_NATIVE"


def test_float16_without_f16c_is_rounded_by_numpy_to_the_same_bytes(built, monkeypatch):
    from dali_abs.swap import Normalize

    rng = np.random.default_rng(27)
    cfg = paper_swap()
    images, soft, fills, boxes = make_batch(rng)
    b = swap.batch(images, soft, fills, boxes, params_for(rng, soft, cfg, 48, 40), cfg)
    norm = Normalize.imagenet("float16")
    expected = native.composite(b, normalize=norm).tobytes()
    monkeypatch.setattr(native._load(), "abs_native_f16", lambda: 0, raising=False)  # a CPU without F16C
    assert native.composite(b, normalize=norm).tobytes() == expected
