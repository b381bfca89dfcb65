"""Reading a dataset's splits as they are stored: a Hub dataset, or a local folder of csv/jsonl/parquet files.

``read_splits`` returns each split's rows with their columns untouched, and where they came from (file, first
row), for ``distrinews.training.data`` to pick the text and label columns from. Files load as pandas reads them: a
UTF-8 byte-order mark, CRLF line endings and pandas' index column are fine, and every CSV field is read as
written (a text "NA" or "null" stays a text; labels arrive as strings). The original AG News CSVs
(``distrinews.core.formats.AG_NEWS``) are recognised by their layout and come back with their preset's columns.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import datasets
from datasets import Dataset

from ..core.errors import DataError
from ..core.formats import AG_NEWS, DatasetPreset
from ..core.texts import check_utf8

SPLIT_NAMES = ("train", "validation", "test")
SPLIT_FILE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


@dataclass
class StoredSplit:
    rows: Dataset
    where: str  # the file, or "dataset 'ID' split 'NAME'"
    first_row: int  # the file row (or dataset index) of the first example
    from_text_file: bool = False  # a CSV: every field, labels included, was read as a string
    preset: DatasetPreset | None = None  # the file is in a preset's original layout

    def row(self, index: int) -> int:
        return index + self.first_row


def read_splits(source: str, *, config_name: str = "", revision: str = "") -> dict[str, StoredSplit]:
    """The train split and whichever of validation and test the source has."""
    folder = Path(source)
    if folder.is_dir():
        if config_name or revision:
            raise DataError(f"dataset_config_name and dataset_revision apply to Hub datasets; {source!r} is a "
                            "local folder")
        return _read_folder(folder)
    return _read_hub_dataset(source, config_name, revision)


def _read_hub_dataset(dataset_id: str, config_name: str, revision: str) -> dict[str, StoredSplit]:
    try:
        loaded = datasets.load_dataset(dataset_id, name=config_name or None, revision=revision or None)
    except Exception as err:  # the library raises many types; all mean "could not get this dataset"
        raise DataError(f"dataset {dataset_id!r} is neither a local folder nor a loadable Hub dataset: {err}") from err
    if "train" not in loaded:
        raise DataError(f"dataset {dataset_id!r} has no 'train' split (found: {', '.join(loaded)})")
    return {name: StoredSplit(split, f"dataset {dataset_id!r} split {name!r}", first_row=0)
            for name, split in loaded.items() if name in SPLIT_NAMES}


def find_split_file(folder: Path, split: str) -> Path | None:
    matches = [folder / f"{split}{suffix}" for suffix in SPLIT_FILE_SUFFIXES if (folder / f"{split}{suffix}").is_file()]
    if len(matches) > 1:
        raise DataError(f"{folder}: several files for split {split!r}: {', '.join(m.name for m in matches)}")
    return matches[0] if matches else None


def _read_folder(folder: Path) -> dict[str, StoredSplit]:
    found = {split: find_split_file(folder, split) for split in SPLIT_NAMES}
    if found["train"] is None:
        raise DataError(f"{folder}: missing train split: expected one of "
                        + ", ".join(f"train{s}" for s in SPLIT_FILE_SUFFIXES))
    return {split: _read_file(path) for split, path in found.items() if path is not None}


def _read_file(path: Path) -> StoredSplit:
    if path.suffix in (".csv", ".jsonl", ".json"):
        check_utf8(path, unit="row")
    if path.suffix == ".csv":
        return _read_csv(path)
    builder = "json" if path.suffix in (".jsonl", ".json") else "parquet"
    return StoredSplit(_load_with_datasets(builder, path), str(path), first_row=1)


def _read_csv(path: Path) -> StoredSplit:
    header = _read_csv_header(path)
    if AG_NEWS.is_original_header(header):  # the Kaggle copy of AG News: "Class Index,Title,Description"
        return StoredSplit(_read_original_csv(path, AG_NEWS, has_header=True), str(path), 2, True, AG_NEWS)
    if AG_NEWS.is_original_row(header) or (len(header) == 3 and header[0].strip().isdigit()):
        return StoredSplit(_read_original_csv(path, AG_NEWS, has_header=False), str(path), 1, True, AG_NEWS)
    # Every field as written, as a string: pandas alone would read a text "NA" or "null" as missing, and the
    # labels' kind (integers or names) is decided over the whole column, not by pandas' guess.
    # (pandas names an unnamed column, such as the index DataFrame.to_csv writes, "Unnamed: <position>")
    columns = {name or f"Unnamed: {i}": datasets.Value("string") for i, name in enumerate(header)}
    rows = _load_with_datasets("csv", path, keep_default_na=False, na_filter=False,
                               features=datasets.Features(columns) if len(columns) == len(header) else None)
    return StoredSplit(rows, str(path), first_row=2, from_text_file=True)


def _read_original_csv(path: Path, preset: DatasetPreset, has_header: bool) -> Dataset:
    """The preset's original layout (no header, or its header replaced by the preset's column names)."""
    columns = list(preset.original_columns)
    _check_csv_field_counts(path, len(columns), ", ".join(columns))
    as_text = datasets.Features({name: datasets.Value("string") for name in columns})
    rows = _load_with_datasets("csv", path, column_names=columns, header=0 if has_header else None,
                               keep_default_na=False, na_filter=False, features=as_text)
    label_column = columns[0]
    bad = next((i for i, v in enumerate(rows[label_column]) if v.strip() not in preset.class_indices), None)
    if bad is not None:
        raise DataError(f"{path}: row {bad + (2 if has_header else 1)}: {label_column} {rows[bad][label_column]!r} "
                        f"is not one of {', '.join(preset.class_indices)}")
    return rows


def _load_with_datasets(builder: str, path: Path, **options) -> Dataset:
    # The datasets builders cache the parsed Arrow table keyed by the file, so later runs start instantly.
    try:
        return datasets.load_dataset(builder, data_files={"data": str(path)}, split="data", **options)
    except Exception as err:
        cause = err.__cause__ or err
        raise DataError(f"{path}: cannot be parsed as {builder}: {cause}") from err


def _read_csv_header(path: Path) -> list[str]:
    # utf-8-sig drops the byte-order mark that spreadsheet programs write first ("CSV UTF-8"), as pandas does.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), None)
    if header is None:
        raise DataError(f"{path}: file is empty")
    return header


def _check_csv_field_counts(path: Path, expected: int, names: str) -> None:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        for row, fields in enumerate(csv.reader(handle), start=1):
            if len(fields) != expected:
                raise DataError(f"{path}: row {row}: expected {expected} fields ({names}), found {len(fields)}")
