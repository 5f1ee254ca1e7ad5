"""The one table of the kernel's arguments (dali_abs.swap.signature) against composite.cu itself:
the argument list, both records (names, C types, array lengths, and their byte layout as g++
lays it out) and the fill codes; the CPU launcher's host-side declarations (normalize_rows.h's
Args, abs_composite_host's trailing arguments) against cpu.py's ctypes mirror of them."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dali_abs.swap import FILLS, signature
from dali_abs.swap.sources import source

CU = source("composite.cu")


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _struct(name: str) -> list[tuple[str, str, int]]:
    """(C type, field name, array length) of ``struct name { ... };`` in composite.cu."""
    m = re.search(rf"struct {name} \{{(.*?)\n\}};", CU, re.S)
    assert m, f"struct {name} not found in composite.cu"
    fields = []
    for line in m.group(1).splitlines():
        decl = line.split("//")[0].strip().rstrip(";")
        if not decl:
            continue
        t = re.match(r"((?:const )?(?:unsigned )?(?:long long|int|char|float|AbsSample)\*?)\s+(.*)", decl)
        assert t, f"cannot read the declaration {decl!r} of struct {name}"
        for d in t.group(2).split(","):
            arr = re.fullmatch(r"\s*(\w+)(?:\[(\d+)\])?\s*", d)
            fields.append((t.group(1), arr.group(1), int(arr.group(2) or 1)))
    return fields


def _c_type(f: signature.Field, pointer: bool) -> str:
    return "pointer" if pointer else signature.C_TYPES[f.dtype]


@pytest.mark.parametrize("name, table", [("AbsSample", signature.SAMPLE), ("AbsRefs", signature.REFS)])
def test_the_records_are_declared_as_tabled(name, table):
    got = [("pointer" if t.endswith("*") else t, f, k) for t, f, k in _struct(name)]
    want = [(_c_type(f, f.dtype == "uint64" and name == "AbsRefs"), f.name, f.count) for f in table]
    assert got == want


def test_the_argument_list_is_declared_as_tabled():
    m = re.search(r"#define ABS_COMPOSITE_PARAMS((?:[^\n]*\\\n)*[^\n]*)", CU)
    assert m, "ABS_COMPOSITE_PARAMS not found"
    decls = [_norm(d) for d in m.group(1).replace("\\\n", " ").split(",")]
    assert decls == [signature.c_declaration(a) for a in signature.ARGS]
    args = re.search(r"#define ABS_COMPOSITE_ARGS((?:[^\n]*\\\n)*[^\n]*)", CU).group(1).replace("\\\n", " ")
    assert [_norm(a) for a in args.split(",")] == [a.name for a in signature.ARGS]
    assert 'extern "C" __global__ void abs_composite(ABS_COMPOSITE_PARAMS)' in CU


def test_fill_codes_are_the_kernels_defines():
    defines = {m.group(1): int(m.group(2)) for m in re.finditer(r"#define ABS_FILL_(\w+) (\d+)", CU)}
    assert defines == {f.upper(): signature.fill_code(f) for f in FILLS}
    assert "ABS_FILL_" + FILLS[0].upper() in CU  # the body tests the names, not the numbers


def test_the_records_byte_layout_is_the_compilers(tmp_path):
    """offsetof / sizeof of both structs from g++ equal the NumPy record types' offsets and sizes,
    and the soft mask starts right after the AbsSample header."""
    if shutil.which("g++") is None:
        pytest.fail("g++ is needed to compile the kernel text for the CPU (Debian: apt-get install g++)")
    lines = []
    for struct, table in (("AbsSample", signature.SAMPLE), ("AbsRefs", signature.REFS)):
        lines.append(f'printf("{struct} sizeof %zu\\n", sizeof({struct}));')
        lines += [f'printf("{struct} {f.name} %zu\\n", offsetof({struct}, {f.name}));' for f in table]
    prog = ('#include <cstddef>\n#include <cstdio>\n#include "cpu_shim.cuh"\n#include "composite.cu"\n'
            "int main() {\n" + "\n".join(lines) + "\nreturn 0;\n}\n")
    (tmp_path / "layout.cpp").write_text(prog)
    r = subprocess.run(["g++", "-std=c++17", "-I", str(Path(signature.__file__).parent), str(tmp_path / "layout.cpp"), "-o", str(tmp_path / "l")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(tmp_path / "l")], capture_output=True, text=True, check=True).stdout.split("\n")
    got = {tuple(line.split()[:2]): int(line.split()[2]) for line in out if line}
    for struct, dtype in (("AbsSample", signature.HEADER_DTYPE), ("AbsRefs", signature.REFS_DTYPE)):
        assert got[(struct, "sizeof")] == dtype.itemsize
        for name in dtype.names:
            assert got[(struct, name)] == dtype.fields[name][1], (struct, name)
    for r_ in (1, 8, 16):
        rec = signature.sample_dtype(r_)
        assert rec.fields["soft"][1] == got[("AbsSample", "sizeof")]
        assert rec.fields["perm"][1] == rec.fields["soft"][1] + 4 * r_ * r_ and rec.itemsize % 8 == 0


def test_the_checks_name_the_argument():
    values = {a.name: None for a in signature.ARGS}
    values.update(refs=np.zeros(3, signature.REFS_DTYPE), mean_colour=np.zeros((3, 3), np.float32),
                  out=np.zeros((3, 4, 5, 3), np.uint8))
    signature.check(values, {"n": 3, "h": 4, "w": 5, "r": 2})
    with pytest.raises(Exception, match=r"kernel argument out must be uint8 \(3, 4, 6, 3\), got uint8 \(3, 4, 5, 3\)"):
        signature.check(values, {"n": 3, "h": 4, "w": 6, "r": 2})
    with pytest.raises(Exception, match=r"kernel argument mean_colour must be float32 \(3, 3\), got float64"):
        signature.check({**values, "mean_colour": np.zeros((3, 3))}, {"n": 3, "h": 4, "w": 5, "r": 2})


# C types of the launcher's host-side declarations -> the ctypes type cpu.py passes for them
_HOST_CTYPES = {"int": ctypes.c_int, "long long": ctypes.c_longlong, "float": ctypes.c_float,
                "double": ctypes.c_double}


def _host_ctype(decl: str):
    """ctypes type of one C declaration ``type name`` (any pointer: c_void_p)."""
    m = re.fullmatch(r"\s*(?:const\s+)?([\w:]+(?:\s+\w+)*?)\s*(\*?)\s*(\w+)\s*", decl)
    assert m, f"cannot read the declaration {decl!r}"
    return m.group(3), ctypes.c_void_p if m.group(2) else _HOST_CTYPES[m.group(1)]


def test_norm_args_mirror_the_headers_struct():
    from dali_abs.swap.cpu import NormArgs

    m = re.search(r"struct Args \{(.*?)\n\};", source("normalize_rows.h"), re.S)
    assert m, "struct Args not found in normalize_rows.h"
    decls = [line.split("//")[0].strip().rstrip(";") for line in m.group(1).splitlines()]
    assert [_host_ctype(d) for d in decls if d] == list(NormArgs._fields_)


def test_the_host_launchers_extra_arguments_are_cpu_pys():
    from dali_abs.swap import cpu

    m = re.search(r"ABS_EXPORT int abs_composite_host\(ABS_COMPOSITE_PARAMS,([^)]*)\)", source("cpu_launcher.cpp"))
    assert m, "abs_composite_host(ABS_COMPOSITE_PARAMS, ...) not found in cpu_launcher.cpp"
    assert [_host_ctype(d)[1] for d in m.group(1).split(",")] == list(cpu.HOST_EXTRA_ARGTYPES)
    assert "abs_normalize_host" not in source("cpu_launcher.cpp")  # removed: composite(normalize=) normalises
