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
    skip = pytest.mark.skipif(problem is not None, reason=f"needs an NVIDIA GPU with CuPy and NVRTC: {problem}")
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


def _graph_model(nodes, inputs, output, metadata: dict, path: Path) -> Path:
    """Write a real ONNX model built with onnx.helper (opset 17) with ``metadata`` as its props."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(output[0], TensorProto.FLOAT,
                                                                                 output[1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _const(name: str, value: float):
    import numpy as np
    from onnx import helper, numpy_helper

    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value, np.float32), name))


def _nan_when_bright(x: str, out: str, tag: str) -> list:
    """Nodes giving ``out`` = 0 * sqrt(0.95 - max(x)) per sample: 0, or NaN when a pixel of x is above 0.95."""
    from onnx import helper

    return [helper.make_node("ReduceMax", [x], [f"{tag}max"], axes=[1, 2, 3], keepdims=1),
            _const(f"{tag}c95", 0.95), _const(f"{tag}zero", 0.0),
            helper.make_node("Sub", [f"{tag}c95", f"{tag}max"], [f"{tag}d"]),
            helper.make_node("Sqrt", [f"{tag}d"], [f"{tag}s"]),
            helper.make_node("Mul", [f"{tag}zero", f"{tag}s"], [out])]


def segmenter_graph(path: Path, grid: int, size: int, kind: str) -> Path:
    """A real ONNX segmenter with the dali-abs metadata: per patch the mean brightness p (0..1), given as
    ``kind`` = "probability" (p), "logits" (100 p - 50: -50..50, no sigmoid) or "nan_when_bright"
    (p, NaN for an image with a pixel above 0.95)."""
    from onnx import TensorProto, helper

    from dali_abs.models import segmenter as net

    patch = size // grid
    nodes = [helper.make_node("AveragePool", ["image"], ["pooled"], kernel_shape=[patch, patch],
                              strides=[patch, patch]),
             helper.make_node("ReduceMean", ["pooled"], ["p"], axes=[1], keepdims=1)]
    if kind == "logits":
        nodes += [_const("hundred", 100.0), _const("fifty", 50.0), helper.make_node("Mul", ["p", "hundred"], ["p100"]),
                  helper.make_node("Sub", ["p100", "fifty"], ["foreground"])]
    elif kind == "nan_when_bright":
        nodes += _nan_when_bright("image", "poison", "n") + [helper.make_node("Add", ["p", "poison"], ["foreground"])]
    else:
        nodes += [helper.make_node("Identity", ["p"], ["foreground"])]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])]
    return _graph_model(nodes, inputs, ("foreground", ["batch", 1, grid, grid]), net.onnx_metadata(grid, size), path)


def inpainter_graph(path: Path, kind: str) -> Path:
    """A real ONNX inpainter under the dali-abs contract: holes filled with a constant (``kind`` = "black":
    0, a legal output) or with NaN (``kind`` = "nan": NaN everywhere; "nan_when_bright": gray 0.5, but
    NaN for an image with a pixel above 0.95)."""
    from onnx import TensorProto, helper

    from dali_abs.models import inpainter as net

    fill = {"black": 0.0, "nan": float("nan"), "nan_when_bright": 0.5}[kind]
    nodes = [_const("one", 1.0), _const("fill", fill),
             helper.make_node("Sub", ["one", "mask"], ["keep"]),
             helper.make_node("Mul", ["image", "keep"], ["kept"]),
             helper.make_node("Mul", ["mask", "fill"], ["hole"]),
             helper.make_node("Add", ["kept", "hole"], ["composite"])]
    if kind == "nan_when_bright":
        nodes += _nan_when_bright("image", "poison", "n") + [helper.make_node("Add", ["composite", "poison"], ["filled"])]
    else:
        nodes += [helper.make_node("Identity", ["composite"], ["filled"])]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"]),
              helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, "height", "width"])]
    return _graph_model(nodes, inputs, ("filled", ["batch", 3, "height", "width"]), net.onnx_metadata(kind), path)


@pytest.fixture(scope="session")
def graph_models(tmp_path_factory) -> dict[str, Path]:
    """Real ONNX models built with onnx.helper for the tiny grid (8 x 8 at 64 px), good and broken:
    ``seg_ok``, ``seg_logits``, ``seg_nan_when_bright``, ``inp_black``, ``inp_nan``, ``inp_nan_when_bright``."""
    d = tmp_path_factory.mktemp("graphs")
    out = {f"seg_{k}": segmenter_graph(d / f"seg_{k}.onnx", 8, 64, k) for k in ("logits", "nan_when_bright")}
    out["seg_ok"] = segmenter_graph(d / "seg_ok.onnx", 8, 64, "probability")
    out.update({f"inp_{k}": inpainter_graph(d / f"inp_{k}.onnx", k) for k in ("black", "nan", "nan_when_bright")})
    return out
