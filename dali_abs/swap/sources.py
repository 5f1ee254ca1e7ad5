"""The kernel sources that ship beside this package's Python: ``composite.cu`` (the CUDA kernel,
also compiled as C++ for the CPU), ``composite_rows.h`` (the CPU row renderer),
``cpu_shim.cuh`` and ``cpu_launcher.cpp`` (the CPU build). Found through
:mod:`importlib.resources`, so a wheel and an editable install read the same files.
"""

from __future__ import annotations

from importlib import resources

SUFFIXES = (".cu", ".cuh", ".h", ".cpp")


def names() -> list[str]:
    """File names of the shipped kernel sources."""
    return sorted(p.name for p in resources.files(__package__).iterdir() if p.name.endswith(SUFFIXES))


def source(name: str) -> str:
    """Text of one kernel source, e.g. ``source("composite.cu")``."""
    path = resources.files(__package__).joinpath(name)
    if not name.endswith(SUFFIXES) or not path.is_file():
        raise FileNotFoundError(f"no kernel source {name!r} in dali_abs.swap; shipped: {', '.join(names())}")
    return path.read_text(encoding="utf-8")
