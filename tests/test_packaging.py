"""The package installs with its CUDA sources and ONNX-free imports on a CPU-only machine."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_kernel_sources_are_found_from_the_installed_package():
    from dali_abs.swap import sources

    assert {"composite.cu", "composite_rows.h", "normalize_rows.h", "cpu_shim.cuh", "cpu_launcher.cpp"} <= set(sources.names())
    assert "__global__" in sources.source("composite.cu")
    with pytest.raises(FileNotFoundError, match="no kernel source 'nope.cu'"):
        sources.source("nope.cu")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("name", [n for n in __import__("dali_abs.swap.sources", fromlist=["names"]).names()
                                  if n.endswith(".cu")])
def test_kernels_compile_with_nvcc(tmp_path, name):
    """Compile-check every kernel for sm_90 (H100/H200) without a GPU."""
    r = subprocess.run(["nvcc", "-ptx", "-arch=sm_90", "-o", str(tmp_path / "k.ptx"),
                        str(ROOT / "dali_abs" / "swap" / name)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert ".entry" in (tmp_path / "k.ptx").read_text()


def test_wheel_ships_kernels_and_models(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                        "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("dali_abs-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("composite.cu", "composite_rows.h", "normalize_rows.h", "cpu_shim.cuh", "cpu_launcher.cpp"):  # the CPU build compiles them
        assert f"dali_abs/swap/{name}" in names
    assert "dali_abs/models/classifier.py" in names
    assert "dali_abs/labeling/static/index.html" in names
    assert any(n.endswith("entry_points.txt") for n in names)


def test_import_does_not_load_gpu_libraries():
    code = "import sys, dali_abs, dali_abs.cli; print(sorted(m for m in ('cupy','onnxruntime','nvidia.dali') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_stages_import_only_what_they_need():
    """Inference, the cache and the loader do not import torch (a training-stage dependency):
    their ONNX names come from the torch-free contracts, MEAN/STD from dali_abs.constants."""
    mods = ("dali_abs.segmenter.inference", "dali_abs.inpainter.inference", "dali_abs.inpainter.wrap",
            "dali_abs.cache.precompute", "dali_abs.cache.verify", "dali_abs.loader.iterator", "dali_abs.loader.ops",
            "dali_abs.swap.twin", "dali_abs.swap.cpu", "dali_abs.swap.gpu")
    code = (f"import sys; import {', '.join(mods)}; "
            "print(sorted(m for m in ('torch', 'cupy', 'onnxruntime', 'nvidia.dali') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
