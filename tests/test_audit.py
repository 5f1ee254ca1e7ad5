"""dali-abs audit: real DALI pipelines over a real cache, real torch / TorchScript / ONNX models.

The data: a small Waterbirds-layout set where the class is the object's **colour** (red or yellow
disk) and the place the background's (blue or green, textured); in train class k stands on place
k, the test split holds all four groups. The cache is precomputed from its ground-truth masks. Two
models are built here, not trained, so what they read is known exactly: one reads only the
colour of a 3-px ring along the image border (never the object: the disks keep off it), one only
the colour of the red-ish pixels (the object's; the backgrounds have little red). Their audits
must say so.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from dali_abs.constants import MEAN, STD

SIZE = 64


def _colour_dataset(root, n_train=24, n_val=8, n_test=48, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    places = [np.array([0.10, 0.30, 0.80]), np.array([0.15, 0.60, 0.15])]  # blue water, green land
    objects = [np.array([0.85, 0.12, 0.12]), np.array([0.92, 0.85, 0.10])]  # red, yellow
    rows, i = [], 0
    plan = [("0", k % 2, k % 2) for k in range(n_train)] + \
           [(split, g // 2, g % 2) for split, n in (("1", n_val), ("2", n_test)) for g in (k % 4 for k in range(n))]
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for split, y, place in plan:
        tex = 0.85 + 0.3 * rng.random((SIZE // 8, SIZE // 8)).repeat(8, 0).repeat(8, 1)[..., None]
        img = places[place] * tex * rng.uniform(0.9, 1.1)
        r = rng.uniform(14, 18)
        cx, cy = rng.uniform(r + 5, SIZE - r - 5, 2)
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        img = np.where(mask[..., None], objects[y] * rng.uniform(0.9, 1.05), img)
        name = f"{i:04d}"
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / "images" / f"{name}.jpg", quality=95)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{name}.png")
        rows.append((name, f"images/{name}.jpg", y, split, place))
        i += 1
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["img_id", "img_filename", "y", "split", "place"])
        w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def colour_cache(tmp_path_factory):
    from dali_abs.cache.precompute import GroundTruthMasks, PrecomputeConfig, precompute
    from dali_abs.dataset import load_dataset
    from dali_abs.models import inpainter as inet

    base = tmp_path_factory.mktemp("audit")
    data = _colour_dataset(base / "data")
    inet.export_onnx(inet.build("pushpull"), base / "fill.onnx", "pushpull")
    precompute(load_dataset(data), None, base / "fill.onnx", base / "cache", PrecomputeConfig(device="cpu"),
               progress=False, masks=GroundTruthMasks(data / "masks", grid=8, input_size=SIZE))
    return base / "cache", data


class BorderColour(nn.Module):
    """Reads only the background: blue (class 0) vs green (class 1) of the 3-px border ring. Input
    ImageNet-normalised float32 NCHW."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, x):
        x = x * self.std + self.mean
        ring = torch.ones_like(x[:1, :1])
        ring[..., 3:-3, 3:-3] = 0
        c = (x * ring).sum((2, 3)) / ring.sum()
        d = (c[:, 2] - c[:, 1]) * 10
        return torch.stack([d, -d], 1)


class ObjectColour(nn.Module):
    """Reads only the object: the mean green of the red-ish pixels, red (class 0) vs yellow (class 1);
    where there are few (no object, or the specks of one at the edge of a fill), class 0. Input 0..1
    RGB float32 NCHW (mean 0, std 1)."""

    def forward(self, x):
        w = torch.sigmoid((x[:, 0] - 0.6) * 40)
        mass = w.sum((1, 2))
        g = (w * x[:, 1]).sum((1, 2)) / (mass + 1e-3)
        m = torch.clamp((mass - 100.0) / 200.0, 0.0, 1.0)  # the disks show >= 450 px; specks a fill left < 100
        d = (g - 0.5) * 10 * m
        return torch.stack([-d + (1 - m), d], 1)


RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def test_reading_order_pairs_each_class_inside_batches():
    from dali_abs.audit.variants import reading_order

    labels = np.array([0] * 9 + [1] * 8 + [2] * 6 + [3])
    for batch in (4, 6, 8, 64):
        order = reading_order(labels, batch, seed=0)
        assert sorted(order.tolist()) == list(range(len(labels)))
        assert np.array_equal(order, reading_order(labels, batch, seed=0))
        alone = sum(int(np.sum(labels[order[i:i + batch]] == labels[j]) == 1)
                    for i in range(0, len(order), batch) for j in order[i:i + batch])
        assert alone <= 2  # class 3 (one image) and at most one split triple
    assert not np.array_equal(reading_order(labels, 8, seed=0), reading_order(labels, 8, seed=1))


def test_background_model_reads_the_background(colour_cache, tmp_path):
    from dali_abs.audit import audit, format_table, to_json

    cache, data = colour_cache
    r = audit(BorderColour(), cache, data, size=SIZE, png=tmp_path / "ex.png")
    acc = r["accuracy"]
    assert r["subset"] == "majority" and r["majority_groups"] == ["y=0,place=0", "y=1,place=1"] and r["images"] == 24
    assert acc["original"] == 1.0 and acc["mixed_same"] == 1.0
    assert acc["only_bg"] == 1.0  # the background alone says the class
    assert acc["mixed_next"] == 0.0  # the other class's background: always wrong
    assert 0.3 <= acc["mixed_rand"] <= 0.7 and r["bg_gap"] >= 0.3
    assert acc["only_fg"] == 0.5  # on the gray backdrop: one answer for both classes
    assert r["own_background"] == {"mixed_same": 0, "mixed_rand": 0, "mixed_next": 0}
    assert set(r["per_class"]) == {"0", "1"} and r["per_class"]["0"]["n"] == 12
    assert set(r["per_group"]) == {"y=0,place=0", "y=1,place=1"}
    json.dumps(to_json(r))  # the report is one JSON object
    text = format_table(r)
    assert "BG-gap (mixed_same - mixed_rand): +" in text and "only-bg accuracy: 1.000" in text
    from PIL import Image

    im = Image.open(tmp_path / "ex.png")
    assert im.width > 6 * 128 and im.height > 8 * 128 and r["png"] == str(tmp_path / "ex.png")


def test_object_model_reads_the_object(colour_cache):
    from dali_abs.audit import audit

    cache, data = colour_cache
    r = audit(ObjectColour(), cache, data, size=SIZE, **RAW)
    acc = r["accuracy"]
    for v in ("original", "only_fg", "mixed_same", "mixed_rand", "mixed_next"):
        assert acc[v] == 1.0, (v, acc)
    assert r["bg_gap"] == 0.0
    assert acc["only_bg"] == 0.5  # nothing of the object left: one answer for both classes
    assert r["backdrop"] == [0.0, 0.0, 0.0]  # the backdrop defaults to the model's mean (0 after normalising)


def test_all_groups_and_the_variants_do_not_depend_on_the_model(colour_cache):
    from dali_abs.audit import audit

    cache, data = colour_cache
    seen = []

    def spy(x):  # a plain callable: records what it is shown
        seen.append(x.clone())
        return ObjectColour()(x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1))

    r = audit(spy, cache, data, size=SIZE, subset="all", batch_size=16, examples=0)
    assert r["images"] == 48 and len(r["per_group"]) == 4 and "examples" in r and r["examples"] == []
    first = torch.cat(seen)
    seen.clear()
    audit(spy, cache, data, size=SIZE, subset="all", batch_size=16, examples=0)
    assert torch.equal(first, torch.cat(seen))  # same seed, same images
    seen.clear()
    audit(spy, cache, data, size=SIZE, subset="all", batch_size=16, examples=0, seed=1)
    assert not torch.equal(first, torch.cat(seen))
    # 48 images in batches of 20: DALI pads the last batch of 8 (partners may fall in the padding)
    r = audit(spy, cache, data, size=SIZE, subset="all", batch_size=20, examples=0)
    assert r["images"] == 48 and r["batch_size"] == 20 and r["accuracy"]["mixed_rand"] == 1.0


def test_torchscript_and_onnx_files_give_the_modules_audit(colour_cache, tmp_path):
    from dali_abs.audit import audit, to_json

    cache, data = colour_cache
    model = BorderColour()
    ts = tmp_path / "border.pt"
    torch.jit.script(model).save(str(ts))
    onnx_path = tmp_path / "border.onnx"
    torch.onnx.export(model, torch.zeros(2, 3, SIZE, SIZE), str(onnx_path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "n"}})
    ref = to_json(audit(model, cache, data, size=SIZE, examples=0))
    for path in (ts, onnx_path):
        r = to_json(audit(path, cache, data, size=SIZE, examples=0))
        assert r["model"] == str(path)
        assert r["accuracy"] == ref["accuracy"] and r["per_group"] == ref["per_group"]
    # a graph with a static batch of 5 and a static 64 x 64 input: run in slices, size taken from it
    fixed = tmp_path / "fixed.onnx"
    torch.onnx.export(ObjectColour(), torch.zeros(5, 3, SIZE, SIZE), str(fixed), dynamo=False, opset_version=17)
    r = audit(fixed, cache, data, examples=0, **RAW)
    assert r["size"] == SIZE and r["accuracy"]["only_fg"] == 1.0


def test_a_module_keeps_its_training_mode(colour_cache):
    from dali_abs.audit import audit

    cache, data = colour_cache
    model = nn.Sequential(nn.BatchNorm2d(3), BorderColour())
    model.train()
    before = model[0].running_mean.clone()
    audit(model, cache, data, size=SIZE, examples=0)
    assert model.training and torch.equal(before, model[0].running_mean)  # eval mode, no statistics updated


def test_hook_every_k_epochs_during_fit(tiny_cache, tiny_dataset, tmp_path):
    """A real SmallCNN trained through the loader on the built-in benchmark, audited every 2 epochs."""
    from dali_abs.audit import AuditHook
    from dali_abs.loader.iterator import create_loader
    from dali_abs.models.classifier import SmallCNN
    from dali_abs.training import fit

    torch.manual_seed(0)
    hook = AuditHook(tiny_cache, tiny_dataset, every=2, jsonl=tmp_path / "audit.jsonl", size=64)
    loader = create_loader(tiny_cache, tiny_dataset, batch_size=32, size=64, device="cpu", swap=None, seed=0)
    model = SmallCNN(2)
    assert hook(model, 0)["epoch"] == 0 and hook(model, 1) is None
    fit(model, lambda e: ((b[0]["images"], b[0]["labels"]) for b in loader), epochs=4, on_epoch=hook)
    assert [r["epoch"] for r in hook.history] == [0, 2, 4]
    lines = [json.loads(s) for s in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 2, 4] and "examples" not in lines[0]
    assert all(set(r["accuracy"]) >= {"original", "only_bg", "mixed_same", "mixed_rand"} for r in lines)
    # plain ERM on rho = 1 data learns the place: trained, its only-bg accuracy is well above chance
    assert hook.history[-1]["only_bg"] > 0.7


def test_bad_options_are_one_error_each(colour_cache):
    from dali_abs.audit import audit
    from dali_abs.errors import DaliAbsError

    cache, data = colour_cache
    for kw, words in ((dict(mean=(123.7, 116.3, 103.5)), "divide by 255"), (dict(std=(0.2, 0, 0.2)), "std"),
                      (dict(subset="some"), "subset"), (dict(device="tpu"), "device"), (dict(batch_size=0), "batch"),
                      (dict(size=4), "size"), (dict(backdrop=(300, 0, 0)), "backdrop"), (dict(spam=1), "unknown"),
                      (dict(split="val", subset="majority", ids=("0000",)), "not in split"),
                      (dict(loose=0.05), "below the fill threshold 0.1")):
        with pytest.raises(DaliAbsError, match=words):
            audit(BorderColour(), cache, data, **{"size": SIZE, **kw})
    with pytest.raises(DaliAbsError, match=r"returns 1 logits per image, but the dataset has 2 classes"):
        audit(lambda x: x.mean((2, 3))[:, :1], cache, data, size=SIZE)
    with pytest.raises(DaliAbsError, match=r"logits \[N, C\].*shape \(24,\)"):
        audit(lambda x: x.mean((1, 2, 3)), cache, data, size=SIZE)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dali_abs.cli", "audit", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


def test_cli_audits_an_onnx_file_and_writes_json_and_png(colour_cache, tmp_path):
    cache, data = colour_cache
    model = tmp_path / "object.onnx"
    torch.onnx.export(ObjectColour(), torch.zeros(1, 3, SIZE, SIZE), str(model), dynamo=False, opset_version=17,
                      dynamic_axes={"input": {0: "n"}}, input_names=["input"])
    out, png = tmp_path / "report.json", tmp_path / "ex.png"
    p = _cli(cache, "--data", data, "--model", model, "--size", SIZE, "--mean", 0, 0, 0, "--std", 1, 1, 1,
             "--out", out, "--png", png)
    assert p.returncode == 0, p.stderr
    assert "BG-gap (mixed_same - mixed_rand): +0.000" in p.stdout and "only_fg" in p.stdout
    report = json.loads(out.read_text())
    assert report["accuracy"]["only_fg"] == 1.0 and report["png"] == str(png) and png.stat().st_size > 1000
    p = _cli(cache, "--data", data, "--model", model, "--size", SIZE, "--mean", 0, 0, 0, "--std", 1, 1, 1, "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["accuracy"] == report["accuracy"]


def _main(capsys, *args) -> tuple[int, str]:
    """``dali-abs audit ARGS`` in this process (what the console script runs): exit status, stderr."""
    from dali_abs.cli import main

    code = main(["audit", *map(str, args)])
    return code, capsys.readouterr().err


def test_cli_bad_model_files_are_one_line_naming_them(colour_cache, tmp_path, capsys):
    cache, data = colour_cache
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    state = tmp_path / "weights.pt"
    torch.save(BorderColour().state_dict(), state)
    wrong = tmp_path / "gray.onnx"  # one input channel
    torch.onnx.export(nn.Conv2d(1, 2, 1), torch.zeros(1, 1, SIZE, SIZE), str(wrong), dynamo=False, opset_version=17)
    cases = ((tmp_path / "missing.onnx", "file not found"), (junk, "onnxruntime cannot load"),
             (state, "not a TorchScript model"), (tmp_path / "model.pkl", "unknown model file type"),
             (wrong, "1 channels"))
    for path, words in cases:
        if path.suffix == ".pkl":
            path.write_bytes(b"x")
        code, err = _main(capsys, cache, "--data", data, "--model", path, "--size", SIZE)
        assert code == 2, (path, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dali-abs: error: --model ") and str(path) in lines[0], lines
        assert words in lines[0], lines
    code, err = _main(capsys, cache, "--data", data, "--model", state.with_suffix(".onnx"), "--mean", 124, 117, 104)
    assert code == 2 and "divide by 255" in err and len(err.strip().splitlines()) == 1
    for opt in (["--data", data], []):  # the dataset given, or the cache's
        code, err = _main(capsys, cache, *opt, "--model", junk, "--png", data / "ex.png")
        assert code == 2 and "--png" in err and "inside the dataset folder" in err, err
        code, err = _main(capsys, cache, *opt, "--model", junk, "--out", data / "images" / "r.json")
        assert code == 2 and "--out" in err and "inside the dataset folder" in err, err
    assert not (data / "ex.png").exists() and not (data / "images" / "r.json").exists()



def test_cli_torchscript_forward_failure_is_one_line_naming_the_model(colour_cache, tmp_path, capsys):
    cache, data = colour_cache
    ts = tmp_path / "small.pt"  # trained at 16 px: its Linear takes 3 * 16 * 16 features
    torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))).save(str(ts))
    code, err = _main(capsys, cache, "--data", data, "--model", ts, "--size", SIZE)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"dali-abs: error: --model {ts}: forward failed on a batch of shape (24, 3, {SIZE}, "
                               f"{SIZE}) (its input size? pass --size): ") and "mat1 and mat2" in lines[0], lines


def test_cli_refuses_unwritable_outputs_before_the_audit(colour_cache, tmp_path, capsys):
    cache, data = colour_cache
    junk = tmp_path / "junk.onnx"  # never loaded: every case is refused before the model
    junk.write_bytes(b"not a model at all")
    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "pics.png").mkdir()
    cases = ((["--png", tmp_path / "ex.png", "--examples", 0], f"--png {tmp_path / 'ex.png'} with --examples 0"),
             (["--out", tmp_path], f"--out {tmp_path} is a folder"),
             (["--png", tmp_path / "pics.png"], f"--png {tmp_path / 'pics.png'} is a folder"),
             (["--out", afile / "r.json"], f"{afile} is a file, not a folder"))
    for opts, words in cases:
        code, err = _main(capsys, cache, "--data", data, "--model", junk, "--size", SIZE, *opts)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and words in lines[0], (opts, lines)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, err = _main(capsys, cache, "--data", data, "--model", junk, "--out", locked / "sub" / "r.json")
        assert code == 2 and f"folder {locked} is not writable" in err, err


def test_api_refuses_png_without_examples_and_the_hook_bad_options_at_once(colour_cache, tmp_path):
    from dali_abs.audit import AuditHook, audit
    from dali_abs.errors import DaliAbsError

    cache, data = colour_cache
    calls = []
    with pytest.raises(DaliAbsError, match=r"png=.*ex\.png.* with examples=0"):
        audit(lambda x: calls.append(x), cache, data, size=SIZE, examples=0, png=tmp_path / "ex.png")
    assert not calls and not (tmp_path / "ex.png").exists()
    for kw, words in ((dict(spam=1), "AuditHook got unknown option.*spam.*AuditConfig has"), (dict(size=4), "size"),
                      (dict(device="tpu"), "device")):
        with pytest.raises(DaliAbsError, match=words):
            AuditHook(cache, data, **kw)

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch has no CUDA here (a CPU build of torch)")
def test_gpu_audit_gives_the_cpu_audits_accuracies(colour_cache):
    """On a GPU: nvJPEG decode, the CUDA compositing kernel, the model on the GPU; the same parameters."""
    from dali_abs.audit import audit, to_json

    cache, data = colour_cache
    for model, kw in ((BorderColour(), {}), (ObjectColour(), RAW)):
        cpu = to_json(audit(model, cache, data, size=SIZE, examples=0, **kw))
        gpu = to_json(audit(model.cuda(), cache, data, size=SIZE, examples=0, device="gpu", **kw))
        assert gpu["accuracy"] == cpu["accuracy"] and gpu["own_background"] == cpu["own_background"]
