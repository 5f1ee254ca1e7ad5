"""Which GPU a process uses under launchers, and what of the CUDA stack can run here."""

from __future__ import annotations

import pytest

from dali_abs.devices import (GPU_INSTALL, cuda_device_count, cupy_problem, local_device, pin_local_gpu,
                              torch_problem, visible_devices)
from dali_abs.errors import DaliAbsError


@pytest.mark.parametrize("env, ordinal", [
    ({}, 0),                                                          # one process, all GPUs: GPU 0
    ({"LOCAL_RANK": "3"}, 3),                                         # torchrun, all GPUs visible
    ({"LOCAL_RANK": "3", "CUDA_VISIBLE_DEVICES": "3"}, 0),            # the launcher pinned one: it is device 0
    ({"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "GPU-8a1e-77"}, 0),  # pinned by UUID
    ({"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "4,5,6"}, 1),        # the LOCAL_RANK-th of a list
    ({"LOCAL_RANK": "4", "CUDA_VISIBLE_DEVICES": "4,5,6"}, 1),        # more processes than GPUs: shared
    ({"SLURM_LOCALID": "2"}, 2),                                      # srun without torchrun
    ({"SLURM_LOCALID": "2", "LOCAL_RANK": "0"}, 0),                   # torchrun inside srun: LOCAL_RANK wins
    ({"CUDA_VISIBLE_DEVICES": ""}, None),                             # GPUs hidden on purpose
    ({"CUDA_VISIBLE_DEVICES": "", "LOCAL_RANK": "2"}, None),          # ... even under a launcher
    ({"CUDA_VISIBLE_DEVICES": "-1"}, None),                           # CUDA stops at the first invalid entry
    ({"CUDA_VISIBLE_DEVICES": "2,-1,3", "LOCAL_RANK": "1"}, 0),       # so only "2" is visible
])
def test_device_rule_under_launchers(env, ordinal):
    assert local_device(env) == ordinal


def test_pinning_picks_the_same_gpu_as_the_rule():
    """dali-abs precompute pins before CUDA starts; afterwards the rule says device 0: the same GPU."""
    for env, physical in [({"LOCAL_RANK": "3"}, "3"), ({"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "4,5,6"}, "5"),
                          ({"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "7"}, "7"), ({"SLURM_LOCALID": "1"}, "1")]:
        env = dict(env)
        assert pin_local_gpu(env) == physical and env["CUDA_VISIBLE_DEVICES"] == physical
        assert visible_devices(env) == [physical] and local_device(env) == 0
    hidden = {"LOCAL_RANK": "2", "CUDA_VISIBLE_DEVICES": ""}
    assert pin_local_gpu(hidden) is None and hidden["CUDA_VISIBLE_DEVICES"] == ""  # stays hidden
    untouched = {"CUDA_VISIBLE_DEVICES": "4,5"}
    assert pin_local_gpu(untouched) is None and untouched["CUDA_VISIBLE_DEVICES"] == "4,5"  # no launcher


def test_a_bad_local_rank_is_named():
    with pytest.raises(DaliAbsError, match=r"LOCAL_RANK='one' is not a process index"):
        local_device({"LOCAL_RANK": "one"})


def test_the_driver_says_why_there_is_no_device():
    count, why = cuda_device_count()
    assert count > 0 or why  # no device: a reason, e.g. "no NVIDIA driver (libcuda.so.1 does not load: ...)"


def test_torch_problem_names_the_cuda_build_to_install():
    import torch

    if torch.cuda.is_available():
        assert torch_problem() is None
        return
    problem = torch_problem()
    if torch.version.cuda is None:
        assert f"torch {torch.__version__} is a CPU-only build" in problem and GPU_INSTALL in problem
        assert "+cu126" in problem and "download.pytorch.org/whl/cu126" in problem


def test_cupy_problem_names_the_missing_part():
    problem = cupy_problem()
    if problem is None:  # CuPy compiles and runs kernels here: nothing to name
        return
    assert "CuPy" in problem and ("no CUDA device" in problem or "NVRTC" in problem or "import" in problem)
