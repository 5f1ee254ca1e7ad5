"""onnxruntime sessions shared by the segmenter and inpainter stages.

``device``: ``"cuda"`` runs on onnxruntime's CUDA provider or raises; ``"cpu"`` on the CPU
provider; ``"auto"`` on CUDA when it starts, else on the CPU, with one warning per process when
a CUDA device is there but the provider cannot use it (no warning on a machine without a GPU).
onnxruntime itself falls back to the CPU without raising when its CUDA provider fails to load
(e.g. an onnxruntime-gpu built for CUDA 13 beside CUDA 12 libraries), so every session is
checked against the providers it actually runs (:func:`check_providers`).

The CUDA session uses the device of :func:`dali_abs.devices.local_device` (LOCAL_RANK under
torchrun, the one visible GPU under a launcher that pins one per process).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import warnings
from pathlib import Path

from dali_abs.errors import DaliAbsError

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# onnxruntime-gpu 1.27 and later on PyPI are CUDA 13 builds; DALI and CuPy here are CUDA 12.
ORT_CUDA12 = "onnxruntime-gpu[cuda,cudnn]>=1.20,<1.27"
_warned: set[str] = set()


def _build_info() -> tuple[str, str, str | None]:
    """(package name, version, CUDA version it was built for or None) of the installed onnxruntime."""
    import onnxruntime as ort

    try:
        from onnxruntime.capi import build_and_package_info as info
    except ImportError:
        return "onnxruntime", ort.__version__, None
    return getattr(info, "package_name", "onnxruntime"), ort.__version__, getattr(info, "cuda_version", None)


def _preload_cuda_libraries() -> str:
    """Load the CUDA and cuDNN libraries of the nvidia-* wheels so that onnxruntime's CUDA provider
    finds them (``onnxruntime.preload_dlls``, onnxruntime >= 1.21); returns what it printed."""
    import onnxruntime as ort

    if not hasattr(ort, "preload_dlls"):
        return ""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            ort.preload_dlls()
        except Exception as e:  # it raises for a bad directory, prints for missing libraries
            print(f"{type(e).__name__}: {e}")
    return out.getvalue().strip()


@functools.lru_cache(maxsize=None)
def cuda_problem() -> str | None:
    """Why onnxruntime's CUDA provider cannot start here, in one line with the fix; None when it can."""
    import ctypes

    import onnxruntime as ort

    from dali_abs.devices import cuda_device_count

    package, version, cuda = _build_info()
    if CUDA not in ort.get_available_providers():
        return (f"{package} {version} has no CUDA provider; pip uninstall {package} and "
                f"pip install \"{ORT_CUDA12}\"")
    count, why = cuda_device_count()
    if count == 0:
        return why
    printed = _preload_cuda_libraries()
    lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    try:
        ctypes.CDLL(str(lib))
    except OSError as e:
        major = (cuda or "?").split(".")[0]
        fix = (f"this is a CUDA {major} build and dali-abs's stack is CUDA 12: pip install \"{ORT_CUDA12}\""
               if major != "12" else f"install its CUDA 12 libraries: pip install \"{ORT_CUDA12}\" nvidia-cublas-cu12")
        return f"{package} {version} (built for CUDA {cuda}) cannot load its CUDA provider: {e}; {fix}" + \
            (f" (onnxruntime.preload_dlls: {printed})" if printed else "")
    return None


def cuda_available() -> bool:
    """True when onnxruntime's CUDA provider can start here (see :func:`cuda_problem`)."""
    return cuda_problem() is None


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def providers(device: str = "auto") -> list:
    """Provider list for ``device`` in {"auto", "cuda", "cpu"}; raises for "cuda" when the CUDA
    provider cannot start, warns once for "auto" when it cannot start beside a CUDA device."""
    from dali_abs.devices import cuda_device_count, local_device

    if device not in ("auto", "cuda", "cpu"):
        raise DaliAbsError(f"device must be auto, cuda or cpu, got {device!r}")
    if device == "cpu":
        return [CPU]
    problem = cuda_problem()
    if problem is not None:
        if device == "cuda":
            raise DaliAbsError(f"device='cuda' asked for, but onnxruntime cannot use a CUDA device here: {problem}. "
                               "Fix that, or use device='cpu' or 'auto'")
        if cuda_device_count()[0] > 0:
            _warn_once(f"onnxruntime runs on the CPU although a CUDA device is here: {problem}")
        return [CPU]
    return [(CUDA, {"device_id": local_device() or 0}), CPU]


def check_providers(device: str, running: list[str], path: str | os.PathLike = "model") -> None:
    """Check that a session runs on the provider ``device`` asked for (``running``:
    ``session.get_providers()``, first = the one used): raises for "cuda" when it is not CUDA,
    warns once for "auto" when CUDA was asked of onnxruntime and it fell back to the CPU."""
    if device == "cpu" or (running and running[0] == CUDA):
        return
    package, version, cuda = _build_info()
    message = (f"{path}: onnxruntime did not start its CUDA provider (running {', '.join(running) or 'nothing'}); "
               f"its error log above says why. {package} {version} was built for CUDA {cuda}; dali-abs's stack "
               f"needs \"{ORT_CUDA12}\"")
    if device == "cuda":
        raise DaliAbsError(message + ". Or use device='cpu'")
    _warn_once(message + "; running on the CPU")


def create_session(path: str | os.PathLike, device: str = "auto", threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` for ``path`` on ``device``, with a clear error for a
    missing/bad file and for a CUDA provider that did not start (:func:`check_providers`)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise DaliAbsError(f"{path}: ONNX model not found")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    wanted = providers(device)
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=wanted)
    except Exception as e:  # onnxruntime raises its own exception types for bad graphs
        raise DaliAbsError(f"{path}: onnxruntime cannot load this model ({e})") from None
    if wanted[0] != CPU:
        check_providers(device, session.get_providers(), path)
    return session


def metadata(session) -> dict[str, str]:
    """The model's ``metadata_props`` (custom_metadata_map) as a dict."""
    return dict(session.get_modelmeta().custom_metadata_map)
