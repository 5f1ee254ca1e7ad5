"""The kernel text itself: composite.cu compiled as C++ with g++ through the shipped cpu_shim.cuh
(its CUDA entry points run by the shim) against the twin; the GPU backend's host code driving it
(dali_abs.swap.gpu, through a stand-in for CuPy); and, where there is a GPU, the real kernel."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dali_abs import swap
from dali_abs.swap import AugmentConfig, SwapConfig, SwapError, signature
from dali_abs.swap.batch import mean_colour
from dali_abs.swap.twin import composite as twin
from swap_cases import CASES, make_batch, mismatch, paper_swap, paper_waterbirds, params_for, ragged_batch

ROOT = Path(__file__).resolve().parents[1]

WRAPPER = r"""
#include "cpu_shim.cuh"
#include "composite.cu"
// The CUDA entry points themselves (1-D grid-stride loops), run by the shim.
extern "C" void run_abs_composite(ABS_COMPOSITE_PARAMS, int grid, int block) {
  ABS_SHIM_LAUNCH(grid, block, abs_composite(ABS_COMPOSITE_ARGS));
}
extern "C" void run_abs_tile_mean(const AbsRefs* refs, float* mean_colour, int n, int grid, int block) {
  ABS_SHIM_LAUNCH(grid, block, abs_tile_mean(refs, mean_colour, n));
}
"""


@pytest.fixture(scope="module")
def kernel_lib(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.fail("g++ is needed to compile the kernel text for the CPU (Debian: apt-get install g++)")
    d = tmp_path_factory.mktemp("kernel")
    (d / "wrap.cpp").write_text(WRAPPER)
    so = d / "libcomposite.so"
    r = subprocess.run(["g++", "-O2", "-shared", "-fPIC", "-ffp-contract=off", "-Wall", "-Werror",
                        "-I", str(ROOT / "dali_abs" / "swap"), str(d / "wrap.cpp"), "-o", str(so)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lib = ctypes.CDLL(str(so))
    lib.run_abs_composite.restype = None
    lib.run_abs_composite.argtypes = signature.argtypes(extra=(ctypes.c_int, ctypes.c_int))
    lib.run_abs_tile_mean.restype = None
    lib.run_abs_tile_mean.argtypes = [ctypes.c_void_p, ctypes.c_void_p] + [ctypes.c_int] * 3
    return lib


def run_kernel_text(lib, b: swap.Batch, grid=13, block=64):
    out = np.full((b.n, b.h, b.w, 3), 77, np.uint8)
    refs = b.refs(lambda a: a.ctypes.data)
    values = b.kernel_values(refs, mean_colour(np, b.fills), out)
    signature.check(values, b.dims())
    lib.run_abs_composite(*signature.ctypes_args(values), grid, block)
    return out


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"{c.fill}-rot{c.rotation[1]:g}-f{c.feather:g}")
def test_kernel_text_matches_the_twin(kernel_lib, cfg):
    rng = np.random.default_rng(100 + CASES.index(cfg))
    total, bad, differ = 0, 0.0, 0.0
    # one size, sides not divisible by R, and a ragged batch resized to 45 x 50 with crops and flips
    for h, w, r, f, ragged in ((48, 40, 8, 16, False), (37, 53, 6, 11, False), (45, 50, 8, 0, True)):
        images, soft, fills, boxes = ragged_batch(rng, 6, r) if ragged else make_batch(rng, 6, h, w, r, f)
        aug = AugmentConfig() if ragged else None
        p = params_for(rng, soft, cfg, h, w, augment=aug)
        b = swap.batch(images, soft, fills, boxes, p, cfg, size=(h, w))
        want, got = twin(b), run_kernel_text(kernel_lib, b)
        bad += mismatch(want, got) * want[..., 0].size
        differ += float((want != got).any(-1).mean()) * want[..., 0].size
        total += want[..., 0].size
        assert np.abs(want.astype(int) - got.astype(int)).max() <= 1 or mismatch(want, got) < 1e-3
    print(f"{cfg.fill} feather={cfg.feather} rotation={cfg.rotation}: pixels differing {differ / total:.2e}, "
          f"by > 1 LSB {bad / total:.2e}")
    assert bad / total < 1e-3


def test_the_tile_mean_kernel_equals_the_twins_mean(kernel_lib):
    rng = np.random.default_rng(5)
    images, soft, fills, boxes = ragged_batch(rng, 7, 4)
    fills[2] = np.full((1, 1, 3), 255, np.uint8)  # one pixel
    b = swap.batch(images, soft, fills, boxes, params_for(rng, soft, paper_swap(), 9, 9), paper_swap(fill="mean"),
                   size=9)
    mean = np.full((7, 3), -1, np.float32)
    kernel_lib.run_abs_tile_mean(b.refs(lambda a: a.ctypes.data).ctypes.data, mean.ctypes.data, 7, 2, 3)
    assert np.array_equal(mean, mean_colour(np, b.fills))


def test_a_partner_out_of_range_stays_inside_the_batch(kernel_lib):
    """Records on the device are not read by the host: the kernel keeps partner (and perm) in
    range itself, as if the sample were its own partner."""
    rng = np.random.default_rng(6)
    images, soft, fills, boxes = make_batch(rng, 4)
    cfg = paper_swap(fill="patches")
    p = params_for(rng, soft, cfg, 48, 40)
    rec = swap.pack_samples(p, soft, boxes, (48, 40))
    own = rec.copy()
    rec["partner"] = [7, -1, 2, 100]
    rec["perm"][0, :3] = (-5, 64, 1 << 30)
    own["partner"] = [0, 1, 2, 3]
    own["perm"][0, :3] = (0, 63, 63)
    b = swap.Batch(4, 48, 40, 8, cfg, list(images), np.array([i.shape[:2] for i in images], np.int32), list(fills),
                   np.array([f.shape[:2] for f in fills], np.int32), rec)
    want = twin(swap.batch_of_records(list(images), list(fills), own, cfg, (48, 40), 8))
    assert np.array_equal(run_kernel_text(kernel_lib, b), want)
    with pytest.raises(SwapError, match=r"samples\['partner'\] must index the batch \(0..3\), got values -1..100"):
        swap.batch_of_records(list(images), list(fills), rec, cfg, (48, 40), 8)


class _FakeCupy:
    """Just enough of CuPy for the GPU backend's host code, with the g++-compiled kernel text
    behind RawModule: checks the argument list a real launch would pass (order, device arrays
    for the pointers, exact scalar types, all from the signature table), without a GPU."""

    class ndarray(np.ndarray):
        @property
        def data(self):  # CuPy's MemoryPointer: .ptr is the device address
            return type("MemoryPointer", (), {"ptr": self.ctypes.data})()

        @property
        def __cuda_array_interface__(self):  # what tells device arrays apart
            return self.__array_interface__

        def get(self, *a, **k):  # a device-to-host copy: the GPU op must never make one
            raise AssertionError("device-to-host copy")

    int64, float32, uint8 = np.int64, np.float32, np.uint8

    def __init__(self, lib):
        self.lib, self.launches = lib, []
        fake = self

        class RawModule:
            def __init__(self, code, options=()):
                assert "abs_composite" in code and "--fmad=false" in options

            def get_function(self, name):
                assert name in ("abs_composite", "abs_tile_mean")
                return lambda grid, block, args: fake._launch(name, grid, block, args)

        self.RawModule = RawModule

    def asarray(self, a):
        return np.ascontiguousarray(a).view(self.ndarray)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype).view(self.ndarray)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype).view(self.ndarray)

    def asnumpy(self, *a, **k):
        raise AssertionError("device-to-host copy")

    def _launch(self, name, grid, block, args):
        want = [("p" if a.shape else np.dtype(a.dtype).type) for a in signature.ARGS] if name == "abs_composite" \
            else ["p", "p", np.int32]
        assert len(args) == len(want)
        conv = []
        for a, w in zip(args, want):
            if w == "p":
                assert isinstance(a, self.ndarray) and a.flags.c_contiguous, type(a)
                conv.append(a.ctypes.data)
            else:
                assert type(a) is w, f"scalar {a!r} is {type(a).__name__}, kernel takes {w.__name__}"
                conv.append(a.item())
        self.launches.append(name)
        getattr(self.lib, f"run_{name}")(*conv, grid[0], block[0])


@pytest.mark.parametrize("cfg", [paper_swap(), paper_swap(fill="mean", p=0.7), paper_waterbirds(feather=1.0)],
                         ids=["cached", "mean", "waterbirds-feather"])
def test_the_gpu_backends_host_code_drives_the_kernel_text(kernel_lib, monkeypatch, cfg):
    from dali_abs.swap import gpu

    fake = _FakeCupy(kernel_lib)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(gpu, "_MODULE", None)
    rng = np.random.default_rng(12)
    images, soft, fills, boxes = ragged_batch(rng, 5, 4)
    p = params_for(rng, soft, cfg, 24, 20, augment=AugmentConfig())
    host = swap.batch(images, soft, fills, boxes, p, cfg, size=(24, 20))
    # as the loader's GPU op gets them: device images, tiles and one device record per sample
    dev = swap.batch_of_records([fake.asarray(a) for a in images], [fake.asarray(a) for a in fills],
                                [fake.asarray(r) for r in host.records().view(np.uint8).reshape(5, -1)], cfg,
                                (24, 20), 4)
    got = gpu.composite(dev)
    assert fake.launches == (["abs_tile_mean"] if cfg.fill == "mean" else []) + ["abs_composite"]
    assert isinstance(got, fake.ndarray) and np.array_equal(np.asarray(got), twin(host))
    with pytest.raises(SwapError, match="the GPU backend needs CuPy arrays, got images of type ndarray"):
        gpu.composite(host)
    # the loader's GPU operator itself: one call, one launch (two for the mean fill), no host copy
    from dali_abs.loader.ops import _Composite

    fake.launches.clear()
    outs = _Composite(cfg, (24, 20), 4)(dev.images, dev.fills, dev.samples)
    assert fake.launches == (["abs_tile_mean"] if cfg.fill == "mean" else []) + ["abs_composite"]
    assert np.array_equal(np.stack([np.asarray(o) for o in outs]), twin(host))


# --- the real kernel on a GPU --------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"{c.fill}-rot{c.rotation[1]:g}-f{c.feather:g}")
def test_the_gpu_backend_matches_the_twin(cfg):
    import cupy

    rng = np.random.default_rng(11)
    images, soft, fills, boxes = ragged_batch(rng, 16, 16)
    p = params_for(rng, soft, cfg, 96, 80, augment=AugmentConfig())
    host = swap.batch(images, soft, fills, boxes, p, cfg, size=(96, 80))
    dev = swap.batch([cupy.asarray(a) for a in images], soft, [cupy.asarray(a) for a in fills], boxes, p, cfg,
                     size=(96, 80))
    got = swap.composite(dev)
    assert isinstance(got, cupy.ndarray)
    assert mismatch(twin(host), cupy.asnumpy(got)) < 1e-3
