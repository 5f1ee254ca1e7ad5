"""onnxruntime sessions run on the provider asked for, or say why not (never a silent CPU fallback)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from dali_abs import runtime
from dali_abs.errors import DaliAbsError


@pytest.fixture
def tiny_onnx(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    path = tmp_path / "relu.onnx"
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # loadable by the installed onnxruntime
    onnx.save(model, path)
    return path


def test_check_providers_raises_for_cuda_and_warns_once_for_auto():
    runtime.check_providers("cuda", [runtime.CUDA, runtime.CPU])  # running what was asked for
    runtime.check_providers("cpu", [runtime.CPU])
    with pytest.raises(DaliAbsError, match=r"m.onnx: onnxruntime did not start its CUDA provider \(running "
                                           r"CPUExecutionProvider\).*onnxruntime-gpu\[cuda,cudnn\]>=1.20,<1.27"):
        runtime.check_providers("cuda", [runtime.CPU], "m.onnx")
    runtime._warned.clear()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(3):
            runtime.check_providers("auto", [runtime.CPU], "m.onnx")
    assert len(seen) == 1 and "running on the CPU" in str(seen[0].message)


def test_onnxruntime_falls_back_to_the_cpu_silently_and_the_check_catches_it(tiny_onnx):
    """Asked for CUDA where it cannot start, onnxruntime runs on the CPU without raising."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # its own error line is expected here
    session = ort.InferenceSession(str(tiny_onnx), sess_options=opts, providers=[runtime.CUDA, runtime.CPU])
    y = session.run(None, {"x": np.array([[-1, 0, 1, 2]], np.float32)})[0]
    assert y.tolist() == [[0, 0, 1, 2]]  # it ran, on whichever provider started
    if session.get_providers()[0] == runtime.CUDA:  # a GPU machine: the check lets the CUDA session through
        runtime.check_providers("cuda", session.get_providers(), tiny_onnx)
        return
    with pytest.raises(DaliAbsError, match="did not start its CUDA provider"):
        runtime.check_providers("cuda", session.get_providers(), tiny_onnx)


def test_cuda_session_without_a_usable_provider_says_why(tiny_onnx):
    problem = runtime.cuda_problem()
    if problem is None:
        assert runtime.create_session(tiny_onnx, "cuda").get_providers()[0] == runtime.CUDA
        return
    with pytest.raises(DaliAbsError, match="device='cuda' asked for, but onnxruntime cannot use a CUDA device here: "):
        runtime.create_session(tiny_onnx, "cuda")
    assert runtime.create_session(tiny_onnx, "auto").get_providers() == [runtime.CPU]


def test_the_installed_onnxruntime_is_a_cuda_12_build():
    """The pin keeps onnxruntime-gpu on CUDA 12 with DALI (cuda120) and CuPy (cuda12x)."""
    package, version, cuda = runtime._build_info()
    assert package == "onnxruntime-gpu", f"{package} {version}: the CPU package hides the CUDA provider"
    assert cuda is not None and cuda.split(".")[0] == "12", f"onnxruntime-gpu {version} is built for CUDA {cuda}"
