"""The ``dali-abs`` console script, run as a user runs it: a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXE = Path(sys.executable).with_name("dali-abs")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)


@pytest.mark.parametrize("cmd", [[], ["make-dataset"], ["data", "check"], ["labels", "import-reference"],
                                 ["labels", "from-masks"], ["label"], ["segmenter"], ["inpainter"],
                                 ["precompute"], ["cache"], ["demo"], ["audit"]])
def test_every_subcommand_has_help(cmd):
    r = run(*cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert "usage: dali-abs" in r.stdout


def test_make_dataset_json(tmp_path):
    r = run("make-dataset", str(tmp_path / "d"), "--size", "32", "--train", "8", "--val", "4", "--test", "4",
            "--rho", "0.5", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["rho"] == 0.5 and out["train"] == 8 and (tmp_path / "d" / "metadata.csv").is_file()


def test_data_check_writes_report_outside_the_dataset(tmp_path, tiny_dataset):
    report = tmp_path / "report.json"
    r = run("data", "check", str(tiny_dataset), "--report", str(report), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["checked"] == 256 and out["problems"] == [] and json.loads(report.read_text())["ok"] == 256


def test_data_check_exit_status_and_message_for_a_broken_image(tmp_path):
    root = tmp_path / "ds" / "cls"
    root.mkdir(parents=True)
    (root / "bad.jpg").write_bytes(b"garbage")
    r = run("data", "check", str(tmp_path / "ds"), "--report", str(tmp_path / "r.json"))
    assert r.returncode == 1
    assert "cls/bad.jpg: cannot decode" in r.stdout and "report written to" in r.stdout


def test_errors_are_one_line_without_traceback(tmp_path):
    r = run("labels", "from-masks", str(tmp_path / "missing"), "--masks", "m", "--out", "l.csv")
    assert r.returncode == 2
    assert r.stderr.startswith("dali-abs: error:") and "dataset folder not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_labels_commands(tmp_path, tiny_dataset):
    out = tmp_path / "labels.csv"
    r = run("labels", "from-masks", str(tiny_dataset), "--masks", str(tiny_dataset / "masks"), "--out", str(out),
            "--grid", "8", "--count", "12", "--majority-only", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["images"] == 12 and len(out.read_text().splitlines()) == 13

    ref = tmp_path / "masks.csv"
    ref.write_text("info,mask\n0," + "01" * 128 + "\n")
    r = run("labels", "import-reference", str(ref), "--out", str(tmp_path / "imported.csv"), "--data", str(tiny_dataset))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "imported.csv").read_text().splitlines()[1] == "0,16," + "01" * 128


def _copy_dataset(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_a_decompression_bomb_is_a_problem_in_the_report_not_a_traceback(tmp_path, tiny_dataset, bomb_png):
    data = _copy_dataset(tiny_dataset, tmp_path / "d")
    bomb_png(data / "images" / "bomb.png")
    with open(data / "metadata.csv", "a") as f:
        f.write("bomb,images/bomb.png,0,0,0,,\n")
    report = tmp_path / "r.json"
    r = run("data", "check", str(data), "--report", str(report))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "images/bomb.png: too large: 20000x20000 = 400,000,000 px" in r.stdout
    problems = json.loads(report.read_text())["problems"]
    assert [p["path"] for p in problems] == ["images/bomb.png"] and problems[0]["reason"].startswith("too large")
    # The same limit, lowered, reports the ordinary images too.
    r = run("data", "check", str(data), "--report", str(report), "--max-pixels", "100", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["ok"] == 0


def test_a_decompression_bomb_mask_is_a_one_line_error(tmp_path, tiny_dataset, bomb_png):
    masks = tmp_path / "masks"
    import shutil

    shutil.copytree(tiny_dataset / "masks", masks)
    from dali_abs.dataset import load_dataset

    first = load_dataset(tiny_dataset).split("train")[0].id
    bomb_png(masks / f"{first}.png")  # <img_id>.png is the first name looked for
    r = run("labels", "from-masks", str(tiny_dataset), "--masks", str(masks), "--out", str(tmp_path / "l.csv"),
            "--grid", "8", "--json")  # --json: no progress bar on stderr
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("dali-abs: error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"{first}.png: too large: 20000x20000" in r.stderr
    assert not (tmp_path / "l.csv").exists()


def test_every_command_refuses_an_image_path_outside_the_dataset(tmp_path):
    from PIL import Image

    from dali_abs.cli import main

    data = tmp_path / "d"
    (data / "imgs").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (32, 32)).save(data / "imgs" / name)
    Image.new("RGB", (32, 32)).save(tmp_path / "secret.png")
    (data / "metadata.csv").write_text("img_id,img_filename,y,split\na,imgs/a.png,0,0\nb,imgs/b.png,1,0\n"
                                       "s,../secret.png,0,0\n")
    out = tmp_path / "out"
    for cmd in (["data", "check", str(data), "--report", str(out / "r.json")],
                ["label", str(data), "--out", str(out / "l.csv"), "--port", "0"],
                ["precompute", str(data), "--segmenter", "seg.onnx", "--inpainter", "fill.onnx", "--out", str(out)]):
        r = run(*cmd)
        assert r.returncode == 2, (cmd, r.stderr)
        assert r.stderr.strip() == (f"dali-abs: error: {data / 'metadata.csv'} row 4 (img_id=s): path '../secret.png' "
                                    f"leads out of the dataset folder {data}. Images must lie inside the dataset "
                                    "folder; pass --allow-outside (allow_outside=True) if the dataset really links "
                                    "to images elsewhere"), r.stderr
    assert not out.exists()
    r = run("data", "check", str(data), "--report", str(out / "r.json"), "--allow-outside", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["checked"] == 3


def test_a_port_out_of_range_is_a_one_line_error(tmp_path, tiny_dataset):
    r = run("label", str(tiny_dataset), "--out", str(tmp_path / "l.csv"), "--grid", "8", "--port", "99999")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith("--port 99999 is not a port number: use 1..65535, or 0 for "
                                                      "any free port")
    assert not (tmp_path / "l.csv").exists()


def test_a_manifest_without_grid_is_a_one_line_error(tmp_path, tiny_cache):
    import shutil

    from dali_abs.cache.format import CacheError, open_cache

    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    del manifest["grid"]
    (cache / "manifest.json").write_text(json.dumps(manifest))
    want = (f"{cache / 'manifest.json'}: damaged cache manifest: 'grid' is missing. Rewrite it from the chunk "
            f"records with `dali-abs cache merge {cache}`, or rebuild the cache")
    r = run("cache", "info", str(cache))
    assert r.returncode == 2 and r.stderr.strip() == f"dali-abs: error: {want}", r.stderr
    r = run("cache", "verify", str(cache), "--no-decode")  # a problem found: exit status 1, listed
    assert r.returncode == 1 and "Traceback" not in r.stderr and f"  {want}" in r.stdout.splitlines(), r.stdout
    with pytest.raises(CacheError) as e:
        open_cache(cache)
    assert str(e.value) == want
    assert run("cache", "merge", str(cache)).returncode == 0  # the fix the message names
    assert open_cache(cache).grid == 8


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_no_command_writes_into_the_dataset(tmp_path):
    from dali_abs.synthetic import SyntheticConfig, make_dataset

    data = make_dataset(tmp_path / "d", SyntheticConfig(classes=2, size=32, train=8, val=4, test=4, seed=1),
                        progress=False)
    (tmp_path / "masks.csv").write_text("info,mask\n0," + "01" * 128 + "\n")
    before = _tree(data)
    d = str(data)
    cmds = [
        ["data", "check", d, "--report", f"{d}/r.json"],
        ["data", "check", d],  # the default report, ./data-check-report.json, run from inside DATA
        ["data", "check", d, "--report", "sub/../r.json"],  # run from inside DATA
        ["labels", "from-masks", d, "--masks", f"{d}/masks", "--out", f"{d}/labels.csv", "--grid", "4"],
        ["labels", "import-reference", str(tmp_path / "masks.csv"), "--data", d, "--out", f"{d}/labels.csv"],
        ["label", d, "--out", f"{d}/labels.csv", "--port", "0"],
        ["label", d, "--out", str(tmp_path / "labels.csv"), "--retrain-out", f"{d}/seg.onnx", "--port", "0"],
        ["segmenter", "train", d, "--labels", str(tmp_path / "labels.csv"), "--out", f"{d}/images/seg.onnx"],
    ]
    for cmd in cmds:
        try:
            r = subprocess.run([str(EXE), *cmd], capture_output=True, text=True, cwd=data, timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{cmd} ran (a server started?) instead of refusing") from None
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        line = r.stderr.strip().splitlines()[-1]
        assert line.startswith("dali-abs: error: --") and f"is inside the dataset folder {data}" in line, (cmd, line)
        assert "Traceback" not in r.stderr
    assert _tree(data) == before
    assert not (tmp_path / "labels.csv").exists()


def test_dataset_warnings_are_one_line_on_stderr_and_in_the_report(tmp_path):
    from PIL import Image

    data = tmp_path / "d"
    data.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32)).save(data / f"{i}.png")
    (data / "metadata.csv").write_text("img_id,img_filename,y,split\n0,0.png,1,0\n1,1.png,2,0\n2,2.png,1,0\n")
    report = tmp_path / "r.json"
    r = subprocess.run([str(EXE), "data", "check", str(data), "--report", str(report), "--json"], capture_output=True,
                       text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "warning" in ln]
    assert len(lines) == 1 and lines[0].startswith("dali-abs: warning: ") and "Numbered from 1?" in lines[0], r.stderr
    assert json.loads(report.read_text())["warnings"] == [lines[0].removeprefix("dali-abs: warning: ")]
