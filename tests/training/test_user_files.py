"""Training files as spreadsheet programs and pandas write them load as pandas reads them.

Each case writes train and test files with the real writer (pandas ``to_csv``/``to_json``/``to_parquet``; a
"CSV UTF-8" file as Excel saves it: byte-order mark, CRLF line endings, minimal quoting) and checks that the
loaded rows are exactly the rows pandas reads back from the same file.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from conftest import ag_news_rows, load_splits
from distrinews.core.errors import DataError

# Texts that trip naive readers: a separator, quotes, an embedded line break, pandas "missing" markers and
# non-ASCII.
ODD_TEXTS = ["Oil, gas and coal", 'He said "no deal"', "line one\nline two", "NA", "東京 株価 上昇", "null"]
EXCEL = {"encoding": "utf-8-sig", "lineterminator": "\r\n"}  # Excel's "CSV UTF-8 (Comma delimited)"


def _articles(count: int, seed: int) -> pd.DataFrame:
    rows = ag_news_rows(count, seed)
    frame = pd.DataFrame(rows, columns=["class_index", "title", "description"])
    frame["class_index"] = frame["class_index"].astype(int)
    for i, text in enumerate(ODD_TEXTS):
        frame.loc[i, "title"] = text
    return frame


def _text_label(articles: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"text": articles["title"] + " " + articles["description"],
                         "label": articles["class_index"] - 1})


def _write(case: str, articles: pd.DataFrame, folder: Path, split: str) -> Path:
    """Write one split as ``case`` says; returns the file."""
    frame = _text_label(articles)
    frame.loc[len(frame) - 1, "text"] = "NA"  # a whole text pandas would read as missing by default
    if case == "csv_pandas_with_index":  # DataFrame.to_csv's default keeps the index as an unnamed first column
        frame.sample(frac=1, random_state=0).to_csv(path := folder / f"{split}.csv")
    elif case == "csv_pandas_no_index":
        frame.to_csv(path := folder / f"{split}.csv", index=False)
    elif case == "csv_excel_bom_crlf":
        frame.to_csv(path := folder / f"{split}.csv", index=False, **EXCEL)
    elif case == "original_csv_no_header_excel_bom_crlf":
        articles.to_csv(path := folder / f"{split}.csv", index=False, header=False, quoting=1, **EXCEL)
    elif case == "original_csv_kaggle_header":
        articles.set_axis(["Class Index", "Title", "Description"], axis=1).to_csv(
            path := folder / f"{split}.csv", index=False)
    elif case == "original_csv_kaggle_header_excel_bom_crlf":
        articles.set_axis(["Class Index", "Title", "Description"], axis=1).to_csv(
            path := folder / f"{split}.csv", index=False, **EXCEL)
    elif case == "jsonl_pandas":
        frame.to_json(path := folder / f"{split}.jsonl", orient="records", lines=True)
    elif case == "jsonl_bom_crlf":  # the pandas file re-saved by a Windows editor
        text = frame.to_json(orient="records", lines=True, force_ascii=False)
        (path := folder / f"{split}.jsonl").write_bytes(text.replace("\n", "\r\n").encode("utf-8-sig"))
    elif case == "parquet_pandas_range_index":
        frame.to_parquet(path := folder / f"{split}.parquet")
    elif case == "parquet_pandas_shuffled_index":  # a non-range index is stored as a column, __index_level_0__
        frame.sample(frac=1, random_state=0).to_parquet(path := folder / f"{split}.parquet")
    else:
        raise AssertionError(case)
    return path


def _pandas_rows(path: Path, case: str) -> list[tuple[str, int]]:
    """(text, label) rows as pandas reads the file, keeping every text as written (no "NA" -> NaN)."""
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix == ".jsonl":
        # pandas' JSON reader does not skip a byte-order mark; decoding with utf-8-sig does.
        frame = pd.read_json(io.StringIO(path.read_text(encoding="utf-8-sig")), lines=True)
    else:
        frame = pd.read_csv(path, keep_default_na=False, header=None if "no_header" in case else "infer")
        if case.startswith("original_csv"):
            frame = _text_label(frame.set_axis(["class_index", "title", "description"], axis=1))
    return [(text, int(label)) for text, label in zip(frame["text"], frame["label"])]


CASES = ["csv_pandas_with_index", "csv_pandas_no_index", "csv_excel_bom_crlf", "original_csv_no_header_excel_bom_crlf",
         "original_csv_kaggle_header", "original_csv_kaggle_header_excel_bom_crlf", "jsonl_pandas", "jsonl_bom_crlf",
         "parquet_pandas_range_index", "parquet_pandas_shuffled_index"]


@pytest.mark.parametrize("case", CASES)
def test_file_loads_as_pandas_reads_it(case, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    train = _write(case, _articles(40, seed=1), folder, "train")
    test = _write(case, _articles(12, seed=2), folder, "test")
    if "bom" in case:
        assert train.read_bytes().startswith(b"\xef\xbb\xbf") and b"\r\n" in train.read_bytes()

    splits = load_splits(folder, validation_fraction=0, seed=0)

    for split, path in (("train", train), ("test", test)):
        loaded = list(zip(splits[split]["text"], splits[split]["label"]))
        assert loaded == _pandas_rows(path, case)
        assert len(loaded) == (40 if split == "train" else 12)
    for odd in ODD_TEXTS:  # each kept exactly, not turned into a missing value or re-encoded
        assert any(text.startswith(f"{odd} ") for text in splits["train"]["text"]), odd
    if not case.startswith("original_csv"):
        assert "NA" in splits["train"]["text"]


def test_damaged_file_with_header_names_its_file_row(tmp_path):
    """Row numbers count the header line: the bad class index on data row 5 is file row 6."""
    folder = tmp_path / "data"
    folder.mkdir()
    articles = _articles(20, seed=3).set_axis(["Class Index", "Title", "Description"], axis=1)
    articles.loc[4, "Class Index"] = 9
    articles.to_csv(folder / "train.csv", index=False, **EXCEL)
    _write("csv_pandas_no_index", _articles(12, seed=2), folder, "test")
    with pytest.raises(DataError, match=r"train\.csv: row 6: class_index '9' is not one of 1, 2, 3, 4"):
        load_splits(folder, validation_fraction=0, seed=0)
