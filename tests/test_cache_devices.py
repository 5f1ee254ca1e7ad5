"""Where precompute runs: the device rule, and no silent fallback from the GPU (DALI decoding,
onnxruntime's CUDA provider). On a machine without a GPU the real libraries fail to start CUDA,
which is the failure these paths must report."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

from dali_abs.cache.format import CacheError
from dali_abs.cache.precompute import (GpuDecodeError, PrecomputeConfig, Worker, decode_on_gpu, decode_with_dali,
                                       gpu_decode_problem, precompute)
from dali_abs.dataset import load_dataset
from dali_abs.devices import cuda_device_count
from dali_abs.errors import DaliAbsError

no_gpu = pytest.mark.skipif(cuda_device_count()[0] > 0, reason="a CUDA device is here: the GPU paths start")


@pytest.fixture(scope="module")
def copies(tmp_path_factory, tiny_dataset):
    """8 copies of one image, as an ImageFolder dataset."""
    root = tmp_path_factory.mktemp("copies") / "data"
    first = load_dataset(tiny_dataset).split("train")[0].path
    (root / "train" / "bird").mkdir(parents=True)
    for i in range(8):
        shutil.copyfile(first, root / "train" / "bird" / f"{i}{first.suffix}")
    return load_dataset(root)


def test_cpu_run_reports_where_it_ran(copies, tiny_models, tmp_path):
    res = precompute(copies, *tiny_models, tmp_path / "c", PrecomputeConfig(device="cpu"), progress=False)
    assert res["devices"] == {"decode": "cpu", "segmenter": "CPUExecutionProvider",
                              "inpainter": "CPUExecutionProvider"}
    assert decode_on_gpu("cpu") == (False, None)


@no_gpu
def test_cuda_without_a_gpu_fails_before_anything_is_written(copies, tiny_models, tmp_path):
    out = tmp_path / "c"
    with pytest.raises(DaliAbsError, match="device='cuda' asked for, but onnxruntime cannot use a CUDA device here"):
        precompute(copies, *tiny_models, out, PrecomputeConfig(device="cuda"), progress=False)
    assert not out.exists()
    with pytest.raises(CacheError, match="device 'cuda', but there is no CUDA device here"):
        decode_on_gpu("cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no GPU at all: auto is the CPU, without a warning
        assert decode_on_gpu("auto") == (False, None)


def test_hidden_gpus_stay_hidden(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(CacheError, match="CUDA_VISIBLE_DEVICES='' hides every GPU"):
        decode_on_gpu("cuda")
    assert decode_on_gpu("auto") == (False, None)


@no_gpu
def test_a_gpu_decoder_that_cannot_start_is_named_not_replaced_by_pil(copies):
    assert gpu_decode_problem(0).startswith("DALI cannot decode on GPU 0: ")
    paths = [s.path for s in copies.samples]
    with pytest.raises(GpuDecodeError, match=r"GPU decoder \(device 0\) failed on 8 image\(s\) that its CPU decoder "
                                             r"reads \(first: .*\)"):
        decode_with_dali(paths, 32, 8, gpu=True)


@no_gpu
def test_worker_raises_for_cuda_and_warns_once_then_decodes_on_the_cpu_for_auto(copies, tiny_models, tmp_path):
    paths = [s.path for s in copies.samples]
    want, ok = decode_with_dali(paths, 32, 4, gpu=False)
    assert ok.all()
    strict = Worker(copies, None, None, PrecomputeConfig(device="cuda", batch_size=4), tmp_path, gpu=True)
    with pytest.raises(CacheError, match="GPU decoder .* Use --device cpu"):
        strict.decode_dali(paths, 32)
    auto = Worker(copies, None, None, PrecomputeConfig(device="auto", batch_size=4), tmp_path, gpu=True)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        got, ok = auto.decode_dali(paths, 32)
        again, _ = auto.decode_dali(paths, 32)
    assert [str(w.message).split(":")[0] for w in seen] == ["precompute decodes on the CPU"]
    assert auto.gpu is False and ok.all() and np.array_equal(got, want) and np.array_equal(again, want)
