"""Wrap a foreign inpainter ONNX file so that it follows the dali-abs contract.

``wrap(model, spec, out)`` writes one ONNX file whose graph is: adapter nodes (our
``image`` float32 [B,3,H,W] 0..1 and ``mask`` float32 [B,1,H,W] 1 = fill -> the foreign
model's input names, dtypes, value ranges, mask polarity and fixed size), the foreign graph
itself (its tensor names prefixed with ``foreign/``), and adapter nodes back (its output ->
float32 0..1, resized to H x W, composited so that pixels with mask = 0 are unchanged).
The result loads with :class:`~dali_abs.inpainter.inference.Inpainter` like any other fill.

Adapter choices (documented, not configurable):

- **Fixed-size models** (LaMa, AOT-GAN: 512 x 512): the image is resized bilinearly to the
  fixed size and the mask bilinearly then thresholded at 0.5; the model's output is resized
  bilinearly back to H x W and only the hole is pasted into the original image. (Resizing,
  not padding: one model call per image whatever its aspect ratio.)
- The foreign model receives a **binary** mask (our mask > 0.5); the final composite uses our
  mask as given (soft masks blend).
- **Batch**: a model whose batch axis is fixed at 1 is marked ``dali_abs.max_batch=1`` and
  :class:`Inpainter` feeds it one image per call.

Built-in specs (:data:`SPECS`), after NOTES section 3:

========  ==========================  ===============================  ============  =========
spec      image in                    mask in                          output        size
========  ==========================  ===============================  ============  =========
lama      float32 RGB 0..1            float32, 1 = fill                float 0..255  512 fixed
migan     uint8 RGB 0..255            uint8, **255 = keep**, 0 = fill  uint8 0..255  any
aotgan    float32 RGB 0..1            float32, 1 = fill                float 0..1    512 fixed
========  ==========================  ===============================  ============  =========

Any other contract: a JSON file with the fields of :class:`ForeignSpec` (``--spec FILE``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dali_abs.inpainter.inference import InpainterError
from dali_abs.models import inpainter_contract as net

_RANGES = {"0..1": (0.0, 1.0), "0..255": (0.0, 255.0), "-1..1": (-1.0, 1.0)}
_DTYPES = ("float32", "uint8")
MIN_OPSET = 11  # Resize with a sizes input


@dataclass(frozen=True)
class ForeignSpec:
    """The contract of a foreign inpainter ONNX file (NCHW RGB assumed).

    ``image_range`` / ``output_range``: one of ``0..1``, ``0..255``, ``-1..1`` (uint8 tensors
    must use ``0..255``). ``mask_fill`` / ``mask_keep``: the values the model reads as hole
    and as known pixel (e.g. 1/0, or 0/255 for MI-GAN). ``fixed_size``: the model's square
    input side, or null for any size. ``output``: output name, null = the model's only output.
    """

    name: str
    image_input: str = "image"
    mask_input: str = "mask"
    output: str | None = None
    image_dtype: str = "float32"
    image_range: str = "0..1"
    mask_dtype: str = "float32"
    mask_fill: float = 1.0
    mask_keep: float = 0.0
    output_dtype: str = "float32"
    output_range: str = "0..1"
    fixed_size: int | None = None

    def check(self, where: str) -> None:
        for field, allowed in (("image_dtype", _DTYPES), ("mask_dtype", _DTYPES), ("output_dtype", _DTYPES),
                               ("image_range", tuple(_RANGES)), ("output_range", tuple(_RANGES))):
            v = getattr(self, field)
            if v not in allowed:
                raise InpainterError(f"{where}: {field} is {v!r}, expected one of {', '.join(allowed)}")
        for dt, rng in (("image_dtype", "image_range"), ("output_dtype", "output_range")):
            if getattr(self, dt) == "uint8" and getattr(self, rng) != "0..255":
                raise InpainterError(f"{where}: {dt} uint8 needs {rng} 0..255, got {getattr(self, rng)!r}")
        if self.mask_fill == self.mask_keep:
            raise InpainterError(f"{where}: mask_fill and mask_keep are both {self.mask_fill}; they must differ")
        if self.mask_dtype == "uint8":
            for f in ("mask_fill", "mask_keep"):
                v = getattr(self, f)
                if not (0 <= v <= 255 and float(v).is_integer()):
                    raise InpainterError(f"{where}: {f} {v} is not a uint8 value (0..255)")
        if self.fixed_size is not None and (not isinstance(self.fixed_size, int) or self.fixed_size < 1):
            raise InpainterError(f"{where}: fixed_size must be a positive integer or null, got {self.fixed_size!r}")


SPECS: dict[str, ForeignSpec] = {
    "lama": ForeignSpec("lama", output_range="0..255", fixed_size=512),
    "migan": ForeignSpec("migan", image_dtype="uint8", image_range="0..255", mask_dtype="uint8",
                         mask_fill=0.0, mask_keep=255.0, output_dtype="uint8", output_range="0..255"),
    "aotgan": ForeignSpec("aotgan", fixed_size=512),
}


def load_spec(spec: str | ForeignSpec) -> ForeignSpec:
    """A built-in spec by name, a :class:`ForeignSpec`, or a JSON file of its fields."""
    if isinstance(spec, ForeignSpec):
        spec.check(spec.name)
        return spec
    if spec in SPECS:
        return SPECS[spec]
    path = Path(spec)
    if not path.is_file():
        raise InpainterError(f"--spec {spec!r}: not a built-in spec ({', '.join(SPECS)}) and no such JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InpainterError(f"{path}: cannot read the spec as JSON ({e})") from None
    fields = {f.name for f in dataclasses.fields(ForeignSpec)}
    if not isinstance(data, dict) or set(data) - fields:
        unknown = sorted(set(data) - fields) if isinstance(data, dict) else data
        raise InpainterError(f"{path}: unknown spec field(s) {unknown}; allowed: {', '.join(sorted(fields))}")
    data.setdefault("name", path.stem)
    s = ForeignSpec(**data)
    s.check(str(path))
    return s


_ONNX_DTYPE = {"float32": 1, "uint8": 2}  # onnx.TensorProto.FLOAT / UINT8


def _dims(vi) -> list:
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in vi.type.tensor_type.shape.dim]


def _check_foreign(model, spec: ForeignSpec, path: Path) -> tuple[str, int | None]:
    """Match the foreign graph's inputs/outputs against ``spec``; (output name, fixed batch or None)."""
    from onnx import TensorProto

    g = model.graph
    inits = {i.name for i in g.initializer}
    ins = {i.name: i for i in g.input if i.name not in inits}
    names = {n: TensorProto.DataType.Name(v.type.tensor_type.elem_type) + str(_dims(v)) for n, v in ins.items()}
    hint = f"the model's inputs are {names}; pick the matching --spec or write a spec JSON file"
    missing = [n for n in (spec.image_input, spec.mask_input) if n not in ins]
    if missing:
        raise InpainterError(f"{path}: spec {spec.name!r} expects inputs {spec.image_input!r} and "
                             f"{spec.mask_input!r}, missing {missing}; {hint}")
    if len(ins) != 2:
        raise InpainterError(f"{path}: the model has {len(ins)} inputs, a wrappable inpainter has 2; {hint}")
    batch = None
    for name, ch, dt in ((spec.image_input, 3, spec.image_dtype), (spec.mask_input, 1, spec.mask_dtype)):
        vi = ins[name]
        et = vi.type.tensor_type.elem_type
        if et != _ONNX_DTYPE[dt]:
            raise InpainterError(f"{path}: input {name!r} is {TensorProto.DataType.Name(et)}, spec {spec.name!r} "
                                 f"says {dt}; {hint}")
        d = _dims(vi)
        if len(d) != 4:
            raise InpainterError(f"{path}: input {name!r} has rank {len(d)} ({d}), expected NCHW [B,{ch},H,W]; {hint}")
        if isinstance(d[1], int) and d[1] != ch:
            raise InpainterError(f"{path}: input {name!r} has {d[1]} channels, expected {ch} (NCHW); {hint}")
        if isinstance(d[0], int):
            batch = d[0]
        hw = d[2:]
        static = [v for v in hw if isinstance(v, int)]
        if spec.fixed_size is None and static:
            raise InpainterError(f"{path}: input {name!r} has a fixed size {hw} but spec {spec.name!r} says any size; "
                                 "use a spec with \"fixed_size\"")
        if spec.fixed_size is not None and static and any(v != spec.fixed_size for v in static):
            raise InpainterError(f"{path}: input {name!r} is {hw}, spec {spec.name!r} says "
                                 f"{spec.fixed_size} x {spec.fixed_size}; {hint}")
    outs = {o.name: o for o in g.output}
    if spec.output is None:
        if len(outs) != 1:
            raise InpainterError(f"{path}: the model has outputs {list(outs)}; name the image output in a spec "
                                 "JSON file (\"output\")")
        out_name = next(iter(outs))
    elif spec.output not in outs:
        raise InpainterError(f"{path}: spec {spec.name!r} expects output {spec.output!r}, the model has {list(outs)}")
    else:
        out_name = spec.output
    o = outs[out_name]
    et = o.type.tensor_type.elem_type
    if et != _ONNX_DTYPE[spec.output_dtype]:
        raise InpainterError(f"{path}: output {out_name!r} is {TensorProto.DataType.Name(et)}, spec {spec.name!r} "
                             f"says {spec.output_dtype}")
    d = _dims(o)
    if d and (len(d) != 4 or (isinstance(d[1], int) and d[1] != 3)):
        raise InpainterError(f"{path}: output {out_name!r} has shape {d}, expected NCHW [B,3,H,W]")
    if batch is not None and batch != 1:
        raise InpainterError(f"{path}: the model's batch axis is fixed at {batch}; only 1 or dynamic is supported")
    return out_name, batch


def wrap_model(model, spec: str | ForeignSpec, source: str = "model"):
    """The wrapped ``onnx.ModelProto`` of a foreign ``onnx.ModelProto`` (see the module doc)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    spec = load_spec(spec)
    path = Path(source)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < MIN_OPSET:
        raise InpainterError(f"{path}: default-domain opset is {opset}, the adapter needs {MIN_OPSET} or newer; "
                             "convert the model with onnx.version_converter first")
    props = {p.key: p.value for p in model.metadata_props}
    if props.get("dali_abs.kind") == net.KIND:
        raise InpainterError(f"{path}: already a dali-abs inpainter ({props.get('dali_abs.fill', '?')}); it follows "
                             "the contract as it is - use it directly, no wrap needed")
    out_name, batch = _check_foreign(model, spec, path)
    P = "foreign/"
    inner = onnx.compose.add_prefix(model, P)
    nodes, inits = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(op, inputs, outputs, **attrs):
        nodes.append(helper.make_node(op, inputs, outputs, **attrs))
        return outputs[0]

    I, M = net.IMAGE_NAME, net.MASK_NAME
    empty_f = const("ad/empty_f", np.zeros(0, np.float32))
    shape_x = node("Shape", [I], ["ad/shape_x"])
    bc = node("Slice", [shape_x, const("ad/i0", np.array([0], np.int64)), const("ad/i2", np.array([2], np.int64))],
              ["ad/bc"])
    bm = node("Slice", [node("Shape", [M], ["ad/shape_m"]), "ad/i0", "ad/i2"], ["ad/bm"])
    x, m = I, M
    if spec.fixed_size is not None:
        s = const("ad/fixed", np.array([spec.fixed_size, spec.fixed_size], np.int64))
        sz_x = node("Concat", [bc, s], ["ad/size_x"], axis=0)
        sz_m = node("Concat", [bm, s], ["ad/size_m"], axis=0)
        x = node("Resize", [I, empty_f, empty_f, sz_x], ["ad/x_fixed"], mode="linear")
        m = node("Resize", [M, empty_f, empty_f, sz_m], ["ad/m_fixed"], mode="linear")
    # mask -> binary 1 = fill -> the spec's fill/keep values and dtype
    mb = node("Cast", [node("Greater", [m, const("ad/half", np.array(0.5, np.float32))], ["ad/m_gt"])], ["ad/m_bin"],
              to=TensorProto.FLOAT)
    mv = node("Add", [node("Mul", [mb, const("ad/m_scale", np.array(spec.mask_fill - spec.mask_keep, np.float32))],
                           ["ad/m_scaled"]), const("ad/m_keep", np.array(spec.mask_keep, np.float32))], ["ad/m_val"])
    if spec.mask_dtype == "uint8":
        mv = node("Cast", [node("Round", [mv], ["ad/m_round"])], ["ad/m_u8"], to=TensorProto.UINT8)
    # image 0..1 -> the spec's range and dtype
    lo, hi = _RANGES[spec.image_range]
    xv = x
    if (lo, hi) != (0.0, 1.0):
        xv = node("Add", [node("Mul", [x, const("ad/x_scale", np.array(hi - lo, np.float32))], ["ad/x_scaled"]),
                          const("ad/x_lo", np.array(lo, np.float32))], ["ad/x_val"])
    if spec.image_dtype == "uint8":
        xv = node("Cast", [node("Clip", [node("Round", [xv], ["ad/x_round"]), const("ad/u8lo", np.array(0, np.float32)),
                                         const("ad/u8hi", np.array(255, np.float32))], ["ad/x_clip"])], ["ad/x_u8"],
                  to=TensorProto.UINT8)
    # the foreign graph's inputs become Identity outputs of our adapter tensors (so nested
    # subgraphs that read them by name keep working), then its nodes unchanged
    node("Identity", [xv], [P + spec.image_input])
    node("Identity", [mv], [P + spec.mask_input])
    nodes.extend(inner.graph.node)
    y = P + out_name
    if spec.output_dtype != "float32":
        y = node("Cast", [y], ["ad/y_f"], to=TensorProto.FLOAT)
    lo, hi = _RANGES[spec.output_range]
    if (lo, hi) != (0.0, 1.0):
        y = node("Mul", [node("Sub", [y, const("ad/y_lo", np.array(lo, np.float32))], ["ad/y_shift"]),
                         const("ad/y_scale", np.array(1.0 / (hi - lo), np.float32))], ["ad/y_unit"])
    y = node("Clip", [y, const("ad/zero", np.array(0, np.float32)), const("ad/one", np.array(1, np.float32))],
             ["ad/y_clip"])
    if spec.fixed_size is not None:
        y = node("Resize", [y, empty_f, empty_f, shape_x], ["ad/y_back"], mode="linear")
    keep = node("Sub", ["ad/one", M], ["ad/keep"])
    node("Add", [node("Mul", [I, keep], ["ad/x_keep"]), node("Mul", [y, M], ["ad/y_fill"])], [net.OUTPUT_NAME])

    dyn = ["batch", "height", "width"]
    graph = helper.make_graph(
        nodes, f"dali_abs_wrapped_{spec.name}",
        [helper.make_tensor_value_info(I, TensorProto.FLOAT, [dyn[0], 3, dyn[1], dyn[2]]),
         helper.make_tensor_value_info(M, TensorProto.FLOAT, [dyn[0], 1, dyn[1], dyn[2]])],
        [helper.make_tensor_value_info(net.OUTPUT_NAME, TensorProto.FLOAT, [dyn[0], 3, dyn[1], dyn[2]])],
        initializer=list(inner.graph.initializer) + inits)
    graph.sparse_initializer.extend(inner.graph.sparse_initializer)
    graph.value_info.extend(inner.graph.value_info)
    out = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="dali-abs inpainter wrap")
    out.ir_version = model.ir_version  # what the foreign model loads with, ours does too
    out.functions.extend(inner.functions)
    max_batch = 1 if batch == 1 else None
    meta = net.onnx_metadata(f"wrapped:{spec.name}", {
        "dali_abs.fixed_size": spec.fixed_size if spec.fixed_size is not None else "none",
        "dali_abs.max_batch": max_batch if max_batch is not None else "none",
        "dali_abs.empty_context": "whatever the wrapped model returns for an all-hole image",
        "dali_abs.foreign_spec": json.dumps(dataclasses.asdict(spec), sort_keys=True),
        "dali_abs.foreign_source": path.name,
        "dali_abs.adapter": "resize bilinear to fixed size, binary mask > 0.5, output resized back, composited"
        if spec.fixed_size else "binary mask > 0.5, composited",
    })
    onnx.helper.set_model_props(out, meta)
    try:
        onnx.checker.check_model(out)
    except onnx.checker.ValidationError as e:
        raise InpainterError(f"{path}: the wrapped graph is not valid ONNX ({e})") from None
    return out


def wrap(model_path: str | os.PathLike, spec: str | ForeignSpec, out: str | os.PathLike) -> dict:
    """Wrap the foreign ONNX file ``model_path`` under ``spec``; write ``out`` atomically; a summary dict."""
    import onnx

    from dali_abs.files import atomic_write_bytes
    from dali_abs.inpainter.inference import Inpainter

    model_path = Path(model_path)
    if not model_path.is_file():
        raise InpainterError(f"{model_path}: ONNX model not found")
    try:
        model = onnx.load(str(model_path))
    except Exception as e:  # onnx raises DecodeError and others for a bad file
        raise InpainterError(f"{model_path}: cannot read as ONNX ({type(e).__name__}: {e})") from None
    spec = load_spec(spec)
    wrapped = wrap_model(model, spec, str(model_path))
    out = Path(out)
    atomic_write_bytes(out, wrapped.SerializeToString())
    inp = Inpainter(out, device="cpu")  # proves it loads and passes the contract check
    return {"out": str(out), "source": str(model_path), "spec": dataclasses.asdict(spec),
            "max_batch": inp.max_batch, "fill": inp.fill_name}
