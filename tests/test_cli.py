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
                                 ["precompute"], ["cache"], ["demo"]])
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
