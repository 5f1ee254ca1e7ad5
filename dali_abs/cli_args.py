"""Argument groups and output helpers shared by every ``dali-abs`` subcommand."""

from __future__ import annotations

import argparse
import json
import sys

from dali_abs.dataset import Columns, Dataset, load_dataset


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """DATA positional plus metadata.csv column remapping."""
    parser.add_argument("data", metavar="DATA", help="dataset folder: metadata.csv (Waterbirds layout) or ImageFolder")
    add_column_arguments(parser)
    parser.add_argument("--allow-outside", action="store_true",
                        help="accept image paths that lead outside DATA (../, absolute paths, symbolic links to "
                             "elsewhere), e.g. a folder of links into a shared image store; refused by default")


def add_column_arguments(parser: argparse.ArgumentParser) -> None:
    """The metadata.csv column remapping options (``--col-*``) alone, for a dataset given by an option."""
    g = parser.add_argument_group("metadata.csv columns (remap if your file uses other names)")
    d = Columns()
    g.add_argument("--col-id", default=d.id, help=f"image id column (default {d.id})")
    g.add_argument("--col-filename", default=d.filename, help=f"image path column, relative to DATA (default {d.filename})")
    g.add_argument("--col-label", default=d.label, help=f"integer class column (default {d.label})")
    g.add_argument("--col-split", default=d.split, help=f"split column, 0/1/2 = train/val/test (default {d.split})")
    g.add_argument("--col-place", default=d.place, help=f"integer place (background) column, optional (default {d.place})")


def columns_from_args(args: argparse.Namespace) -> Columns:
    return Columns(args.col_id, args.col_filename, args.col_label, args.col_split, args.col_place)


# Path options that commands reading DATA write to; none may point inside DATA.
OUTPUT_OPTIONS = ("out", "report", "retrain_out")


def dataset_from_args(args: argparse.Namespace) -> Dataset:
    """The dataset of DATA and the column options; refuses any output option (:data:`OUTPUT_OPTIONS`,
    defaults included) that points inside it, before any work."""
    ds = load_dataset(args.data, columns_from_args(args), allow_outside=args.allow_outside)
    for name in OUTPUT_OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            ds.check_output(value, "--" + name.replace("_", "-"))
    return ds


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, sort_keys=False)
    sys.stdout.write("\n")
