"""Shared fixtures: small real datasets written to temp folders once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep torch and onnxruntime from oversubscribing the 2 CI cores when pytest runs in parallel.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    from dali_abs.devices import cupy_problem

    # A device is not enough: CuPy compiles the kernels with NVRTC, which the wheel does not bring.
    problem = cupy_problem()
    if problem is None:
        return
    skip = pytest.mark.skip(reason=f"needs an NVIDIA GPU with CuPy and NVRTC: {problem}")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_config():
    from dali_abs.synthetic import SyntheticConfig

    # 64 px images with an 8 x 8 grid (8-px patches): small enough for fast training tests.
    return SyntheticConfig(classes=2, size=64, train=160, val=32, test=64, rho=1.0, seed=3)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, tiny_config) -> Path:
    """A built-in benchmark dataset (read-only by convention: tests must not write into it)."""
    from dali_abs.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data") / "tiny", tiny_config, progress=False)


@pytest.fixture(scope="session")
def tiny_labels(tmp_path_factory, tiny_dataset) -> Path:
    """8 x 8 patch labels for 64 majority-group training images of ``tiny_dataset``."""
    from dali_abs.dataset import load_dataset
    from dali_abs.labels import labels_from_masks, write_labels

    ds = load_dataset(tiny_dataset)
    labels = labels_from_masks(ds, tiny_dataset / "masks", grid=8, threshold=0.25, count=64,
                               majority_only=True, seed=0, progress=False)
    out = tmp_path_factory.mktemp("labels") / "labels.csv"
    write_labels(out, labels)
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tiny_dataset, tiny_labels):
    """(segmenter.onnx, inpainter.onnx): a segmenter trained 8 epochs on ``tiny_dataset``
    (64 px, 8 x 8 grid; test patch IoU ~0.73) and the exported push-pull fill."""
    from dali_abs.dataset import load_dataset
    from dali_abs.models import inpainter as inet
    from dali_abs.segmenter.train import train_segmenter

    d = tmp_path_factory.mktemp("models")
    train_segmenter(load_dataset(tiny_dataset), tiny_labels, d / "seg.onnx", input_size=64, epochs=8,
                    batch_size=16, threads=2, progress=False, seed=0)
    inet.export_onnx(inet.build("pushpull"), d / "fill.onnx", "pushpull")
    return d / "seg.onnx", d / "fill.onnx"


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory, tiny_dataset, tiny_models) -> Path:
    """A finished cache of every image of ``tiny_dataset``."""
    from dali_abs.cache.precompute import PrecomputeConfig, precompute
    from dali_abs.dataset import load_dataset

    out = tmp_path_factory.mktemp("cache") / "cache"
    precompute(load_dataset(tiny_dataset), *tiny_models, out, PrecomputeConfig(chunk_size=64, device="cpu"),
               progress=False)
    return out


def _write_bomb_png(path: Path, side: int = 20000) -> Path:
    """A valid 1-bit PNG of side x side black pixels: ~50 kB on disk, 400 Mpx (1.2 GB as RGB) decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def bomb_png():
    """Factory: write a 20000 x 20000 decompression-bomb PNG to a path (returns the path)."""
    return _write_bomb_png
