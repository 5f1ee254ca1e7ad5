"""Which GPU this process uses, and what of the CUDA stack can run here.

One rule for the device, used by the loader (DALI's ``device_id``), the precompute stage (DALI's
``device_id`` and onnxruntime's CUDA provider) and ``dali-abs precompute``'s pinning under
torchrun (:func:`pin_local_gpu`):

* ``CUDA_VISIBLE_DEVICES`` set but empty (or starting with an invalid entry such as ``-1``):
  the GPUs are hidden on purpose -> no GPU (None).
* The node-local process index is ``LOCAL_RANK`` (torchrun, torch.distributed.launch, DeepSpeed,
  Lightning) or else ``SLURM_LOCALID`` (srun); without either, 0.
* ``CUDA_VISIBLE_DEVICES`` lists k devices -> ordinal ``local % k`` among them (k = 1, as when a
  launcher pins one GPU per process: always 0); unset -> ordinal ``local`` (GPU ``local`` of the node).

The stack dali-abs is built for is CUDA 12 throughout: DALI ``nvidia-dali-cuda120``, CuPy
``cupy-cuda12x`` with NVRTC (``nvidia-cuda-nvrtc-cu12``), onnxruntime-gpu below 1.27 (1.27 and
later on PyPI are CUDA 13 builds) and torch's CUDA 12.6 build (torch on PyPI is CUDA 13):
:data:`GPU_INSTALL`. The ``*_problem`` functions say in one line why a part
cannot run (None: it can), with what to install.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

from dali_abs.errors import DaliAbsError

TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu126"
GPU_INSTALL = (f'pip install "torch==2.13.0+cu126" "dali-abs[gpu]" --extra-index-url {TORCH_CUDA_INDEX} '
               '(in a clone: make install GPU=1)')
NVRTC_INSTALL = 'pip install "nvidia-cuda-nvrtc-cu12>=12,<13"'
_ENTRY = re.compile(r"^(\d+|GPU-[0-9A-Za-z-]+|MIG-[0-9A-Za-z/-]+)$")


def visible_devices(env: Mapping[str, str] | None = None) -> list[str] | None:
    """The entries of ``CUDA_VISIBLE_DEVICES`` that CUDA honours; None when it is not set.

    CUDA stops at the first invalid entry, so ``""`` and ``"-1"`` give ``[]`` (GPUs hidden).
    """
    env = os.environ if env is None else env
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    out = []
    for entry in (e.strip() for e in value.split(",")):
        if not _ENTRY.match(entry):
            break
        out.append(entry)
    return out


def local_index(env: Mapping[str, str] | None = None) -> int | None:
    """This process's index on its node from the launcher (``LOCAL_RANK``, else ``SLURM_LOCALID``)."""
    env = os.environ if env is None else env
    for key in ("LOCAL_RANK", "SLURM_LOCALID"):
        if key in env:
            try:
                value = int(env[key])
            except ValueError:
                raise DaliAbsError(f"{key}={env[key]!r} is not a process index (an integer >= 0)") from None
            if value < 0:
                raise DaliAbsError(f"{key}={value} is not a process index (an integer >= 0)")
            return value
    return None


def local_device(env: Mapping[str, str] | None = None) -> int | None:
    """CUDA device ordinal (among the devices this process sees) that this process uses, or None
    when ``CUDA_VISIBLE_DEVICES`` hides the GPUs. The rule is in the module docstring."""
    visible = visible_devices(env)
    if visible == []:
        return None
    local = local_index(env) or 0
    return local if visible is None else local % len(visible)


def pin_local_gpu(env: dict | None = None) -> str | None:
    """Under a launcher that starts one process per GPU (``LOCAL_RANK`` / ``SLURM_LOCALID`` set),
    make this process see only its own GPU; returns the ``CUDA_VISIBLE_DEVICES`` entry chosen.

    Call it before anything starts CUDA (DALI, onnxruntime, CuPy, torch): ``dali-abs precompute``
    does. Afterwards :func:`local_device` is 0, the same device. GPUs hidden on purpose stay hidden
    (returns None), as does everything when no launcher set an index.
    """
    env = os.environ if env is None else env
    local = local_index(env)
    if local is None:
        return None
    visible = visible_devices(env)
    if visible == []:
        return None
    ordinal = local_device(env)
    choice = str(ordinal) if visible is None else visible[ordinal]
    env["CUDA_VISIBLE_DEVICES"] = choice
    return choice


def cuda_device_count() -> tuple[int, str]:
    """(CUDA devices the driver shows this process, why none) from ``libcuda`` itself, without
    CuPy, torch or onnxruntime. Initialises the driver, like any CUDA library would."""
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        return 0, f"no NVIDIA driver (libcuda.so.1 does not load: {e})"
    def error(call: str, rc: int) -> str:
        text = ctypes.c_char_p()
        cuda.cuGetErrorString(rc, ctypes.byref(text))
        hidden = " (CUDA_VISIBLE_DEVICES hides the GPUs)" if visible_devices() == [] else ""
        return f"{call} failed with CUDA error {rc}: {(text.value or b'unknown').decode()}{hidden}"

    rc = cuda.cuInit(0)
    if rc != 0:
        return 0, error("cuInit", rc)
    n = ctypes.c_int(0)
    rc = cuda.cuDeviceGetCount(ctypes.byref(n))
    if rc != 0:
        return 0, error("cuDeviceGetCount", rc)
    return n.value, "" if n.value else "the driver shows no CUDA device"


def torch_problem() -> str | None:
    """Why torch cannot hold CUDA tensors here (DALI's PyTorch iterator allocates them), or None."""
    try:
        import torch
    except ImportError as e:
        return f"torch does not import ({e}); install its CUDA 12.6 build: {GPU_INSTALL}"
    if torch.version.cuda is None:
        return (f"torch {torch.__version__} is a CPU-only build, so DALI's PyTorch iterator cannot return CUDA "
                f"tensors; install its CUDA 12.6 build: {GPU_INSTALL}")
    if not torch.cuda.is_available():
        count, why = cuda_device_count()
        return (f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable GPU"
                + (f": {why}" if why else " (torch.cuda.is_available() is False)"))
    return None


def cupy_problem() -> str | None:
    """Why CuPy cannot compile and launch the compositing kernel here, or None.

    Needs a visible device and NVRTC (``libnvrtc.so.12``): the cupy-cuda12x wheel brings no
    CUDA toolkit, so without a system-wide one NVRTC comes from ``nvidia-cuda-nvrtc-cu12``.
    """
    try:
        import cupy
    except Exception as e:  # ImportError, or CuPy's own errors from a broken install
        return f"CuPy does not import ({type(e).__name__}: {e}); {GPU_INSTALL}"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError: no driver, no device, driver too old
        return f"CuPy {cupy.__version__} finds no CUDA device ({type(e).__name__}: {e})"
    if n < 1:
        return f"CuPy {cupy.__version__} finds no CUDA device"
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception as e:  # the library is looked up at first use
        major = cupy.cuda.runtime.runtimeGetVersion() // 1000
        fix = NVRTC_INSTALL if major == 12 else f'pip install "nvidia-cuda-nvrtc=={major}.*"'
        return (f"CuPy {cupy.__version__} (CUDA {major}) cannot load NVRTC, which compiles its kernels "
                f"({type(e).__name__}: {' '.join(str(e).split())}); {fix}, or install CuPy's [ctk] extra")
    return None


def gpu_loader_problems(swap: bool = True) -> list[str]:
    """What stops ``create_loader(device="gpu")`` here: torch's CUDA, and with ``swap`` CuPy's."""
    problems = [p for p in (torch_problem(),) if p]
    if swap:
        problems += [p for p in (cupy_problem(),) if p]
    if local_device() is None:
        problems.append("CUDA_VISIBLE_DEVICES is set to hide every GPU; unset it, or use device='cpu'")
    return problems
