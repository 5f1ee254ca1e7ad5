"""Inpainter stage: the fills in torch and ONNX, the contract checks, eval, and the learned fill."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from dali_abs.cli import main
from dali_abs.dataset import load_dataset
from dali_abs.inpainter.evaluate import evaluate, throughput
from dali_abs.inpainter.inference import Inpainter, InpainterError
from dali_abs.models import inpainter as net


@pytest.fixture(scope="module")
def fills(tmp_path_factory):
    d = tmp_path_factory.mktemp("fills")
    out = {}
    for kind in ("pushpull", "mean"):
        out[kind] = net.export_onnx(net.build(kind), d / f"{kind}.onnx", kind)
    return out


def _batch(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, h, w, generator=g)
    m = (torch.rand(b, 1, h, w, generator=g) > 0.6).float()
    m[:, :, h // 4: h // 2 + 1, w // 3: w // 3 + w // 4 + 1] = 1.0  # one large hole too
    return x, m


@pytest.mark.parametrize("kind", ["pushpull", "mean"])
def test_torch_onnx_parity_at_two_sizes_and_outside_unchanged(fills, kind):
    model = net.build(kind)
    inp = Inpainter(fills[kind], device="cpu")
    for h, w in ((37, 53), (64, 96)):  # not powers of two, not square, two sizes through one graph
        x, m = _batch(3, h, w)
        with torch.no_grad():
            ref = model(x, m).numpy()
        got = inp.fill(x.numpy(), m.numpy())
        assert got.shape == (3, 3, h, w) and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, atol=2e-5)
        keep = np.broadcast_to(m.numpy() == 0, got.shape)
        assert np.array_equal(got[keep], x.numpy()[keep])  # exactly unchanged outside the hole
        assert got.min() >= 0.0 and got.max() <= 1.0


def test_pushpull_fills_smooth_content(fills):
    inp = Inpainter(fills["pushpull"], device="cpu")
    x = np.empty((1, 3, 50, 70), np.float32)
    x[:, 0], x[:, 1], x[:, 2] = 0.2, 0.5, 0.7
    m = np.zeros((1, 1, 50, 70), np.float32)
    m[..., 10:35, 20:50] = 1
    np.testing.assert_allclose(inp.fill(x, m), x, atol=1e-5)  # a constant image is filled with the constant
    ramp = np.broadcast_to(np.linspace(0, 1, 70, dtype=np.float32), (1, 3, 50, 70)).copy()
    err = np.abs(inp.fill(ramp, m) - ramp)[np.broadcast_to(m > 0, ramp.shape)]
    assert err.mean() < 0.08  # a ramp is continued roughly (a mean-colour fill is off by ~0.2 here)


def test_empty_and_full_masks(fills):
    x, _ = _batch(2, 33, 40)
    for kind, path in fills.items():
        inp = Inpainter(path, device="cpu")
        assert np.array_equal(inp.fill(x.numpy(), np.zeros((2, 1, 33, 40), np.float32)), x.numpy())
        full = inp.fill(x.numpy(), np.ones((2, 1, 33, 40), np.float32))
        assert np.isfinite(full).all()
        np.testing.assert_allclose(full, net.EMPTY_FILL, atol=1e-6)  # documented: 0.5 gray
    one = Inpainter(fills["pushpull"], device="cpu").fill(np.full((1, 3, 1, 1), 0.3, np.float32),
                                                          np.zeros((1, 1, 1, 1), np.float32))
    assert one.shape == (1, 3, 1, 1)


def test_bad_inputs_name_the_problem(fills):
    inp = Inpainter(fills["pushpull"], device="cpu")
    x = np.random.rand(2, 3, 16, 16).astype(np.float32)
    m = np.zeros((2, 1, 16, 16), np.float32)
    cases = [
        ((x, np.zeros((2, 1, 16, 12), np.float32)), "do not match"),
        ((x, np.zeros((1, 1, 16, 16), np.float32)), "do not match"),
        (((x * 255).astype(np.uint8), m), "dtype uint8"),
        ((x * 255, m), "divide by 255"),
        ((x - 0.5, m), "min"),
        ((x.transpose(0, 2, 3, 1), m), "NHWC"),
        ((x, m[:, 0]), "channel axis"),
        ((x, m.astype(np.int64)), "masks must be float32"),
        ((x, m + 2), "masks must be in 0..1"),
        ((np.where(x > 0.5, np.nan, x).astype(np.float32), m), "NaN"),
    ]
    for (a, b), msg in cases:
        with pytest.raises(InpainterError, match=msg):
            inp.fill(a, b)


def test_model_checks_on_load(tmp_path):
    from dali_abs.errors import DaliAbsError

    with pytest.raises(DaliAbsError, match="not found"):
        Inpainter(tmp_path / "missing.onnx")
    # a valid ONNX graph with the right names but no contract metadata
    g = helper.make_graph([helper.make_node("Identity", ["image"], ["filled"])], "g",
                          [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["b", 3, "h", "w"]),
                           helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["b", 1, "h", "w"])],
                          [helper.make_tensor_value_info("filled", TensorProto.FLOAT, ["b", 3, "h", "w"])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "plain.onnx")
    with pytest.raises(InpainterError, match="dali_abs.kind"):
        Inpainter(tmp_path / "plain.onnx")
    helper.set_model_props(model, {**net.META_REQUIRED, "dali_abs.mask_polarity": "255=keep"})
    onnx.save(model, tmp_path / "polarity.onnx")
    with pytest.raises(InpainterError, match="mask_polarity"):
        Inpainter(tmp_path / "polarity.onnx")


def test_eval_and_throughput(tiny_dataset, fills, tmp_path):
    ds = load_dataset(tiny_dataset)
    res = {k: evaluate(ds, p, split="test", progress=False) for k, p in fills.items()}
    for r in res.values():
        assert r["images"] == 64 and 0.05 < r["hole_fraction"] < 0.6
        assert 0 < r["mae"] < 0.3 and r["psnr"] > 10 and np.isfinite(r["texture_ratio"])
    assert res["pushpull"]["mae"] < res["mean"]["mae"]
    assert res["mean"]["texture_ratio"] < 0.05 < res["pushpull"]["texture_ratio"] < 1.0
    t = throughput(fills["pushpull"], size=64, batch_size=4, seconds=0.2)
    assert t["images_per_s"] > 0
    # a dataset without clean backgrounds: a clear error
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "folder" / c).mkdir(parents=True)
        Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "folder" / c / "x.png")
    with pytest.raises(InpainterError, match="background_filename"):
        evaluate(load_dataset(tmp_path / "folder"), fills["pushpull"], split="train", progress=False)


def test_cli_export_and_eval(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "pp.onnx"
    assert main(["inpainter", "export", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fill"] == "pushpull"
    assert main(["inpainter", "eval", str(tiny_dataset), "--model", str(out), "--limit", "8", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["images"] == 8 and res["fill"] == "pushpull" and res["mae"] > 0
    assert main(["inpainter", "eval", str(tiny_dataset), "--model", str(tmp_path / "nope.onnx")]) == 2
    assert "not found" in capsys.readouterr().err


def test_pyramid_pool_is_the_ceil_mode_pool_without_ceil_mode(tmp_path):
    """PushPull's 2x pool equals torch's ceil-mode pool bit for bit at odd sizes, and its ONNX graph
    carries no ceil-mode AveragePool (which onnxruntime < 1.27 averages over the full kernel)."""
    import torch.nn.functional as F

    for shape in ((2, 3, 37, 53), (1, 1, 1, 1), (1, 3, 7, 4)):
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
        assert torch.equal(net.half(x), F.avg_pool2d(x, 2, ceil_mode=True))
    path = net.export_onnx(net.build("pushpull"), tmp_path / "pp.onnx", "pushpull")
    pools = [n for n in onnx.load(path).graph.node if n.op_type == "AveragePool"]
    assert pools and not any(a.name == "ceil_mode" and a.i for n in pools for a in n.attribute)


def test_an_inpainter_that_outputs_nan_is_refused_at_open_or_at_the_batch(graph_models):
    from dali_abs.probe import ModelOutputError

    with pytest.raises(InpainterError, match=r"inp_nan.onnx: on a probe batch .* NaN"):
        Inpainter(graph_models["inp_nan"])
    inp = Inpainter(graph_models["inp_nan_when_bright"], batch_size=2)
    x, m = (t.numpy() for t in _batch(3, 24, 24))
    x = x * np.float32(0.9)
    assert np.isfinite(inp.fill(x, m)).all()
    x[1, :, 3, 3] = 1.0
    with pytest.raises(ModelOutputError, match=r"inpainter .*inp_nan_when_bright.onnx output NaN") as e:
        inp.fill(x, m)
    assert e.value.bad == [1]
