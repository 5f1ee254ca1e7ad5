"""The built-in benchmark: layout, exact correlation, balanced eval splits, determinism."""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from dali_abs.dataset import load_dataset
from dali_abs.errors import DaliAbsError
from dali_abs.synthetic import SyntheticConfig, make_dataset, plan


def test_layout_and_manifest(tiny_dataset, tiny_config):
    ds = load_dataset(tiny_dataset)
    assert ds.layout == "metadata" and ds.n_classes == 2 and ds.n_places == 2
    assert ds.split_counts() == {"train": 160, "val": 32, "test": 64}
    s = ds.samples[0]
    img = np.asarray(Image.open(s.path))
    mask = np.asarray(Image.open(tiny_dataset / s.extra["mask_filename"]))
    bg = np.asarray(Image.open(tiny_dataset / s.extra["background_filename"]))
    assert img.shape == bg.shape == (64, 64, 3) and mask.shape == (64, 64)
    assert set(np.unique(mask)) <= {0, 255} and 0.03 < (mask > 127).mean() < 0.5
    # Outside the object the image is the clean background (up to JPEG error).
    outside = mask < 128
    assert np.abs(img[outside].astype(int) - bg[outside].astype(int)).mean() < 6


def test_rho_one_never_breaks_the_correlation_and_eval_splits_are_balanced(tiny_dataset):
    ds = load_dataset(tiny_dataset)
    assert all(s.label == s.place for s in ds.split("train"))
    for split in ("val", "test"):
        counts = Counter(ds.group(s) for s in ds.split(split))
        assert len(counts) == 4 and len(set(counts.values())) == 1


def test_rho_sets_the_exact_number_of_conflicting_samples():
    rows = plan(SyntheticConfig(classes=3, train=300, val=9, test=9, rho=0.9))
    train = [(y, p) for split, y, p in rows if split == "train"]
    assert sum(y != p for y, p in train) == 30
    assert Counter(y for y, _ in train) == {0: 100, 1: 100, 2: 100}


def test_deterministic_for_a_seed(tmp_path):
    cfg = SyntheticConfig(size=32, train=4, val=4, test=4, seed=11)

    def digest(root):
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())).hexdigest()

    a = digest(make_dataset(tmp_path / "a", cfg, progress=False))
    assert a == digest(make_dataset(tmp_path / "b", cfg, progress=False))
    assert a != digest(make_dataset(tmp_path / "c", replace(cfg, seed=12), progress=False))


@pytest.mark.parametrize("change, pattern", [
    ({"classes": 9}, "classes must be 2..8, got 9"),
    ({"rho": 1.5}, r"rho must be in \[0, 1\], got 1.5"),
    ({"val": 3}, "val=3 is fewer than the 4 groups"),
    ({"size": 8}, "size must be at least 32 px, got 8"),
])
def test_bad_settings(tmp_path, change, pattern):
    with pytest.raises(DaliAbsError, match=pattern):
        make_dataset(tmp_path / "x", replace(SyntheticConfig(), **change), progress=False)


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(DaliAbsError, match="folder is not empty"):
        make_dataset(tmp_path, SyntheticConfig(size=32, train=4, val=4, test=4), progress=False)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_more_classes(tmp_path):
    out = make_dataset(tmp_path / "k4", SyntheticConfig(classes=4, size=32, train=8, val=16, test=16), progress=False)
    ds = load_dataset(out)
    assert ds.n_classes == 4 and ds.n_groups == 16
    with open(out / "metadata.csv") as f:
        assert {r["img_filename"].split("/")[1] for r in csv.DictReader(f)} == {"disk", "cross", "triangle", "square"}
