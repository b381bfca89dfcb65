"""The rows of a corpus, streamed in order: a CSV, JSON Lines or Parquet file, a folder of them, or a Hub dataset.

Nothing is read whole: CSV and JSON Lines line by line, Parquet a record batch at a time, a Hub dataset through
``datasets``' streaming mode, so a corpus larger than memory works. Each row becomes an ``InputRow``: its position
in the input (``row``, counted from 0 across a folder's files in name order), its id (the id column's value, if the
input has one) and its text, joined from the text columns as training joins them, or the reason it has none (a
missing or empty text, a value that is not text, a line that is not JSON). Such a bad row is reported, never
dropped unseen and never a crash (command.py decides what happens to it). A whole file that cannot be read (not
UTF-8, no text column) is an error naming it, before any row of it is classified.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..core.errors import DataError
from ..core.formats import AG_NEWS
from ..core.texts import check_utf8, clean_text

SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
PARQUET_BATCH_ROWS = 1024
CSV_FIELD_LIMIT = 16 * 1024 * 1024  # characters in one CSV field (the Space reads the first 100,000 of a text)
AG_NEWS_TEXT = ("title", "description")


@dataclass(frozen=True)
class InputRow:
    row: int  # position in the input, from 0
    id: str | None  # the id column's value, as text (None: no id column, or none in this row)
    text: str | None  # None: a bad row
    problem: str | None = None  # why it is bad
    where: str = ""  # file and line (or dataset and index), for the bad-row report


@dataclass(frozen=True)
class ReadOptions:
    text_columns: tuple[str, ...] = ("text",)
    text_delimiter: str = " "
    id_column: str = ""  # "" = "id" where the input has such a column


class Corpus:
    """An input to classify: its rows in order, how many there are (if cheap to know) and its fingerprint."""

    def __init__(self, source: str, options: ReadOptions, *, split: str = "train", config_name: str = "",
                 revision: str = "") -> None:
        self.source, self.options = source, options
        path = Path(source)
        if path.is_file() or path.is_dir():
            if config_name or revision:
                raise DataError(f"--dataset_config_name and --dataset_revision apply to Hub datasets; {source!r} is a "
                                "local path")
            self._files = _corpus_files(path)
            self._hub = None
        else:
            self._files = []
            self._hub = _HubSplit(source, split, config_name, revision)
        for file in self._files:
            _open_reader(file, options).check()  # a file that cannot be read fails now, before any row is classified

    def describe(self) -> str:
        if self._hub:
            return self._hub.describe()
        return self._files[0].name if len(self._files) == 1 else f"{len(self._files)} files in {self.source}"

    def rows(self) -> Iterator[InputRow]:
        if self._hub:
            yield from self._hub.rows(self.options)
            return
        offset = 0
        for file in self._files:
            count = 0
            for count, row in enumerate(_open_reader(file, self.options).rows(offset), start=1):
                yield row
            offset += count

    def count(self) -> int | None:
        """Rows in the input (for the progress bar): counted from the files, or the dataset's metadata."""
        if self._hub:
            return self._hub.count()
        return sum(_open_reader(file, self.options).count() for file in self._files)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this input's content: each file's name, size and SHA-256, or the dataset's id, config,
        split and resolved revision. A rerun over another input is refused by it."""
        if self._hub:
            return self._hub.fingerprint()
        root = Path(self.source)
        return {"files": [{"name": file.name if root.is_file() else file.relative_to(root).as_posix(),
                           "bytes": file.stat().st_size, "sha256": _sha256(file)} for file in self._files]}


def _corpus_files(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise DataError(f"{path}: not a corpus file (expected {', '.join(SUFFIXES)})")
        return [path]
    files = sorted((file for file in path.rglob("*") if file.is_file() and file.suffix.lower() in SUFFIXES
                    and not any(part.startswith(".") for part in file.relative_to(path).parts)),
                   key=lambda file: file.relative_to(path).as_posix())
    if not files:
        raise DataError(f"{path}: no {', '.join(SUFFIXES)} files in this folder")
    return files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def row_text(record: dict, columns: Sequence[str], delimiter: str) -> tuple[str | None, str | None]:
    """(text, None) or (None, why there is none) for one record: its text columns joined as training joins them
    (one column as written; several by ``delimiter``, an empty part adding no delimiter at the ends)."""
    parts = []
    for column in columns:
        value = record.get(column)
        if value is not None and not isinstance(value, str):
            return None, f"{column} holds a {type(value).__name__}, not text"
        parts.append(value or "")
    text = parts[0] if len(parts) == 1 else delimiter.join(parts).strip()
    if not clean_text(text):
        return None, f"no text: {', '.join(columns)} {'is' if len(columns) == 1 else 'are'} missing or empty"
    return text, None


def _id_of(record: dict, column: str | None) -> str | None:
    """The row's id as text; a lone surrogate (JSON can carry one) escaped, since no output file can hold it."""
    value = record.get(column) if column else None
    return None if value is None else str(value).encode("utf-8", "backslashreplace").decode("utf-8")


class _FileReader:
    """One file's rows; ``check`` reads its header (or first record) and fails on a file that cannot be used."""

    def __init__(self, path: Path, options: ReadOptions) -> None:
        self.path, self.options = path, options

    def columns_for(self, names: Sequence[str]) -> tuple[tuple[str, ...], str | None]:
        """The text columns and the id column this file's columns give (AG News: title and description)."""
        text = self.options.text_columns
        if text == ("text",) and "text" not in names and set(AG_NEWS_TEXT) <= set(names):
            text = AG_NEWS_TEXT
        missing = [column for column in text if column not in names]
        if missing:
            raise DataError(f"{self.path}: no column {', '.join(map(repr, missing))} (columns: "
                            f"{', '.join(map(str, names)) or 'none'}); name the text with --text_column_names")
        if self.options.id_column and self.options.id_column not in names:
            raise DataError(f"{self.path}: no id column {self.options.id_column!r} (columns: {', '.join(names)})")
        return text, self.options.id_column or ("id" if "id" in names else None)

    def make_row(self, record: dict, row: int, line: int, columns, id_column) -> InputRow:
        text, problem = row_text(record, columns, self.options.text_delimiter)
        return InputRow(row, _id_of(record, id_column), text, problem, f"{self.path} line {line}")


class _CsvReader(_FileReader):
    def _header(self) -> tuple[list[str], bool]:
        """The column names, and whether the first line holds them (the original AG News files have none)."""
        with self.path.open(newline="", encoding="utf-8-sig") as handle:
            first = next(csv.reader(handle), None)
        if first is None:
            raise DataError(f"{self.path}: file is empty")
        if AG_NEWS.is_original_header(first):
            return list(AG_NEWS.original_columns), True
        if AG_NEWS.is_original_row(first):
            return list(AG_NEWS.original_columns), False
        return [name or f"Unnamed: {i}" for i, name in enumerate(first)], True

    def check(self) -> None:
        check_utf8(self.path)
        self.columns_for(self._header()[0])

    def rows(self, offset: int) -> Iterator[InputRow]:
        names, has_header = self._header()
        columns, id_column = self.columns_for(names)
        with self.path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            if has_header:
                _next_record(reader, self.path)
            number, line = 0, reader.line_num + 1
            while (fields := _next_record(reader, self.path)) is not None:
                if any(field.strip() for field in fields):  # a blank line is no row, as for pandas
                    yield self.make_row(dict(zip(names, fields)), offset + number, line, columns, id_column)
                    number += 1
                line = reader.line_num + 1

    def count(self) -> int:
        """Its lines, less the header: the progress bar's total, counted at the speed of the disk (a text with
        line breaks inside its quotes makes it an estimate)."""
        return max(0, _line_count(self.path) - self._header()[1])


class _JsonLinesReader(_FileReader):
    def check(self) -> None:
        check_utf8(self.path)
        with self.path.open(encoding="utf-8-sig") as handle:
            start = handle.read(4096).lstrip()[:1]
        if start == "[":
            raise DataError(f"{self.path}: one JSON array; a corpus file holds JSON Lines (one object per line, "
                            ".jsonl), which can be read a line at a time")

    def rows(self, offset: int) -> Iterator[InputRow]:
        number = 0
        with self.path.open(encoding="utf-8-sig") as handle:
            for line, content in enumerate(handle, start=1):
                if not content.strip():
                    continue
                where = f"{self.path} line {line}"
                try:
                    record = json.loads(content)
                except ValueError as err:
                    yield InputRow(offset + number, None, None, f"not JSON: {err}", where)
                else:
                    if not isinstance(record, dict):
                        yield InputRow(offset + number, None, None, f"a JSON {type(record).__name__}, not an object",
                                       where)
                    else:
                        yield self._record_row(record, offset + number, line)
                number += 1

    def _record_row(self, record: dict, row: int, line: int) -> InputRow:
        names = list(record)
        text = self.options.text_columns
        if text == ("text",) and "text" not in names and set(AG_NEWS_TEXT) <= set(names):
            text = AG_NEWS_TEXT
        id_column = self.options.id_column or ("id" if "id" in names else None)
        return self.make_row(record, row, line, text, id_column)

    def count(self) -> int:
        return _line_count(self.path)


class _ParquetReader(_FileReader):
    def _file(self):
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.path)
        except Exception as err:  # noqa: BLE001 - pyarrow's errors say what is wrong with the file
            raise DataError(f"{self.path}: cannot be read as Parquet: {err}") from None

    def check(self) -> None:
        self.columns_for(self._file().schema_arrow.names)

    def rows(self, offset: int) -> Iterator[InputRow]:
        file = self._file()
        columns, id_column = self.columns_for(file.schema_arrow.names)
        wanted = list(dict.fromkeys([*columns, *([id_column] if id_column else [])]))
        number = 0
        for batch in file.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
            for record in batch.to_pylist():
                yield self.make_row(record, offset + number, number, columns, id_column)
                number += 1

    def count(self) -> int:
        return self._file().metadata.num_rows

    def make_row(self, record: dict, row: int, line: int, columns, id_column) -> InputRow:
        text, problem = row_text(record, columns, self.options.text_delimiter)
        return InputRow(row, _id_of(record, id_column), text, problem, f"{self.path} row {line}")


def _open_reader(path: Path, options: ReadOptions) -> _FileReader:
    kind = {".csv": _CsvReader, ".jsonl": _JsonLinesReader, ".json": _JsonLinesReader, ".parquet": _ParquetReader}
    return kind[path.suffix.lower()](path, options)


def _next_record(reader, path: Path) -> list[str] | None:
    """The reader's next record (None at the end), read with room for fields up to CSV_FIELD_LIMIT characters.

    The csv module's field limit is one setting for the whole process (the Space's CSV upload keeps the default):
    it is raised for the reading of one record and put back at once. A record the reader cannot parse fails the
    file, naming the line: past a broken record the csv module's position is no longer a record's start, and the
    rest of the file would be misread rather than reported."""
    previous = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        return next(reader, None)
    except csv.Error as err:
        raise DataError(f"{path}: line {reader.line_num}: cannot be read as CSV ({err}); the shards before it "
                        "are kept") from None
    finally:
        csv.field_size_limit(previous)


def _line_count(path: Path) -> int:
    """Lines in ``path``, the last one counted without its line break too."""
    lines, last = 0, b"\n"
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


class _HubSplit:
    """A split of a Hub dataset, streamed by ``datasets`` (HF_ENDPOINT, the token and the cache as it reads them)."""

    def __init__(self, dataset_id: str, split: str, config_name: str, revision: str) -> None:
        self.dataset_id, self.split, self.config_name = dataset_id, split, config_name or None
        self.revision = _resolved_dataset_revision(dataset_id, revision)

    def describe(self) -> str:
        return f"dataset {self.dataset_id!r} split {self.split!r}"

    def _stream(self):
        import datasets

        try:
            return datasets.load_dataset(self.dataset_id, name=self.config_name, revision=self.revision,
                                         split=self.split, streaming=True)
        except Exception as err:  # noqa: BLE001 - the library raises many types; all mean "cannot read this split"
            raise DataError(f"{self.describe()} is neither a local path nor a readable Hub dataset split: "
                            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None

    def rows(self, options: ReadOptions) -> Iterator[InputRow]:
        stream = self._stream()
        text, id_column = options.text_columns, options.id_column or None
        if stream.features:  # known up front for most datasets: a missing column fails before any row
            text, id_column = _FileReader(Path(self.describe()), options).columns_for(list(stream.features))
        for index, record in enumerate(stream):
            value, problem = row_text(record, text, options.text_delimiter)
            yield InputRow(index, _id_of(record, id_column), value, problem, f"{self.describe()} index {index}")

    def count(self) -> int | None:
        info = getattr(self._stream(), "info", None)
        splits = getattr(info, "splits", None) or {}
        return getattr(splits.get(self.split), "num_examples", None) or None

    def fingerprint(self) -> dict[str, Any]:
        return {"dataset": self.dataset_id, "config": self.config_name, "split": self.split,
                "revision": self.revision}


def _resolved_dataset_revision(dataset_id: str, revision: str) -> str | None:
    """The commit a branch or tag points at now (a rerun then reads the same rows), or the revision as given when the
    Hub cannot say (offline, or a mirror that needs an explicit sha)."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(dataset_id, revision=revision or None).sha or revision or None
    except Exception:  # noqa: BLE001 - streaming then reports why the dataset cannot be read
        return revision or None
