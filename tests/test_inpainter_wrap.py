"""Wrapping foreign inpainter contracts: tiny real ONNX models (onnx.helper) with each contract."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dali_abs.cli import main
from dali_abs.inpainter.inference import Inpainter, InpainterError
from dali_abs.inpainter.wrap import ForeignSpec, wrap, wrap_model


def _model(nodes, inputs, outputs, inits, opset=17):
    g = helper.make_graph(nodes, "foreign", inputs, outputs,
                          initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8  # loadable by the installed onnxruntime
    onnx.checker.check_model(m)
    return m


def _vi(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def lama_like(size=512, fill=0.8):
    """LaMa contract: float image 0..1, float mask 1 = fill, fixed size, batch 1; returns 0..255.
    Computes 255 * (image * (1 - mask) + fill * mask)."""
    F = TensorProto.FLOAT
    return _model([helper.make_node("Sub", ["one", "mask"], ["keep"]),
                   helper.make_node("Mul", ["image", "keep"], ["a"]),
                   helper.make_node("Mul", ["mask", "c"], ["b"]),
                   helper.make_node("Add", ["a", "b"], ["s"]),
                   helper.make_node("Mul", ["s", "k255"], ["output"])],
                  [_vi("image", F, [1, 3, size, size]), _vi("mask", F, [1, 1, size, size])],
                  [_vi("output", F, [1, 3, size, size])],
                  {"one": np.float32(1), "c": np.float32(fill), "k255": np.float32(255)})


def migan_like(value=200):
    """MI-GAN contract: uint8 image, uint8 mask 255 = keep / 0 = fill, any size; uint8 out.
    Keeps pixels where mask == 255, writes ``value`` elsewhere."""
    U = TensorProto.UINT8
    return _model([helper.make_node("Equal", ["mask", "k255"], ["keep"]),
                   helper.make_node("Where", ["keep", "image", "v"], ["result"])],
                  [_vi("image", U, [1, 3, "H", "W"]), _vi("mask", U, [1, 1, "H", "W"])],
                  [_vi("result", U, [1, 3, "H", "W"])], {"k255": np.uint8(255), "v": np.uint8(value)}, opset=13)


def aotgan_like(size=512):
    """AOT-GAN contract: float image 0..1, mask 1 = hole, 512 fixed; output 0..1.
    Output = 1 - image in the hole (so the image range and the paste-back both show)."""
    F = TensorProto.FLOAT
    return _model([helper.make_node("Sub", ["one", "image"], ["inv"]),
                   helper.make_node("Sub", ["one", "mask"], ["keep"]),
                   helper.make_node("Mul", ["image", "keep"], ["a"]),
                   helper.make_node("Mul", ["inv", "mask"], ["b"]),
                   helper.make_node("Add", ["a", "b"], ["out"])],
                  [_vi("image", F, [1, 3, size, size]), _vi("mask", F, [1, 1, size, size])],
                  [_vi("out", F, [1, 3, size, size])], {"one": np.float32(1)})


def _inputs(b=2, h=60, w=90):
    """Images constant per channel (resizing is exact on them) and a rectangular hole."""
    x = np.empty((b, 3, h, w), np.float32)
    x[:, 0], x[:, 1], x[:, 2] = 0.25, 0.5, 0.75
    m = np.zeros((b, 1, h, w), np.float32)
    m[:, :, 10:40, 20:70] = 1.0
    return x, m


def _check(wrapped_path, expect_hole, b=2, h=60, w=90):
    inp = Inpainter(wrapped_path, device="cpu")
    x, m = _inputs(b, h, w)
    y = inp.fill(x, m)
    keep = np.broadcast_to(m == 0, y.shape)
    assert np.array_equal(y[keep], x[keep])  # unchanged outside the hole, exactly
    inner = y[:, :, 14:36, 24:66]  # hole interior, away from resampled edges
    np.testing.assert_allclose(inner, np.broadcast_to(np.asarray(expect_hole, np.float32)[None, :, None, None],
                                                      inner.shape), atol=2e-3)
    return inp, y


def test_wrap_lama(tmp_path):
    src = tmp_path / "lama.onnx"
    onnx.save(lama_like(), src)
    res = wrap(src, "lama", tmp_path / "w.onnx")
    assert res["max_batch"] == 1 and res["spec"]["fixed_size"] == 512
    inp, _ = _check(tmp_path / "w.onnx", [0.8, 0.8, 0.8])  # 0..255 output mapped back to 0..1
    assert inp.metadata["dali_abs.fixed_size"] == "512" and inp.fill_name == "wrapped:lama"
    _check(tmp_path / "w.onnx", [0.8, 0.8, 0.8], b=1, h=700, w=530)  # larger than 512: resized down and back


def test_wrap_migan_polarity_and_uint8(tmp_path):
    onnx.save(migan_like(), tmp_path / "migan.onnx")
    wrap(tmp_path / "migan.onnx", "migan", tmp_path / "w.onnx")
    # polarity: our 1 = fill became 0 for MI-GAN, so the hole gets its value; keep pixels pass through uint8
    _check(tmp_path / "w.onnx", [200 / 255] * 3)
    _check(tmp_path / "w.onnx", [200 / 255] * 3, b=3, h=45, w=77)  # any size, several images


def test_wrap_aotgan(tmp_path):
    onnx.save(aotgan_like(), tmp_path / "aot.onnx")
    wrap(tmp_path / "aot.onnx", "aotgan", tmp_path / "w.onnx")
    _check(tmp_path / "w.onnx", [0.75, 0.5, 0.25])


def test_wrap_spec_file_with_other_names_and_ranges(tmp_path):
    """A -1..1 model with other input/output names, dynamic batch and size, described by a spec JSON file."""
    F = TensorProto.FLOAT
    # out = img * (1 - hole) + (-0.5) * hole, everything in -1..1
    m = _model([helper.make_node("Sub", ["one", "hole"], ["keep"]),
                helper.make_node("Mul", ["img", "keep"], ["a"]),
                helper.make_node("Mul", ["hole", "c"], ["b"]),
                helper.make_node("Add", ["a", "b"], ["pred"]),
                helper.make_node("Identity", ["pred"], ["aux"])],
               [_vi("img", F, ["N", 3, "H", "W"]), _vi("hole", F, ["N", 1, "H", "W"])],
               [_vi("pred", F, ["N", 3, "H", "W"]), _vi("aux", F, ["N", 3, "H", "W"])],
               {"one": np.float32(1), "c": np.float32(-0.5)})
    onnx.save(m, tmp_path / "m.onnx")
    spec = {"name": "mine", "image_input": "img", "mask_input": "hole", "output": "pred",
            "image_range": "-1..1", "output_range": "-1..1"}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    res = wrap(tmp_path / "m.onnx", str(tmp_path / "spec.json"), tmp_path / "w.onnx")
    assert res["max_batch"] is None
    _check(tmp_path / "w.onnx", [0.25] * 3, b=3)


def test_wrap_rejects_mismatched_models(tmp_path):
    migan, lama = migan_like(), lama_like()
    with pytest.raises(InpainterError, match="UINT8.*float32"):
        wrap_model(migan, "lama", "migan.onnx")  # dtype differs from the spec
    with pytest.raises(InpainterError, match="input 'image' is FLOAT, spec 'migan' says uint8"):
        wrap_model(lama, "migan", "lama.onnx")
    with pytest.raises(InpainterError, match="fixed size"):
        wrap_model(lama, ForeignSpec("anysize", output_range="0..255"), "lama.onnx")  # 512 model, spec says any
    with pytest.raises(InpainterError, match="512 x 512"):
        wrap_model(lama_like(size=256), "lama", "lama256.onnx")
    with pytest.raises(InpainterError, match="missing"):
        wrap_model(lama, ForeignSpec("x", image_input="img"), "lama.onnx")
    with pytest.raises(InpainterError, match="not a built-in spec"):
        wrap_model(lama, "nonesuch", "lama.onnx")
    (tmp_path / "bad.json").write_text(json.dumps({"image_range": "0..9"}))
    with pytest.raises(InpainterError, match="image_range"):
        wrap_model(lama, str(tmp_path / "bad.json"), "lama.onnx")
    (tmp_path / "bad2.json").write_text(json.dumps({"colour": "rgb"}))
    with pytest.raises(InpainterError, match="unknown spec field"):
        wrap_model(lama, str(tmp_path / "bad2.json"), "lama.onnx")
    from dali_abs.models import inpainter as net

    net.export_onnx(net.PushPull(), tmp_path / "ours.onnx", "pushpull")
    with pytest.raises(InpainterError, match="already a dali-abs inpainter"):
        wrap(tmp_path / "ours.onnx", "lama", tmp_path / "w.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(InpainterError, match="cannot read as ONNX"):
        wrap(tmp_path / "junk.onnx", "lama", tmp_path / "w.onnx")


def test_wrap_rejects_old_opsets_fixed_batches_and_extra_inputs():
    F = TensorProto.FLOAT
    old = lama_like()
    old.opset_import[0].version = 10
    with pytest.raises(InpainterError, match="opset is 10"):
        wrap_model(old, "lama", "old.onnx")
    batch2 = _model([helper.make_node("Mul", ["image", "mask"], ["output"])],
                    [_vi("image", F, [2, 3, "H", "W"]), _vi("mask", F, [2, 1, "H", "W"])],
                    [_vi("output", F, [2, 3, "H", "W"])], {})
    with pytest.raises(InpainterError, match="batch axis is fixed at 2"):
        wrap_model(batch2, ForeignSpec("b2"), "b2.onnx")
    three = _model([helper.make_node("Sum", ["image", "mask", "seed"], ["output"])],
                   [_vi("image", F, [1, 3, "H", "W"]), _vi("mask", F, [1, 1, "H", "W"]), _vi("seed", F, [1])],
                   [_vi("output", F, [1, 3, "H", "W"])], {})
    with pytest.raises(InpainterError, match="has 3 inputs"):
        wrap_model(three, ForeignSpec("three"), "three.onnx")
    wrong_ch = _model([helper.make_node("Mul", ["image", "mask"], ["output"])],
                      [_vi("image", F, [1, 4, "H", "W"]), _vi("mask", F, [1, 1, "H", "W"])],
                      [_vi("output", F, [1, 4, "H", "W"])], {})
    with pytest.raises(InpainterError, match="4 channels"):
        wrap_model(wrong_ch, ForeignSpec("rgba"), "rgba.onnx")


def test_cli_wrap(tmp_path, capsys):
    onnx.save(migan_like(), tmp_path / "migan.onnx")
    assert main(["inpainter", "wrap", str(tmp_path / "migan.onnx"), "--spec", "migan",
                 "--out", str(tmp_path / "w.onnx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fill"] == "wrapped:migan"
    assert main(["inpainter", "wrap", str(tmp_path / "migan.onnx"), "--spec", "lama",
                 "--out", str(tmp_path / "w2.onnx")]) == 2
    err = capsys.readouterr().err
    assert "image" in err and "spec 'lama'" in err and not (tmp_path / "w2.onnx").exists()
