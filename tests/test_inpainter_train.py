"""The learned fill: real (short) training runs on the tiny dataset, export, and the segmenter route."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dali_abs.cli import main
from dali_abs.dataset import load_dataset
from dali_abs.inpainter.inference import Inpainter, InpainterError
from dali_abs.inpainter.train import (load_checkpoint, load_images, random_holes, read_gt_masks, regions_from_masks,
                                      train_inpainter)


@pytest.fixture(scope="module")
def tiny_arrays(tiny_dataset):
    ds = load_dataset(tiny_dataset)
    samples = ds.split("train")[:32]
    images = load_images([s.path for s in samples], 64)
    fg = read_gt_masks(ds.root, samples, 64)
    return images, fg


def test_regions_keep_a_margin_from_objects(tiny_arrays):
    _, fg = tiny_arrays
    bg = regions_from_masks(fg, margin=2)
    assert not (bg & fg).any()  # no object pixel is ever background
    near = regions_from_masks(fg, margin=0)
    assert (near == ~fg).all() and bg.sum() < near.sum()
    holes = random_holes(torch.from_numpy(fg), 5, torch.Generator().manual_seed(0))
    assert holes.shape == (5, 1, 64, 64) and 0 < float(holes.mean()) < 0.7


def test_train_export_and_run(tiny_arrays, tmp_path):
    images, fg = tiny_arrays
    out = tmp_path / "learned.onnx"
    res = train_inpainter(images, regions_from_masks(fg), out, epochs=2, batch_size=8, crop=48, threads=1,
                          progress=False, val_fraction=0.25)
    assert res["train_images"] == 24 and res["val_images"] == 8 and len(res["history"]) == 2
    assert np.isfinite(res["final_train_loss"]) and res["val_l1"] > 0 and res["val_l1_pushpull"] > 0
    inp = Inpainter(out, device="cpu")
    assert inp.fill_name == "learned" and inp.metadata["dali_abs.train_images"] == "24"
    model, info = load_checkpoint(res["checkpoint"])
    assert info["width"] == 8
    # ONNX == torch at a size never trained on, pixels outside the hole unchanged
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 45, 70, generator=g)
    m = torch.zeros(2, 1, 45, 70)
    m[:, :, 10:30, 15:50] = 1
    with torch.no_grad():
        ref = model(x, m).numpy()
    y = inp.fill(x.numpy(), m.numpy())
    np.testing.assert_allclose(y, ref, atol=1e-4)
    keep = np.broadcast_to(m.numpy() == 0, y.shape)
    assert np.array_equal(y[keep], x.numpy()[keep])
    full = inp.fill(x.numpy(), np.ones((2, 1, 45, 70), np.float32))
    np.testing.assert_allclose(full, 0.5, atol=1e-6)  # documented: no context -> 0.5 gray


def test_train_rejects_bad_input(tiny_arrays, tmp_path):
    images, fg = tiny_arrays
    bg = regions_from_masks(fg)
    with pytest.raises(InpainterError, match="uint8"):
        train_inpainter(images.astype(np.float32), bg, tmp_path / "a.onnx", progress=False)
    with pytest.raises(InpainterError, match="do not match"):
        train_inpainter(images, bg[:, :32], tmp_path / "a.onnx", progress=False)
    with pytest.raises(InpainterError, match="background"):
        train_inpainter(images, np.zeros_like(bg), tmp_path / "a.onnx", progress=False)
    with pytest.raises(InpainterError, match="epochs"):
        train_inpainter(images, bg, tmp_path / "a.onnx", epochs=0, progress=False)
    assert not (tmp_path / "a.onnx").exists()


def test_cli_train_sources(tiny_dataset, tmp_path, capsys):
    out = str(tmp_path / "x.onnx")
    with pytest.raises(SystemExit):  # argparse: one of --segmenter / --gt-masks is required
        main(["inpainter", "train", str(tiny_dataset), "--out", out])
    capsys.readouterr()
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "folder" / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), (10 * i, 20, 30)).save(tmp_path / "folder" / c / f"{i}.png")
    assert main(["inpainter", "train", str(tmp_path / "folder"), "--gt-masks", "--out", out]) == 2
    assert "mask_filename" in capsys.readouterr().err


def test_train_through_a_real_segmenter(tiny_dataset, tiny_labels, tmp_path, capsys):
    from dali_abs.segmenter.train import train_segmenter

    ds = load_dataset(tiny_dataset)
    seg = tmp_path / "seg.onnx"
    train_segmenter(ds, tiny_labels, seg, input_size=64, epochs=6, seed=0, threads=1, progress=False)
    out = tmp_path / "fill.onnx"
    assert main(["inpainter", "train", str(tiny_dataset), "--segmenter", str(seg), "--out", str(out),
                 "--size", "64", "--limit", "24", "--epochs", "1", "--batch-size", "8", "--threshold", "0.5",
                 "--threads", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert "segmenter seg.onnx" in res["regions"] and 0.05 < res["background_fraction"] < 1.0
    assert Inpainter(out, device="cpu").fill_name == "learned"
