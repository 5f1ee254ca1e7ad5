"""CUDA sources of the CuPy kernels, shipped inside the package as ``dali_abs.kernels``, and
the CPU row renderer (``composite_rows.h``) the native CPU build adds to them.

The files live in the repository's top-level ``kernels/`` folder; setuptools maps that
folder to this package, so :func:`source` finds them in a wheel and in an editable install.
"""

from __future__ import annotations

from importlib import resources


def names() -> list[str]:
    """File names of the shipped kernel sources."""
    return sorted(p.name for p in resources.files(__name__).iterdir() if p.name.endswith((".cu", ".cuh", ".h")))


def source(name: str) -> str:
    """Text of one kernel source, e.g. ``source("normalize.cu")``."""
    path = resources.files(__name__).joinpath(name)
    if not path.is_file():
        raise FileNotFoundError(f"no kernel source {name!r} in dali_abs.kernels; shipped: {', '.join(names())}")
    return path.read_text(encoding="utf-8")
