"""onnxruntime sessions shared by the segmenter and inpainter stages.

The CUDA provider is used when onnxruntime can actually start it (a GPU and its libraries
are present); otherwise the CPU provider, without a warning per session.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from dali_abs.errors import DaliAbsError


@functools.lru_cache(maxsize=None)
def cuda_available() -> bool:
    """True when onnxruntime's CUDA provider is installed and a CUDA device is visible."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        import ctypes

        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def providers(device: str = "auto") -> list[str]:
    """Provider list for ``device`` in {"auto", "cuda", "cpu"}."""
    if device not in ("auto", "cuda", "cpu"):
        raise DaliAbsError(f"device must be auto, cuda or cpu, got {device!r}")
    if device == "cpu" or (device == "auto" and not cuda_available()):
        return ["CPUExecutionProvider"]
    if device == "cuda" and not cuda_available():
        raise DaliAbsError("device='cuda' asked for, but onnxruntime cannot use a CUDA device here; "
                           "use device='cpu' or 'auto'")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def create_session(path: str | os.PathLike, device: str = "auto", threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` for ``path`` with a clear error for a missing/bad file."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise DaliAbsError(f"{path}: ONNX model not found")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers(device))
    except Exception as e:  # onnxruntime raises its own exception types for bad graphs
        raise DaliAbsError(f"{path}: onnxruntime cannot load this model ({e})") from None


def metadata(session) -> dict[str, str]:
    """The model's ``metadata_props`` (custom_metadata_map) as a dict."""
    return dict(session.get_modelmeta().custom_metadata_map)
