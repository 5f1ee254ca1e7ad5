"""Patch-label files: round trip, the reference import, derivation from masks, and errors by row."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dali_abs.dataset import load_dataset
from dali_abs.errors import LabelsError
from dali_abs.labels import (find_mask_file, import_reference, labels_from_masks, patch_coverage, read_labels,
                             select_for_labelling, write_labels)


def test_write_read_round_trip_is_row_major_with_1_foreground(tmp_path):
    g = np.zeros((4, 4), bool)
    g[0, 1] = True  # top row, second column
    write_labels(tmp_path / "l.csv", {"a": g, "b": ~g})
    text = (tmp_path / "l.csv").read_text().splitlines()
    assert text[0] == "image_id,grid,mask" and text[1] == "a,4,0100000000000000"
    back = read_labels(tmp_path / "l.csv")
    assert list(back) == ["a", "b"] and (back["a"] == g).all() and (back["b"] == ~g).all()


@pytest.mark.parametrize("line, pattern", [
    ("x,4,010", r"row 3: mask has 3 characters, expected 16 \(grid 4 x 4\)"),
    ("x,4,01000000000000a2", r"row 3: mask may hold only 0 and 1, found '2a'"),
    ("x,2,0100", r"row 3: grid 2 differs from grid 4 of row 2"),
    ("a,4,0000000000000000", r"row 3: duplicate image_id 'a'"),
    ("x,four,0", r"row 3: grid must be an integer, got 'four'"),
])
def test_label_errors_name_the_row(tmp_path, line, pattern):
    path = tmp_path / "l.csv"
    path.write_text("image_id,grid,mask\na,4,0000000000000000\n" + line + "\n")
    with pytest.raises(LabelsError, match=pattern):
        read_labels(path)


def test_ids_not_in_the_dataset_are_refused(tmp_path, tiny_dataset):
    path = tmp_path / "l.csv"
    path.write_text("image_id,grid,mask\n0,2,0110\nnot-an-id,2,0000\n")
    with pytest.raises(LabelsError, match=r"row 3: image_id 'not-an-id' is not in the dataset"):
        read_labels(path, load_dataset(tiny_dataset))


def test_reference_file_is_pointed_to_the_importer(tmp_path):
    path = tmp_path / "masks.csv"
    path.write_text("info,mask\n1," + "0" * 256 + "\n")
    with pytest.raises(LabelsError, match="import-reference"):
        read_labels(path)


def test_import_reference(tmp_path):
    bits = ["0"] * 256
    bits[16 * 2 + 5] = "1"  # row 2, column 5
    src = tmp_path / "masks.csv"
    src.write_text("info,mask\n17," + "".join(bits) + "\n23," + "1" * 256 + "\n")
    labels = import_reference(src, tmp_path / "labels.csv")
    back = read_labels(tmp_path / "labels.csv")
    assert back["17"].shape == (16, 16) and back["17"][2, 5] and back["17"].sum() == 1
    assert back["23"].all() and list(labels) == ["17", "23"]


@pytest.mark.parametrize("body, pattern", [
    ("info,mask\n1,0101\n", r"row 2: mask has 4 characters, expected 256"),
    ("info,mask\n1," + "0" * 255 + "x\n", r"row 2: mask may hold only 0 and 1, found 'x'"),
    ("id,bits\n1,0\n", r"expected columns info,mask"),
])
def test_import_reference_errors(tmp_path, body, pattern):
    src = tmp_path / "masks.csv"
    src.write_text(body)
    with pytest.raises(LabelsError, match=pattern):
        import_reference(src, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def test_patch_coverage_exact_and_uneven_sizes():
    m = np.zeros((8, 8), bool)
    m[:4, :2] = True
    cov = patch_coverage(m, 2)
    assert cov.tolist() == [[0.5, 0.0], [0.0, 0.0]]
    odd = np.ones((10, 7), bool)
    assert np.allclose(patch_coverage(odd, 3), 1.0)
    with pytest.raises(ValueError, match="smaller than the 16 x 16 patch grid"):
        patch_coverage(np.ones((8, 8)), 16)


def test_labels_from_masks_match_the_ground_truth(tiny_dataset):
    ds = load_dataset(tiny_dataset)
    labels = labels_from_masks(ds, tiny_dataset / "masks", grid=8, threshold=0.25, count=20,
                               majority_only=True, seed=1, progress=False)
    assert len(labels) == 20
    by_id = ds.by_id()
    for sid, grid in labels.items():
        s = by_id[sid]
        assert s.split == "train" and ds.group(s) in ds.majority_groups()
        mask = np.asarray(Image.open(tiny_dataset / s.extra["mask_filename"])) > 127
        assert (grid == (patch_coverage(mask, 8) > 0.25)).all()
        assert 0 < grid.sum() < 64  # every object covers some patches, never all


def test_selection_is_deterministic_and_checks_count(tiny_dataset):
    ds = load_dataset(tiny_dataset)
    a = [s.id for s in select_for_labelling(ds, 10, True, seed=5)]
    assert a == [s.id for s in select_for_labelling(ds, 10, True, seed=5)]
    assert a != [s.id for s in select_for_labelling(ds, 10, True, seed=6)]
    with pytest.raises(LabelsError, match="--count 999 is more than the 160 majority-group training images"):
        select_for_labelling(ds, 999, True, seed=0)


def test_missing_mask_names_the_paths_tried(tmp_path, tiny_dataset):
    ds = load_dataset(tiny_dataset)
    (tmp_path / "masks").mkdir()
    with pytest.raises(LabelsError, match=r"no mask for image .*looked for .*masks/"):
        labels_from_masks(ds, tmp_path / "masks", grid=8, count=1, progress=False)


# ---------------------------------------------------------------------------- bad input (issue 14)
def test_a_labels_file_that_is_not_utf8_is_a_one_line_error(tmp_path):
    path = tmp_path / "l.csv"
    path.write_bytes("image_id,grid,mask\nb\u00e9,1,0\n".encode("latin-1"))
    with pytest.raises(LabelsError, match=r"l.csv: not UTF-8 text \(byte 0xe9 on line 2\)"):
        read_labels(path)
    src = tmp_path / "masks.csv"
    src.write_bytes(("info,mask\n\u00e9," + "0" * 256 + "\n").encode("latin-1"))
    with pytest.raises(LabelsError, match=r"masks.csv: not UTF-8 text"):
        import_reference(src, tmp_path / "out.csv")


def test_a_labels_row_over_the_csv_field_limit_names_the_row(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("image_id,grid,mask\na,1,0\nb,1," + "0" * 200_000 + "\n")
    with pytest.raises(LabelsError, match=r"l.csv row 3: not valid CSV \(field larger than field limit"):
        read_labels(path)
    src = tmp_path / "masks.csv"
    src.write_text("info,mask\n1," + "0" * 200_000 + "\n")
    with pytest.raises(LabelsError, match=r"masks.csv row 2: not valid CSV"):
        import_reference(src, tmp_path / "out.csv")


def test_an_unreadable_mask_is_an_error_naming_the_file(tmp_path, tiny_dataset):
    from dali_abs.errors import DatasetError

    ds = load_dataset(tiny_dataset)
    first = ds.split("train")[0]
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / f"{first.id}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DatasetError, match=rf"masks/{first.id}.png: cannot decode mask image"):
        labels_from_masks(ds, tmp_path / "masks", grid=8, progress=False)


def test_masks_beside_an_images_folder_are_found(tmp_path):
    """cub-birds-300: images/<species>/<n>.jpg has its mask at masks/<species>/<n>.png (stems repeat
    across species, so the stem alone would be ambiguous)."""
    from dali_abs.dataset import Sample

    (tmp_path / "masks" / "Gull").mkdir(parents=True)
    (tmp_path / "masks" / "Gull" / "0054.png").write_bytes(b"")
    s = Sample("2927", tmp_path / "images" / "Gull" / "0054.jpg", "images/Gull/0054.jpg", 1, "train")
    assert find_mask_file(tmp_path / "masks", s) == tmp_path / "masks" / "Gull" / "0054.png"
