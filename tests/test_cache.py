"""The precompute cache: real DALI decoding, real onnxruntime models, real files in temp folders."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dali_abs.cache.format import CHUNKS, MANIFEST, CacheError, open_cache
from dali_abs.cache.precompute import PrecomputeConfig, parse_shard, precompute
from dali_abs.cache.verify import verify
from dali_abs.cli import main
from dali_abs.dataset import load_dataset

DALI_ABS = str(Path(sys.executable).parent / "dali-abs")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def snapshot(root: Path) -> dict:
    """Every file under root with its size, mtime and SHA-256 (to prove nothing was written)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns,
                                         hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
    return out


def cache_files(root: Path) -> dict:
    """SHA-256 of every visible file of a cache (leftover temp files would show up too)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def small_dataset(src: Path, dst: Path, n: int) -> Path:
    """A copy of the first ``n`` rows of a metadata dataset (files copied with their mtimes)."""
    with open(src / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keep = rows[:n - 8] + [r for r in rows if r["split"] == "0"][-8:]  # the train split must not be empty
    for r in keep:
        (dst / r["img_filename"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / r["img_filename"], dst / r["img_filename"])
    write_rows(dst, keep)
    return dst


def write_rows(root: Path, rows: list[dict]) -> None:
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def run(*args, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run([DALI_ABS, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError(f"dali-abs {' '.join(map(str, args))} exited {p.returncode}:\n{p.stderr}")
    return p


# --- a whole run and the reading API -------------------------------------------------------

def test_precompute_writes_a_cache_the_loader_can_read(tmp_path, tiny_dataset, tiny_models, capsys):
    seg, fill = tiny_models
    before = snapshot(tiny_dataset)
    ds = load_dataset(tiny_dataset)
    res = precompute(ds, seg, fill, tmp_path / "c", PrecomputeConfig(chunk_size=100, fill_threshold=0.5),
                     progress=False)
    assert res["complete"] and res["processed"] == 256 and res["skipped_now"] == 0
    assert set(res["stage_seconds"]) == {"decode", "segmenter", "inpainter", "encode", "write"}
    assert snapshot(tiny_dataset) == before  # the dataset is never written to

    cache = open_cache(tmp_path / "c")
    assert len(cache) == 256 and cache.ids == [s.id for s in ds.samples]
    assert cache.grid == 8 and cache.work_size == 64 and cache.masks.shape == (256, 8, 8)
    m = cache.manifest
    assert m["dataset"]["fingerprint"] == ds.fingerprint() and m["thresholds"]["fill"] == 0.5
    from dali_abs.segmenter.inference import read_thresholds

    recorded = read_thresholds(seg)  # the fill threshold given wins; tight stays the segmenter's choice
    assert cache.thresholds.loose == cache.fill_threshold == 0.5 and cache.thresholds.tight == recorded.tight
    assert cache.thresholds.loose_source == "given to precompute (--fill-threshold)"
    assert cache.thresholds.tight_source == recorded.tight_source and str(seg) in recorded.tight_source
    assert res["thresholds"] == m["thresholds"]
    assert len(m["models"]["segmenter"]["sha256"]) == 64 and m["counts"]["cached"] == 256
    assert m["bytes"]["ratio_to_source"] > 0
    assert [p.name for p in cache.fill_files()] == ["c00000.fills.bin", "c00001.fills.bin", "c00002.fills.bin"]

    partial = [i for i in range(len(cache)) if 0 < cache.loose(i).mean() < 1]
    assert len(partial) > 100, "the test needs images with partial loose masks"
    row = partial[0]
    sid = cache.ids[row]
    p = cache.mask(sid)
    assert p.dtype == np.float32 and 0 <= p.min() and p.max() <= 1
    assert (cache.tight(sid) <= cache.loose(sid)).all()  # the tight mask lies inside the loose one
    r0, c0, r1, c1 = cache.boxes[cache.position(sid)]
    rows, cols = np.nonzero(cache.loose(sid))
    assert (r0, c0, r1, c1) == (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
    assert cache.fill(sid).shape == ((r1 - r0) * 8, (c1 - c0) * 8, 3)

    from dali_abs.files import read_rgb

    src = read_rgb(ds.samples[row].path)
    bg = cache.background(sid)
    keep = ~np.kron(cache.loose(sid), np.ones((8, 8), bool))
    assert bg.shape == src.shape and keep.any() and (~keep).any() and (bg[keep] == src[keep]).all()
    assert np.abs(bg[~keep].astype(int) - src[~keep]).mean() > 1  # the object is filled over
    from dali_abs.inpainter.inference import Inpainter

    from dali_abs.cache.format import fill_hole

    hole = fill_hole(cache.loose(sid), 8, 64, src.shape[:2])[None]  # the tiny images are at the work size already
    want = Inpainter(fill).fill(src.transpose(2, 0, 1)[None] / np.float32(255), hole)[0].transpose(1, 2, 0) * 255
    assert np.abs(bg[~keep] - want[~keep]).mean() < 3  # the stored fill is the inpainter's, up to JPEG q90
    with pytest.raises(CacheError, match="not in the cache"):
        cache.mask("no-such-id")

    assert main(["cache", "info", str(tmp_path / "c"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["counts"]["cached"] == 256 and info["grid"] == 8 and info["skipped"] == []
    assert info["bytes"]["per_image"] > 0 and info["models"]["inpainter"]["fill"] == "pushpull"
    assert main(["cache", "verify", str(tmp_path / "c"), "--data", str(tiny_dataset), "--json"]) == 0
    v = json.loads(capsys.readouterr().out)
    assert v["ok"] and v["counts"]["fills_checked"] == m["counts"]["filled"]
    assert v["stale"] == {"changed": [], "added": [], "removed": []}
    assert main(["cache", "info", str(tmp_path / "c")]) == 0
    text = capsys.readouterr().out
    assert f"tight threshold {recorded.tight} (cut-out; the loader's default): segmenter {seg}" in text
    assert "fill threshold 0.5 (loose mask, filled): given to precompute (--fill-threshold)" in text


def test_the_fills_use_the_segmenters_loose_threshold_and_the_cache_records_both(tmp_path, tiny_dataset,
                                                                                 tiny_models, tiny_cache):
    from dali_abs.cache.format import manifest_thresholds, threshold_mask
    from dali_abs.models import segmenter as net
    from dali_abs.segmenter.inference import read_thresholds

    seg, fill = tiny_models
    recorded, cache = read_thresholds(seg), open_cache(tiny_cache)  # tiny_cache: PrecomputeConfig() defaults
    assert (cache.thresholds.tight, cache.thresholds.loose) == (recorded.tight, recorded.loose)
    assert cache.thresholds.loose_source == cache.thresholds.tight_source == recorded.tight_source
    for row in range(len(cache)):  # each fill box is the box of the cells above the recorded loose threshold
        rows, cols = np.nonzero(threshold_mask(cache.masks[row], recorded.loose))
        want = (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1) if len(rows) else (0, 0, 0, 0)
        assert tuple(cache.boxes[row]) == want
    assert (cache.tight(0) == threshold_mask(cache.masks[0], recorded.tight)).all()

    # a segmenter exported before thresholds were recorded: the library defaults, said so
    old = net.export_onnx(net.PatchCNN(8, 64, width=8), tmp_path / "old.onnx", 8, 64)
    assert read_thresholds(old) is None
    data = small_dataset(tiny_dataset, tmp_path / "small", 16)
    precompute(load_dataset(data), old, fill, tmp_path / "c", PrecomputeConfig(device="cpu"), progress=False)
    t = open_cache(tmp_path / "c").thresholds
    assert (t.tight, t.loose) == (0.5, 0.1) and f"segmenter {old} records no thresholds" in t.tight_source
    # a cache written before the tight threshold was recorded
    legacy = manifest_thresholds({"thresholds": {"fill": 0.1, "tight_default": 0.5}})
    assert (legacy.tight, legacy.loose) == (0.5, 0.1) and "records no tight threshold" in legacy.tight_source


# --- crash safety ----------------------------------------------------------------------------

def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_dataset, tiny_models):
    seg, fill = tiny_models
    args = ["precompute", tiny_dataset, "--segmenter", seg, "--inpainter", fill, "--chunk-size", "8", "--json"]
    run(*args, "--out", tmp_path / "ref")

    out = tmp_path / "killed"
    proc = subprocess.Popen([DALI_ABS, *map(str, args), "--out", str(out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((out / CHUNKS).glob("c*.json"))) < 3:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(list((out / CHUNKS).glob("c*.json")))
    assert 3 <= finished < 32 and not (out / MANIFEST).exists(), "the kill must land mid-run"
    with pytest.raises(CacheError, match="unfinished"):
        open_cache(out)

    res = json.loads(run(*args, "--out", out).stdout)
    assert res["complete"] and res["already_done"] >= 3 * 8 and res["processed"] + res["already_done"] == 256
    assert cache_files(out) == cache_files(tmp_path / "ref")  # byte-identical, no temp files left
    assert verify(out)["ok"]


# --- sharding --------------------------------------------------------------------------------

def test_two_processes_shard_the_work_and_merge(tmp_path, tiny_dataset, tiny_models):
    seg, fill = tiny_models
    out = tmp_path / "sharded"
    args = ["precompute", tiny_dataset, "--segmenter", seg, "--inpainter", fill, "--out", out,
            "--chunk-size", "32", "--json", "--no-merge"]
    p0 = subprocess.Popen([DALI_ABS, *map(str, args), "--shard", "0/2"], env=ENV, stdout=subprocess.PIPE, text=True)
    # the second process takes its shard from torchrun's variables
    p1 = subprocess.Popen([DALI_ABS, *map(str, args)], env={**ENV, "RANK": "1", "WORLD_SIZE": "2"},
                          stdout=subprocess.PIPE, text=True)
    r0, r1 = (json.loads(p.communicate(timeout=120)[0]) for p in (p0, p1))
    assert p0.returncode == p1.returncode == 0
    assert (r0["shard"], r1["shard"]) == ("0/2", "1/2") and r0["processed"] == r1["processed"] == 128
    assert not (out / MANIFEST).exists()
    merged = json.loads(run("cache", "merge", out, "--json").stdout)
    assert merged["counts"]["cached"] == 256

    cache = open_cache(out)
    ds = load_dataset(tiny_dataset)
    assert sorted(cache.ids) == sorted(s.id for s in ds.samples) and len(set(cache.ids)) == len(cache.ids) == 256
    assert verify(out, ds)["ok"]

    # the last shard to finish merges by itself; shards may also run in separate folders
    single = tmp_path / "single"
    precompute(ds, seg, fill, tmp_path / "part1", PrecomputeConfig(chunk_size=32), shard=(1, 2), progress=False)
    res = precompute(ds, seg, fill, single, PrecomputeConfig(chunk_size=32), shard=(0, 2), progress=False)
    assert not res["complete"]
    with pytest.raises(CacheError, match="not finished"):
        run_merge(single)
    assert main(["cache", "merge", str(single), str(tmp_path / "part1")]) == 0
    assert open_cache(single).ids == cache.ids


def run_merge(root):
    from dali_abs.cache.precompute import merge

    return merge(root)


def test_each_torchrun_process_takes_its_own_gpu():
    from dali_abs.devices import pin_local_gpu

    env = {"LOCAL_RANK": "3"}
    assert pin_local_gpu(env) == "3" and env["CUDA_VISIBLE_DEVICES"] == "3"
    env = {"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "4,5,6"}
    assert pin_local_gpu(env) == "5" and env["CUDA_VISIBLE_DEVICES"] == "5"
    env = {"LOCAL_RANK": "1", "CUDA_VISIBLE_DEVICES": "7"}
    assert pin_local_gpu(env) == "7" and env["CUDA_VISIBLE_DEVICES"] == "7"
    assert pin_local_gpu({}) is None


def test_parse_shard():
    assert parse_shard("2/5") == (2, 5)
    assert parse_shard(None, {"RANK": "3", "WORLD_SIZE": "4"}) == (3, 4)
    assert parse_shard(None, {}) == (0, 1)
    for bad in ("5/5", "1", "a/b", "0/0"):
        with pytest.raises(CacheError):
            parse_shard(bad)


# --- bad input -------------------------------------------------------------------------------

def _jpeg(arr, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def test_bad_inputs_are_processed_or_skipped_and_reported(tmp_path, tiny_models):
    seg, fill = tiny_models
    rng = np.random.default_rng(0)
    root = tmp_path / "folder"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            arr = np.full((70, 90, 3), 40 * i, np.uint8)
            arr[20:50, 30:60] = rng.integers(0, 255, (30, 30, 3))
            (root / c / f"good{i}.jpg").write_bytes(_jpeg(arr))
    img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    good = _jpeg(img)
    (root / "a" / "truncated.jpg").write_bytes(good[:len(good) // 2])
    (root / "a" / "text.jpg").write_text("this is not an image\n")
    corrupt = bytearray(good)
    corrupt[300:700] = b"\x00" * 400  # broken scan data, header and end marker intact
    (root / "a" / "corrupt.jpg").write_bytes(bytes(corrupt))
    Image.fromarray(img[:, :, 0]).save(root / "a" / "gray.jpg", quality=90)
    Image.fromarray(img).convert("CMYK").save(root / "b" / "cmyk.jpg", quality=90)
    Image.fromarray(np.dstack([img, np.full((64, 64), 128, np.uint8)])).save(root / "b" / "rgba.png")
    Image.fromarray((img[:, :, 1].astype(np.uint16) * 257)).save(root / "b" / "sixteen.png")
    Image.fromarray(img[:5, :5]).save(root / "b" / "tiny.png")
    Image.fromarray(img).convert("P").save(root / "b" / "palette.png")
    big = np.kron(img, np.ones((50, 40, 1), np.uint8))  # 3200 x 2560 px
    Image.fromarray(big).save(root / "b" / "big.jpg", quality=80)
    (root / "b" / "notes.txt").write_text("not an image extension\n")
    before = snapshot(root)

    out = tmp_path / "c"
    assert main(["precompute", str(root), "--segmenter", str(seg), "--inpainter", str(fill), "--out", str(out),
                 "--chunk-size", "8", "--batch-size", "2", "--json"]) == 0
    assert snapshot(root) == before
    cache = open_cache(out)
    m = cache.manifest
    # the source sizes (rows, columns) the loader plans with
    assert tuple(cache.sizes[cache.relpaths.index("a/good0.jpg")]) == (70, 90)
    assert tuple(cache.sizes[cache.relpaths.index("b/rgba.png")]) == (64, 64)
    skipped = {s["path"]: s["reason"] for s in m["skipped"]}
    assert set(skipped) >= {"a/truncated.jpg", "a/text.jpg", "b/tiny.png"}
    assert "truncated" in skipped["a/truncated.jpg"]
    assert "not a readable image" in skipped["a/text.jpg"]
    assert "too small" in skipped["b/tiny.png"]
    assert m["ignored"] == ["b/notes.txt"]
    cached = set(cache.relpaths)
    assert cached >= {"a/gray.jpg", "b/cmyk.jpg", "b/rgba.png", "b/sixteen.png", "b/palette.png", "b/big.jpg"} | \
        {f"{c}/good{i}.jpg" for c in "ab" for i in range(3)}
    assert cached | set(skipped) == {s.relpath for s in load_dataset(root).samples}  # none dropped silently
    assert len(cached & set(skipped)) == 0
    from dali_abs.cache.format import read_chunk_record

    decoder = {e["path"]: e["decoder"] for k in range(m["chunks"]) for e in read_chunk_record(out, k)["entries"]}
    # plain JPEG / PNG go to DALI (a corrupt one costs only its batch), odd modes to PIL
    assert decoder["a/good2.jpg"] == decoder["a/gray.jpg"] == decoder["b/big.jpg"] == "dali"
    assert decoder["b/cmyk.jpg"] == decoder["b/sixteen.png"] == decoder["b/rgba.png"] == "pil"
    for rel in ("b/cmyk.jpg", "b/sixteen.png", "b/big.jpg"):
        row = cache.relpaths.index(rel)
        assert cache.background(row).shape[:2] == Image.open(root / rel).size[::-1]
    assert verify(out, load_dataset(root))["ok"]

    # very large images beyond --max-pixels are skipped with the reason, not decoded
    out2 = tmp_path / "c2"
    assert main(["precompute", str(root), "--segmenter", str(seg), "--inpainter", str(fill), "--out", str(out2),
                 "--max-pixels", "1000000", "--json"]) == 0
    assert "too large" in {s["path"]: s["reason"] for s in open_cache(out2).manifest["skipped"]}["b/big.jpg"]


def test_a_model_that_breaks_its_contract_is_refused_before_any_work(tmp_path, tiny_dataset, tiny_models, capsys):
    seg, fill = tiny_models
    out = tmp_path / "c"
    assert main(["precompute", str(tiny_dataset), "--segmenter", str(fill), "--inpainter", str(fill),
                 "--out", str(out)]) == 2
    assert "segmenter" in capsys.readouterr().err and not out.exists()
    assert main(["precompute", str(tiny_dataset), "--segmenter", str(seg), "--inpainter", str(seg),
                 "--out", str(out)]) == 2
    assert "inpainter" in capsys.readouterr().err and not out.exists()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    assert main(["precompute", str(tiny_dataset), "--segmenter", str(bad), "--inpainter", str(fill),
                 "--out", str(out)]) == 2
    assert not out.exists()
    assert main(["precompute", str(tiny_dataset), "--segmenter", str(seg), "--inpainter", str(fill),
                 "--out", str(tiny_dataset / "cache")]) == 2  # never inside the dataset
    assert not (tiny_dataset / "cache").exists()


# --- verify: staleness and damage ------------------------------------------------------------

def test_verify_detects_changed_added_removed_images_and_damage(tmp_path, tiny_dataset, tiny_models, capsys):
    seg, fill = tiny_models
    data = small_dataset(tiny_dataset, tmp_path / "data", 40)
    out = tmp_path / "c"
    precompute(load_dataset(data), seg, fill, out, PrecomputeConfig(chunk_size=16), progress=False)
    assert verify(out, load_dataset(data))["ok"]

    with open(data / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    removed = rows.pop(3)
    added = dict(rows[0], img_id="new-image")
    rows.append(added)
    write_rows(data, rows)
    changed = rows[5]
    img = np.asarray(Image.open(data / changed["img_filename"]))
    Image.fromarray(255 - img).save(data / changed["img_filename"], quality=90)

    assert main(["cache", "verify", str(out), "--data", str(data), "--json"]) == 1
    v = json.loads(capsys.readouterr().out)
    assert not v["ok"] and not v["fingerprint_matches"] and v["problems"] == []
    assert [c["id"] for c in v["stale"]["changed"]] == [changed["img_id"]]
    assert v["stale"]["added"] == ["new-image"] and v["stale"]["removed"] == [removed["img_id"]]

    # a rerun of the same command refuses to mix a changed dataset into the old cache
    with pytest.raises(CacheError, match="dataset changed"):
        precompute(load_dataset(data), seg, fill, out, PrecomputeConfig(chunk_size=16), progress=False)

    tar = out / CHUNKS / "c00001.fills.bin"
    raw = bytearray(tar.read_bytes())
    raw[1000] ^= 0xFF
    tar.write_bytes(bytes(raw))
    (out / CHUNKS / "c00002.masks.npz").unlink()
    v = verify(out)
    assert not v["ok"]
    assert any("c00001.fills.bin: SHA-256 differs" in p for p in v["problems"])
    assert any("c00002.masks.npz: missing" in p for p in v["problems"])


# --- ground-truth masks instead of a segmenter --------------------------------------------------

def gt_masks_dataset(src: Path, tmp: Path, n: int = 40) -> tuple[Path, Path]:
    """(dataset, masks folder): the first ``n`` images of ``src`` and a copy of their masks."""
    data = small_dataset(src, tmp / "data", n)
    masks = tmp / "masks"
    masks.mkdir()
    for s in load_dataset(data).samples:
        shutil.copy2(src / "masks" / f"{Path(s.relpath).stem}.png", masks)
    return data, masks


def test_ground_truth_masks_give_the_patch_coverage_of_the_masks(tmp_path, tiny_dataset, tiny_models, capsys):
    from dali_abs.cache.format import quantize
    from dali_abs.cache.precompute import GroundTruthMasks
    from dali_abs.files import read_mask
    from dali_abs.labels import patch_coverage

    _, fill = tiny_models
    data, masks = gt_masks_dataset(tiny_dataset, tmp_path)
    ds = load_dataset(data)
    gone, broken = ds.samples[3], ds.samples[20]
    (masks / f"{Path(gone.relpath).stem}.png").unlink()  # no mask for this image
    (masks / f"{Path(broken.relpath).stem}.png").write_bytes(b"not a png")  # an unreadable one
    half, other = (masks / f"{Path(ds.samples[i].relpath).stem}.png" for i in (30, 31))
    Image.open(half).resize((32, 32), Image.NEAREST).save(half)  # half resolution: used at its own size
    Image.open(other).resize((64, 32), Image.NEAREST).save(other)  # another aspect ratio: not this image's mask
    before = snapshot(data)

    out = tmp_path / "c"
    res = precompute(ds, None, fill, out, PrecomputeConfig(chunk_size=16, device="cpu"), progress=False,
                     masks=GroundTruthMasks(masks, grid=8, input_size=64))
    assert res["complete"] and res["processed"] == 40 and res["skipped_now"] == 3
    assert set(res["stage_seconds"]) == {"decode", "masks", "inpainter", "encode", "write"}
    assert snapshot(data) == before

    cache = open_cache(out)
    m = cache.manifest
    assert cache.grid == 8 and cache.work_size == 64 and len(cache) == 37 and ds.samples[30].id in cache.ids
    assert "segmenter" not in m["models"] and len(m["models"]["masks"]["sha256"]) == 64
    assert m["models"]["masks"]["path"] == str(masks.resolve()) and m["models"]["masks"]["missing"] == 1
    # the soft value of a patch is its fraction of foreground pixels
    by_id = {s.id: s for s in ds.samples}
    for row, sid in enumerate(cache.ids):
        cov = patch_coverage(read_mask(masks / f"{Path(by_id[sid].relpath).stem}.png"), 8)
        assert (cache.masks[row] == quantize(cov)).all(), sid
        r0, c0, r1, c1 = cache.boxes[row]
        rows, cols = np.nonzero(cache.loose(row))
        assert (r0, c0, r1, c1) == (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
        assert cache.fill(row).shape == ((r1 - r0) * 8, (c1 - c0) * 8, 3)
    assert 0 < cache.masks.mean() < 255 and ((cache.masks > 0) & (cache.masks < 255)).any()  # soft, not binary

    # the images without a usable mask are skipped with the reason, none dropped silently
    skipped = {s["id"]: s["reason"] for s in m["skipped"]}
    assert set(skipped) == {gone.id, broken.id, ds.samples[31].id}
    assert "is 64x32 px but its image is 64x64 px" in skipped[ds.samples[31].id]
    assert "no ground-truth mask" in skipped[gone.id] and f"{Path(gone.relpath).stem}.png" in skipped[gone.id]
    assert "unreadable ground-truth mask" in skipped[broken.id] and "Replace it" in skipped[broken.id]
    assert set(cache.ids) | set(skipped) == {s.id for s in ds.samples}
    assert verify(out, ds)["ok"]
    assert main(["cache", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"skipped {gone.relpath}: no ground-truth mask" in text and "masks: " in text
    # ground-truth coverage is cut at fixed values, not chosen: 0.5 = mostly object, 0.1 = a tenth of it
    assert (cache.thresholds.tight, cache.thresholds.loose) == (0.5, 0.1)
    assert "tight threshold 0.5 (cut-out; the loader's default): ground-truth coverage: 0.5 = the patch is " \
           "mostly object" in text


def test_precompute_cli_takes_a_segmenter_or_masks_not_both(tmp_path, tiny_dataset, tiny_models, capsys):
    from dali_abs.cache.precompute import GroundTruthMasks

    seg, fill = tiny_models
    base = ["precompute", str(tiny_dataset), "--inpainter", str(fill), "--out", str(tmp_path / "c")]
    with pytest.raises(SystemExit) as e:
        main(base + ["--segmenter", str(seg), "--masks", str(tiny_dataset / "masks")])
    assert e.value.code == 2 and "argument --masks: not allowed with argument --segmenter" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(base)
    assert e.value.code == 2 and "one of the arguments --segmenter --masks is required" in capsys.readouterr().err
    assert main(base + ["--segmenter", str(seg), "--grid", "8"]) == 2
    assert "--grid go with --masks only" in capsys.readouterr().err
    assert main(base + ["--masks", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dali-abs: error: --masks") and "folder not found" in err
    assert main(base + ["--masks", str(tiny_dataset / "masks"), "--grid", "8", "--input-size", "60"]) == 2
    assert "--input-size 60 is not a multiple of --grid 8" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(base + ["--masks", str(empty), "--grid", "8"]) == 2  # a wrong folder, refused before any work
    assert "no mask file for any of the 256 images" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    with pytest.raises(CacheError, match="exactly one source"):
        precompute(load_dataset(tiny_dataset), seg, fill, tmp_path / "c", masks=tiny_dataset / "masks")
    # defaults follow `segmenter train`: 16 x 16 at 224 px, else 16 px per patch
    assert (GroundTruthMasks(empty).grid, GroundTruthMasks(empty).input_size) == (16, 224)
    assert GroundTruthMasks(empty, grid=8).input_size == 128


def test_resume_with_other_masks_or_a_segmenter_is_refused(tmp_path, tiny_dataset, tiny_models, capsys):
    seg, fill = tiny_models
    data, masks = gt_masks_dataset(tiny_dataset, tmp_path)
    out = tmp_path / "c"
    args = ["precompute", str(data), "--inpainter", str(fill), "--out", str(out), "--chunk-size", "16",
            "--device", "cpu", "--json"]
    gt = ["--masks", str(masks), "--grid", "8", "--input-size", "64"]
    assert main(args + gt) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["complete"] and first["processed"] == 40
    files = cache_files(out)
    assert main(args + gt) == 0  # the same command resumes: nothing left to do
    assert json.loads(capsys.readouterr().out)["already_done"] == 40 and cache_files(out) == files

    assert main(args + ["--segmenter", str(seg)]) == 2  # same grid and work size, other mask source
    err = capsys.readouterr().err
    assert "masks from the ground-truth masks" in err and "now from the segmenter" in err and "new --out" in err
    mask = min(masks.iterdir())
    Image.fromarray(255 - np.asarray(Image.open(mask))).save(mask)
    assert main(args + gt) == 2
    assert "ground-truth mask files (added, removed or changed)" in capsys.readouterr().err
    assert cache_files(out) == files  # refused before anything was written


def test_a_decompression_bomb_is_skipped_with_the_limit_every_reader_uses(tmp_path, tiny_models, bomb_png):
    seg, fill = tiny_models
    root = tmp_path / "d"
    rng = np.random.default_rng(1)
    for cls in "ab":
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    bomb_png(root / "a" / "bomb.png")
    out = tmp_path / "c"
    assert main(["precompute", str(root), "--segmenter", str(seg), "--inpainter", str(fill), "--out", str(out),
                 "--json"]) == 0
    reason = {s["path"]: s["reason"] for s in open_cache(out).manifest["skipped"]}["a/bomb.png"]
    assert reason.startswith("too large: 20000x20000 = 400,000,000 px, over the 100,000,000-px limit"), reason
    assert len(open_cache(out)) == 4


def test_allow_outside_travels_from_precompute_to_the_loader(tmp_path, tiny_models):
    from dali_abs.loader.iterator import create_loader

    seg, fill = tiny_models
    store = tmp_path / "store"
    root = tmp_path / "d"
    rng = np.random.default_rng(2)
    for cls in "ab":
        (store / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(store / cls / f"{i}.png")
        (root / "train").mkdir(parents=True, exist_ok=True)
        (root / "train" / cls).symlink_to(store / cls, target_is_directory=True)  # a folder of links
    args = ["precompute", str(root), "--segmenter", str(seg), "--inpainter", str(fill), "--out", str(tmp_path / "c"),
            "--json"]
    assert main(args) == 2  # refused without the opt-in
    assert main(args + ["--allow-outside"]) == 0
    batch = next(iter(create_loader(tmp_path / "c", batch_size=4, size=32, device="cpu")))[0]
    assert sorted(batch["labels"].view(-1).tolist()) == [0, 0, 1, 1]


# --- model outputs: checked at open and for every chunk -----------------------------------------

def _dark_folder(root: Path, bright: str | None = None) -> Path:
    """8 dark 64 px JPEGs (values <= 200, two classes); ``bright``: the one file given a white square."""
    rng = np.random.default_rng(5)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            arr = rng.integers(20, 200, (64, 64, 3), dtype=np.uint8)
            if f"{c}/{i}.jpg" == bright:
                arr[16:48, 16:48] = 255
            (root / c / f"{i}.jpg").write_bytes(_jpeg(arr))
    return root


@pytest.mark.parametrize("broken", ["seg_logits", "inp_nan"])
def test_precompute_refuses_a_model_that_fails_its_probe_before_writing(tmp_path, tiny_models, graph_models,
                                                                        capsys, broken):
    seg, fill = tiny_models
    seg, fill = (graph_models[broken], fill) if broken.startswith("seg") else (seg, graph_models[broken])
    out = tmp_path / "c"
    assert main(["precompute", str(_dark_folder(tmp_path / "d")), "--segmenter", str(seg), "--inpainter", str(fill),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{broken}.onnx: on a probe batch" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("broken", ["seg_nan_when_bright", "inp_nan_when_bright"])
def test_precompute_fails_on_the_chunk_whose_model_output_is_nan_naming_it(tmp_path, tiny_models, graph_models,
                                                                          capsys, broken):
    seg, fill = tiny_models
    seg, fill = (graph_models[broken], fill) if broken.startswith("seg") else (seg, graph_models[broken])
    out = tmp_path / "c"
    data = _dark_folder(tmp_path / "d", bright="b/2.jpg")
    assert main(["precompute", str(data), "--segmenter", str(seg), "--inpainter", str(fill), "--out", str(out),
                 "--chunk-size", "4", "--batch-size", "2"]) == 2
    err = capsys.readouterr().err
    assert "chunk 1 (c00001)" in err and f"{broken}.onnx output NaN" in err and "b/2.jpg" in err
    assert (out / CHUNKS / "c00000.json").is_file()  # the chunk before is kept
    assert not (out / CHUNKS / "c00001.json").exists() and not (out / CHUNKS / "c00001.fills.bin").exists()
    assert not (out / MANIFEST).exists()


def test_verify_notices_a_cache_of_black_fills(tmp_path, tiny_models, graph_models, capsys):
    """What an inpainter that output NaN left before the checks: black fills (NaN cast to uint8)."""
    seg, fill = tiny_models
    data = _dark_folder(tmp_path / "d")
    good, black = tmp_path / "good", tmp_path / "black"
    for out, inp in ((good, fill), (black, graph_models["inp_black"])):
        precompute(load_dataset(data), seg, inp, out, PrecomputeConfig(chunk_size=4), progress=False)
    assert verify(good)["ok"] and verify(good)["counts"]["black_fills"] == 0
    v = verify(black)
    assert not v["ok"] and v["counts"]["black_fills"] == v["counts"]["fills_checked"] > 0
    assert any("fills are black" in p and "NaN" in p for p in v["problems"])


# --- caches of format version 1 --------------------------------------------------------------

def test_a_version_1_cache_reads_verifies_merges_and_loads_as_before(tmp_path, tiny_cache, tiny_dataset, capsys):
    """Version 1 stored whole fill JPEGs and one JSON object per image; version 2 the fills without
    their shared parts and columns. The same contents in either layout: the same arrays, fill bytes
    and loader batches."""
    import torch
    from cache_v1 import write_v1

    from dali_abs.cache.format import read_chunk_record
    from dali_abs.loader.iterator import create_loader

    old = write_v1(tiny_cache, tmp_path / "v1")
    rec = json.loads((old / CHUNKS / "c00000.json").read_text())
    assert rec["format_version"] == 1 and "entries" in rec and "images" not in rec
    assert json.loads((old / MANIFEST).read_text())["format_version"] == 1
    assert np.load(old / CHUNKS / "c00000.masks.npz").files == ["masks"]
    a, b = open_cache(old), open_cache(tiny_cache)
    assert a.manifest["format_version"] == 1 and b.manifest["format_version"] == 2
    for key in ("ids", "relpaths"):
        assert getattr(a, key) == getattr(b, key)
    for key in ("indices", "labels", "masks", "boxes", "sizes"):
        assert np.array_equal(getattr(a, key), getattr(b, key)), key
    assert all(a.fill_bytes(i) == b.fill_bytes(i) for i in range(len(b)))
    assert (old / CHUNKS / "c00000.fills.bin").stat().st_size > (tiny_cache / CHUNKS / "c00000.fills.bin").stat().st_size
    def rows(root):  # the per-image records but the fill spans (version 2 stores fewer bytes)
        return [{**e, "fill": e["fill"] is not None} for e in read_chunk_record(root, 1)["entries"]]

    assert rows(old) == rows(tiny_cache)
    v = verify(old, load_dataset(tiny_dataset))
    assert v["ok"] and v["counts"]["fills_checked"] == a.manifest["counts"]["filled"]
    assert main(["cache", "info", str(old), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format_version"] == 1
    kw = dict(batch_size=32, size=48, device="cpu", seed=3)
    for x, y in zip(create_loader(old, **kw), create_loader(tiny_cache, **kw)):
        assert torch.equal(x[0]["images"], y[0]["images"]) and torch.equal(x[0]["labels"], y[0]["labels"])
    # merge rewrites a version 1 manifest from its records
    (old / MANIFEST).unlink()
    assert main(["cache", "merge", str(old)]) == 0
    assert open_cache(old).manifest["format_version"] == 1 and verify(old)["ok"]


# --- what a chunk stores -------------------------------------------------------------------

def test_far_placeholder_units_are_flat_and_the_kept_pixels_decode_as_before():
    from dali_abs.cache.format import (JPEG_MCU, _flatten_far_blocks, _grow, _smooth_extension, decode_image,
                                       encode_fill, placeholder_mask)

    rng = np.random.default_rng(3)
    cells = np.zeros((7, 9), bool)
    cells[1:4, 1:3] = cells[5, 6:9] = True  # two loose regions in a 7 x 9 cell box
    tile_hw = (7 * 14, 9 * 14)
    keep = ~placeholder_mask(tile_hw, cells)
    yy, xx = np.mgrid[0:tile_hw[0], 0:tile_hw[1]]
    fill = np.stack([(yy * 2 + xx) % 256, (xx * 3) % 256, rng.integers(0, 256, tile_hw)], -1).astype(np.uint8)
    smooth = _smooth_extension(fill, keep)
    flat = _flatten_far_blocks(smooth, keep)
    changed = (flat != smooth).any(-1)
    assert changed.any() and not (changed & _grow(keep, 2)).any()  # only units 2 px or more from kept pixels
    for y in range(0, tile_hw[0], JPEG_MCU):  # whole coding units, one colour
        for x in range(0, tile_hw[1], JPEG_MCU):
            unit = changed[y:y + JPEG_MCU, x:x + JPEG_MCU]
            assert not unit.any() or (flat[y:y + JPEG_MCU, x:x + JPEG_MCU] == flat[y, x]).all()
    assert np.abs(flat.reshape(-1, 3).mean(0) - smooth.reshape(-1, 3).mean(0)).max() <= 0.5
    a, b = decode_image(encode_fill(smooth, 90)), decode_image(encode_fill(flat, 90))
    read = _grow(keep, 1)  # what the loader's bilinear reads of the loose cells can touch
    assert np.array_equal(a[read], b[read])
    assert len(encode_fill(flat, 90)) < len(encode_fill(smooth, 90))


def test_masks_are_stored_as_is_or_as_deltas_whichever_is_smaller(tmp_path):
    from dali_abs.cache.format import encode_masks, read_masks

    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:16, 0:16]
    smooth = np.stack([np.clip(255 / (1 + np.exp(-(6 - np.hypot(yy - cy, xx - cx)) * 0.8)), 0, 255)
                       for cy, cx in rng.uniform(4, 12, (64, 2))]).round().astype(np.uint8)  # a segmenter's
    binary = (smooth > 127).astype(np.uint8) * 255  # ground-truth coverage, mostly 0 and 255
    for masks, stored in ((smooth, "masks_delta"), (binary, "masks")):
        path = tmp_path / f"{stored}.masks.npz"
        path.write_bytes(encode_masks(masks))
        assert np.load(path).files == [stored] and np.array_equal(read_masks(path), masks)
        assert encode_masks(masks) == path.read_bytes()  # deterministic
    assert np.array_equal(np.load(tmp_path / "masks.masks.npz")["masks"], binary)


def test_a_record_whose_columns_are_not_a_table_is_a_damaged_record(tmp_path):
    from dali_abs.cache.format import FORMAT, read_chunk_record

    (tmp_path / CHUNKS).mkdir()
    path = tmp_path / CHUNKS / "c00000.json"
    path.write_text(json.dumps({"format": FORMAT, "format_version": 2, "chunk": 0,
                                "images": {"n": 2, "columns": []}}))
    with pytest.raises(CacheError, match=rf"{path}: damaged chunk record \(AttributeError: .*delete it and rerun"):
        read_chunk_record(tmp_path, 0)


def test_fill_sizes_that_do_not_add_up_to_the_fills_file_are_refused_without_the_hashes(tmp_path, tiny_cache):
    from dali_abs.cache.columns import decode_columns, encode_columns

    cache = tmp_path / "c"
    shutil.copytree(tiny_cache, cache)
    path = cache / CHUNKS / "c00001.json"
    rec = json.loads(path.read_text())
    rows = decode_columns(rec["images"])
    next(r for r in rows if r["fill"])["fill"] += 7  # the fills file no longer ends where its record says
    path.write_text(json.dumps({**rec, "images": encode_columns(rows)}, separators=(",", ":")) + "\n")
    want = rf"{path}: its fill sizes add up to {rec['fills_bytes'] + 7} B, its fills_bytes says {rec['fills_bytes']} "
    with pytest.raises(CacheError, match=rf"{want}.*delete {path} and rerun"):
        open_cache(cache, hashes=False)
    assert any(p.startswith(f"{path}: its fill sizes") for p in verify(cache, decode=False)["problems"])


def test_resuming_a_format_1_folder_says_which_format_wrote_it(tmp_path, tiny_cache, tiny_dataset, tiny_models):
    from cache_v1 import write_v1

    old = write_v1(tiny_cache, tmp_path / "v1")
    (old / MANIFEST).unlink()  # a run this version would otherwise finish
    with pytest.raises(CacheError, match=rf"^{old}: written by cache format 1; this version writes format 2: "
                                         rf"use a new --out or delete {old}$"):
        precompute(load_dataset(tiny_dataset), *tiny_models, old, PrecomputeConfig(chunk_size=64, device="cpu"),
                   progress=False)
