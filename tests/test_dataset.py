"""Manifests: both layouts, column remapping, and every error path naming the problem."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dali_abs.dataset import Columns, check_images, load_dataset
from dali_abs.errors import DatasetError


def _img(path: Path, size=(20, 16), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128 if mode in ("L", "I;16") else (10, 200, 30)).save(path)
    return path


def _metadata(root: Path, rows, header=("img_id", "img_filename", "y", "split", "place")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return root


@pytest.fixture
def wb(tmp_path) -> Path:
    """A 6-image Waterbirds-layout dataset."""
    root = tmp_path / "wb"
    rows = []
    for i in range(6):
        _img(root / "imgs" / f"{i}.jpg")
        rows.append((i, f"imgs/{i}.jpg", i % 2, i // 2, (i // 2) % 2))
    return _metadata(root, rows)


def test_waterbirds_layout_reads_splits_groups_and_extra_columns(tmp_path):
    root = tmp_path / "d"
    rows = []
    for i in range(8):
        _img(root / f"{i}.jpg")
        rows.append((f"id{i}", f"{i}.jpg", i % 2, i % 3, i // 4, "x"))
    _metadata(root, rows, ("img_id", "img_filename", "y", "split", "place", "note"))
    ds = load_dataset(root)
    assert ds.layout == "metadata" and ds.n_classes == 2 and ds.n_places == 2 and ds.n_groups == 4
    assert ds.split_counts() == {"train": 3, "val": 3, "test": 2}
    s = ds.by_id()["id5"]
    assert (s.label, s.split, s.place, ds.group(s)) == (1, "test", 1, 3)
    assert s.extra == {"note": "x"} and s.path == (root / "5.jpg").resolve()


def test_split_names_and_float_integers_are_accepted(tmp_path):
    root = tmp_path / "d"
    _img(root / "a.jpg"), _img(root / "b.jpg")
    _metadata(root, [("a", "a.jpg", "1.0", "train", 0), ("b", "b.jpg", 0, "test", "1")])
    ds = load_dataset(root)
    assert [s.split for s in ds.samples] == ["train", "test"] and ds.samples[0].label == 1


def test_column_remapping(tmp_path):
    root = tmp_path / "d"
    _img(root / "a.jpg")
    _metadata(root, [("a", "a.jpg", 0, 0)], ("id", "file", "label", "fold"))
    with pytest.raises(DatasetError, match="missing column.*img_id.*--col-id"):
        load_dataset(root)
    ds = load_dataset(root, Columns(id="id", filename="file", label="label", split="fold"))
    assert ds.samples[0].id == "a" and not ds.has_groups


@pytest.mark.parametrize("row, pattern", [
    (("9", "imgs/missing.jpg", 0, 0, 0), r"row 8 \(img_id=9\): image file 'imgs/missing.jpg' not found"),
    (("9", "imgs/0.jpg", 0, 5, 0), r"row 8 \(img_id=9\): unknown split value '5'"),
    (("9", "imgs/0.jpg", "bird", 0, 0), r"row 8 \(img_id=9\): y must be an integer, got 'bird'"),
    (("9", "imgs/0.jpg", 0, 0, "0.5"), r"row 8 \(img_id=9\): place must be an integer, got '0.5'"),
    (("3", "imgs/0.jpg", 0, 0, 0), r"row 8: duplicate img_id '3' \(first seen in row 5\)"),
])
def test_manifest_errors_name_the_row(wb, row, pattern):
    with open(wb / "metadata.csv", "a", newline="") as f:
        csv.writer(f).writerow(row)
    with pytest.raises(DatasetError, match=pattern):
        load_dataset(wb)


def test_empty_train_split_and_empty_requested_split(tmp_path):
    root = tmp_path / "d"
    _img(root / "a.jpg")
    _metadata(root, [("a", "a.jpg", 0, 2, 0)])
    with pytest.raises(DatasetError, match=r"split 'train' has no images \(splits found: test=1\)"):
        load_dataset(root)
    _metadata(root, [("a", "a.jpg", 0, 0, 0)])
    with pytest.raises(DatasetError, match="split 'val' has no images"):
        load_dataset(root).split("val")


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no metadata.csv and no class folders"):
        load_dataset(tmp_path / "empty")


def test_imagefolder_flat_and_with_splits(tmp_path):
    flat = tmp_path / "flat"
    _img(flat / "cat" / "1.jpg"), _img(flat / "dog" / "2.png"), _img(flat / "dog" / "sub" / "3.jpg")
    (flat / "dog" / "notes.txt").write_text("not an image")
    ds = load_dataset(flat)
    assert ds.layout == "imagefolder" and ds.classes == ["cat", "dog"] and not ds.has_groups
    assert [(s.id, s.label, s.split) for s in ds.samples] == [
        ("cat/1.jpg", 0, "train"), ("dog/2.png", 1, "train"), ("dog/sub/3.jpg", 1, "train")]
    assert ds.ignored == ["dog/notes.txt"]

    split = tmp_path / "split"
    _img(split / "train" / "a" / "1.jpg"), _img(split / "train" / "b" / "2.jpg"), _img(split / "val" / "b" / "3.jpg")
    ds = load_dataset(split)
    assert ds.split_counts() == {"train": 2, "val": 1} and ds.by_id()["val/b/3.jpg"].label == 1


def test_imagefolder_without_train_folder_is_an_error(tmp_path):
    _img(tmp_path / "d" / "val" / "a" / "1.jpg")
    with pytest.raises(DatasetError, match="no train/ folder"):
        load_dataset(tmp_path / "d")


def test_check_images_reports_unreadable_and_small_files_without_stopping(wb):
    (wb / "imgs" / "1.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    _img(wb / "imgs" / "2.jpg", size=(4, 4))
    _img(wb / "imgs" / "3.jpg", mode="L")
    before = sorted(p.name for p in wb.rglob("*"))
    report = check_images(load_dataset(wb), min_size=8, progress=False)
    assert report["checked"] == 6 and report["ok"] == 4
    reasons = {p["path"]: p["reason"] for p in report["problems"]}
    assert reasons["imgs/1.jpg"].startswith("cannot decode")
    assert reasons["imgs/2.jpg"] == "too small: 4x4, need at least 8 px per side"
    assert report["modes"] == {"RGB": 4, "L": 1}
    assert sorted(p.name for p in wb.rglob("*")) == before  # nothing written into the dataset


def test_majority_groups_follow_train_counts(tiny_dataset):
    ds = load_dataset(tiny_dataset)
    assert ds.majority_groups() == {0, 3}  # class 0 on place 0, class 1 on place 1


def test_fingerprint_changes_when_an_image_changes(tmp_path, wb):
    copy = tmp_path / "copy"
    shutil.copytree(wb, copy)
    fp = load_dataset(copy).fingerprint()
    assert load_dataset(copy).fingerprint() == fp
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(copy / "imgs" / "0.jpg")
    assert load_dataset(copy).fingerprint() != fp


# ---------------------------------------------------------------------------- bad input (issue 14)
@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "symlinked-folder"])
def test_image_paths_that_leave_the_dataset_are_refused_naming_the_row(tmp_path, wb, kind):
    outside = _img(tmp_path / "outside.png")
    rel = {"dotdot": "../outside.png", "absolute": str(outside), "symlink": "imgs/link.png",
           "symlinked-folder": "linked/outside.png"}[kind]
    if kind == "symlink":
        (wb / "imgs" / "link.png").symlink_to(outside)
    if kind == "symlinked-folder":
        (wb / "linked").symlink_to(tmp_path, target_is_directory=True)
    with open(wb / "metadata.csv", "a", newline="") as f:
        csv.writer(f).writerow(("9", rel, 0, 0, 0))
    how = {"dotdot": "leads out of", "absolute": "is absolute", "symlink": "resolves through a symbolic link to",
           "symlinked-folder": "resolves through a symbolic link to"}[kind]
    pattern = rf"metadata.csv row 8 \(img_id=9\): path '{re.escape(rel)}' {how}.*--allow-outside"
    with pytest.raises(DatasetError, match=pattern):
        load_dataset(wb)
    ds = load_dataset(wb, allow_outside=True)  # the explicit opt-in
    assert ds.by_id()["9"].path == outside.resolve()


def test_links_and_dotdot_that_stay_inside_the_dataset_are_fine(wb):
    (wb / "imgs" / "alias.jpg").symlink_to(wb / "imgs" / "0.jpg")
    with open(wb / "metadata.csv", "a", newline="") as f:
        csv.writer(f).writerows([("8", "imgs/alias.jpg", 0, 0, 0), ("9", "imgs/../imgs/1.jpg", 1, 0, 0)])
    by_id = load_dataset(wb).by_id()
    assert by_id["8"].path == (wb / "imgs" / "0.jpg").resolve() and by_id["9"].path == (wb / "imgs" / "1.jpg").resolve()


def test_imagefolder_links_out_of_the_dataset_are_refused(tmp_path):
    _img(tmp_path / "elsewhere" / "x.jpg")
    root = tmp_path / "folder"
    _img(root / "cat" / "1.jpg")
    (root / "dog").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(DatasetError, match=r"folder/dog/x.jpg: path 'dog/x.jpg' resolves through a symbolic link"):
        load_dataset(root)
    assert load_dataset(root, allow_outside=True).by_id()["dog/x.jpg"].label == 1


def test_a_manifest_that_is_not_utf8_is_a_one_line_error(wb):
    with open(wb / "metadata.csv", "ab") as f:
        f.write("9,imgs/0.jpg,0,0,0,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"metadata.csv: not UTF-8 text \(byte 0xe9 on line 8\).*iconv"):
        load_dataset(wb)


def test_a_nul_byte_in_a_path_names_the_row(wb):
    with open(wb / "metadata.csv", "a", newline="") as f:
        csv.writer(f).writerow(("9", "imgs/0\0.jpg", 0, 0, 0))
    with pytest.raises(DatasetError, match=r"row 8 \(img_id=9\): path 'imgs/0\\x00.jpg' holds a NUL byte"):
        load_dataset(wb)


def test_a_label_far_beyond_the_distinct_labels_is_refused_naming_the_row(wb):
    with open(wb / "metadata.csv", "a", newline="") as f:
        csv.writer(f).writerow(("9", "imgs/0.jpg", 5000000, 0, 0))
    with pytest.raises(DatasetError, match=r"metadata.csv row 8: y = 5000000 makes 5,000,001 classes \(0..5000000\), "
                                           r"but only 3 distinct values occur \(0, 1, 5000000\).*renumber the y"):
        load_dataset(wb)


def test_a_place_far_beyond_the_distinct_places_is_refused(wb):
    with open(wb / "metadata.csv", "a", newline="") as f:
        csv.writer(f).writerow(("9", "imgs/0.jpg", 0, 0, 99))
    with pytest.raises(DatasetError, match=r"row 8: place = 99 makes 100 places"):
        load_dataset(wb)


def test_a_few_empty_classes_are_a_warning_kept_in_the_dataset(tmp_path):
    from dali_abs.errors import DatasetWarning

    root = tmp_path / "d"
    rows = []
    for i in range(4):
        _img(root / f"{i}.jpg")
        rows.append((i, f"{i}.jpg", 1 + i % 2, 0, 0))  # labels 1 and 2: numbered from 1
    _metadata(root, rows)
    with pytest.warns(DatasetWarning, match=r"y has no rows for 1 of its 3 classes \(0\).*Numbered from 1\?"):
        ds = load_dataset(root)
    assert ds.n_classes == 3 and len(ds.warnings) == 1
    assert check_images(ds, progress=False)["warnings"] == ds.warnings


def test_a_wrongly_cased_metadata_file_is_refused_not_read_as_an_imagefolder(tmp_path, wb):
    (wb / "metadata.csv").rename(wb / "Metadata.csv")
    _img(wb / "masks" / "0.png", mode="L")
    with pytest.raises(DatasetError, match=r"has Metadata.csv but no metadata.csv \(file names are case-sensitive\)"
                                           r". Rename it to metadata.csv"):
        load_dataset(wb)
