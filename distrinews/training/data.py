"""AG News loading, validation and tokenization.

``load_ag_news`` returns a ``DatasetDict`` with ``train``/``validation``/``test`` splits (no ``validation``
when ``validation_fraction`` is 0 and the data has no validation file), each holding a ``text`` string and a
``label`` (``ClassLabel`` 0..3). Sources: a Hub dataset id, or a local folder with
either the original AG News CSVs (class_index 1..4, title, description; no header, or Kaggle's
"Class Index,Title,Description" header) or files with ``text``/``label`` columns (csv with a header, jsonl,
parquet). Files load as pandas reads them: a UTF-8 byte-order mark, CRLF line endings and pandas' index column
are fine. Every problem is reported before training starts, naming the file, the row and what is wrong.

With ``headline_views`` the training split also holds each article's headline alone and its description alone
(with its label), next to the joined text. Only the original CSVs keep the two apart; the Hub copy of AG News
joined them into one ``text``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict

from ..core.errors import ConfigError, DataError
from ..core.labels import LABEL_NAMES

SPLIT_FILE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
_ORIGINAL_COLUMNS = ["class_index", "title", "description"]
_PARTS = ("title", "description")  # kept beside "text" from the original CSVs, for headline_views


def load_ag_news(source: str, *, validation_fraction: float, seed: int,
                 max_train_samples: int = 0, max_eval_samples: int = 0, headline_views: bool = False) -> DatasetDict:
    """Load, validate and split AG News-style data into train/validation/test."""
    folder = Path(source)
    raw = _load_local_folder(folder) if folder.is_dir() else _load_hub_dataset(source)
    raw = DatasetDict({name: split.cast(_features(split)) for name, split in raw.items()})

    if "validation" not in raw and validation_fraction > 0:
        expected = math.ceil(validation_fraction * len(raw["train"]))
        if expected < len(LABEL_NAMES):
            raise DataError(f"validation_fraction={validation_fraction} of {len(raw['train'])} training rows gives "
                            f"{expected} validation examples; a stratified split needs at least {len(LABEL_NAMES)}")
        # Stratified and seeded, so every run with the same seed sees the same validation set.
        parts = raw["train"].train_test_split(test_size=validation_fraction, stratify_by_column="label", seed=seed)
        raw = DatasetDict(train=parts["train"], validation=parts["test"], test=raw["test"])
    # validation_fraction 0 and no validation file: no validation split, every training row is trained on.
    splits = DatasetDict({name: raw[name] for name in ("train", "validation", "test") if name in raw})
    if max_train_samples:
        splits["train"] = _first_n_shuffled(splits["train"], max_train_samples, seed)
    if max_eval_samples:
        for name in ("validation", "test"):
            if name in splits:
                splits[name] = _first_n_shuffled(splits[name], max_eval_samples, seed)
    if headline_views:  # after the validation split and the subsetting: views of the training articles only
        splits["train"] = _with_headline_views(splits["train"], source)
    return DatasetDict({name: split.select_columns(["text", "label"]) for name, split in splits.items()})


def _features(split: Dataset) -> datasets.Features:
    features = {"text": datasets.Value("string"), "label": ClassLabel(names=list(LABEL_NAMES))}
    features.update({name: datasets.Value("string") for name in _PARTS if name in split.column_names})
    return datasets.Features(features)


def _with_headline_views(train: Dataset, source: str) -> Dataset:
    """The articles, then each one's headline alone and description alone (where it has both)."""
    if not set(_PARTS) <= set(train.column_names):
        raise DataError(f"headline_views needs data that keeps each headline apart from its description, as the "
                        f"original AG News CSVs do (rows of class_index,title,description); {source!r} has one "
                        f"text per row. Set headline_views=false, or train on the original CSVs.")
    views = {"text": [], "label": []}
    for title, description, label in zip(train["title"], train["description"], train["label"]):
        if title.strip() and description.strip():
            views["text"] += [title.strip(), description.strip()]
            views["label"] += [label, label]
    extra = Dataset.from_dict(views, features=datasets.Features({"text": datasets.Value("string"),
                                                                   "label": train.features["label"]}))
    return datasets.concatenate_datasets([train.select_columns(["text", "label"]), extra])


def _first_n_shuffled(split: Dataset, n: int, seed: int) -> Dataset:
    return split if len(split) <= n else split.shuffle(seed=seed).select(range(n)).flatten_indices()


def _load_hub_dataset(dataset_id: str) -> DatasetDict:
    try:
        loaded = datasets.load_dataset(dataset_id)
    except Exception as err:  # the library raises many types; all mean "could not get this dataset"
        raise DataError(f"dataset {dataset_id!r} is neither a local folder nor a loadable Hub dataset: {err}") from err
    for split in ("train", "test"):
        if split not in loaded:
            raise DataError(f"dataset {dataset_id!r} has no {split!r} split (found: {', '.join(loaded)})")
    result = {}
    for name, split in loaded.items():
        if name not in ("train", "validation", "test"):
            continue
        missing = {"text", "label"} - set(split.column_names)
        if missing:
            raise DataError(f"dataset {dataset_id!r} split {name!r} lacks column(s) {', '.join(sorted(missing))}")
        split = split.select_columns(["text", "label"])
        _check_rows(split, f"dataset {dataset_id!r} split {name!r}", first_row=0)
        result[name] = split
    return DatasetDict(result)


def find_split_file(folder: Path, split: str) -> Path | None:
    matches = [folder / f"{split}{suffix}" for suffix in SPLIT_FILE_SUFFIXES if (folder / f"{split}{suffix}").is_file()]
    if len(matches) > 1:
        raise DataError(f"{folder}: several files for split {split!r}: {', '.join(m.name for m in matches)}")
    return matches[0] if matches else None


def _load_local_folder(folder: Path) -> DatasetDict:
    result = {}
    for split in ("train", "validation", "test"):
        path = find_split_file(folder, split)
        if path is None:
            if split != "validation":
                raise DataError(f"{folder}: missing {split} split: expected one of "
                                + ", ".join(f"{split}{s}" for s in SPLIT_FILE_SUFFIXES))
            continue
        result[split] = _load_split_file(path)
    return DatasetDict(result)


def _load_split_file(path: Path) -> Dataset:
    if path.suffix in (".csv", ".jsonl", ".json"):
        _check_utf8(path)
    parts = ()  # only the original CSVs hand their headline and description on (for headline_views)
    if path.suffix == ".csv":
        split, first_row, parts = _load_csv(path)
    elif path.suffix in (".jsonl", ".json"):
        split, first_row = _load_with_datasets("json", path), 1
    else:
        split, first_row = _load_with_datasets("parquet", path), 1
    missing = {"text", "label"} - set(split.column_names)
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))} (found: {', '.join(split.column_names)})")
    split = split.select_columns(["text", "label", *parts])
    _check_rows(split, str(path), first_row)
    return split


def _load_csv(path: Path) -> tuple[Dataset, int, tuple[str, ...]]:
    """The split, the file row of its first example, and the extra columns it keeps."""
    header = _read_csv_header(path)
    if {"text", "label"} <= set(header):
        # Every text as written: pandas alone would read a text "NA" or "null" as missing.
        return _load_with_datasets("csv", path, keep_default_na=False, na_filter=False), 2, ()
    if _is_original_header(header):  # the Kaggle copy of AG News: "Class Index,Title,Description"
        return _load_original_ag_news_csv(path, first_row=2), 2, _PARTS
    if len(header) == 3 and header[0].strip().isdigit():  # the original files: no header
        return _load_original_ag_news_csv(path, first_row=1), 1, _PARTS
    raise DataError(f"{path}: row 1: not an AG News CSV: expected a header with 'text' and 'label' columns, "
                    f"or rows of class_index,title,description; found {header!r}")


def _is_original_header(header: list[str]) -> bool:
    return [name.strip().lower().replace("_", " ") for name in header] == ["class index", "title", "description"]


def _load_with_datasets(builder: str, path: Path, **options) -> Dataset:
    # The datasets builders cache the parsed Arrow table keyed by the file, so later runs start instantly.
    try:
        return datasets.load_dataset(builder, data_files={"data": str(path)}, split="data", **options)
    except Exception as err:
        cause = err.__cause__ or err
        raise DataError(f"{path}: cannot be parsed as {builder}: {cause}") from err


def _load_original_ag_news_csv(path: Path, first_row: int) -> Dataset:
    """``first_row`` is 2 when the file starts with a header row (replaced by our column names), else 1."""
    _check_csv_field_counts(path, len(_ORIGINAL_COLUMNS))
    # Read every field as a string and nothing as "missing": a headline can be "NA" or "null".
    as_text = datasets.Features({name: datasets.Value("string") for name in _ORIGINAL_COLUMNS})
    split = _load_with_datasets("csv", path, column_names=_ORIGINAL_COLUMNS, header=0 if first_row == 2 else None,
                                keep_default_na=False, na_filter=False, features=as_text)
    bad = next((i for i, v in enumerate(split["class_index"]) if v.strip() not in ("1", "2", "3", "4")), None)
    if bad is not None:
        raise DataError(f"{path}: row {bad + first_row}: class_index {split[bad]['class_index']!r} "
                        f"is not one of 1, 2, 3, 4")

    def to_text_label(batch):
        return {"text": [f"{t} {d}".strip() for t, d in zip(batch["title"], batch["description"])],
                "label": [int(c) - 1 for c in batch["class_index"]]}

    return split.map(to_text_label, batched=True, remove_columns=["class_index"])


def _check_utf8(path: Path) -> None:
    with path.open("rb") as handle:
        for row, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: row {row}: bytes that are not UTF-8 at column {err.start + 1} "
                                f"({line[err.start:err.start + 4]!r}); re-save the file as UTF-8") from None


def _read_csv_header(path: Path) -> list[str]:
    # utf-8-sig drops the byte-order mark that spreadsheet programs write first ("CSV UTF-8"), as pandas does.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), None)
    if header is None:
        raise DataError(f"{path}: file is empty")
    return header


def _check_csv_field_counts(path: Path, expected: int) -> None:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        for row, fields in enumerate(csv.reader(handle), start=1):
            if len(fields) != expected:
                raise DataError(f"{path}: row {row}: expected {expected} fields "
                                f"(class_index, title, description), found {len(fields)}")


def _check_rows(split: Dataset, where: str, first_row: int) -> None:
    """Labels must be 0..3 and texts non-empty; ``first_row`` is the file row of dataset index 0."""
    if len(split) == 0:
        raise DataError(f"{where}: no rows")
    for index, label in enumerate(split["label"]):
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(LABEL_NAMES):
            raise DataError(f"{where}: row {index + first_row}: label {label!r} is not an integer in 0..3 "
                            f"({', '.join(f'{i}={n}' for i, n in enumerate(LABEL_NAMES))})")
    for index, text in enumerate(split["text"]):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: row {index + first_row}: empty text")


def checked_max_length(max_length: int, model, tokenizer, model_name: str, warn=print) -> int:
    """``max_length`` as the model can take it: more than the special tokens it adds to every text (else no text
    token is left), and at most its positions (longer is cut to that, as serving does, with a warning)."""
    from ..core.predict import model_max_length

    specials = tokenizer.num_special_tokens_to_add(pair=False)
    if max_length <= specials:
        raise ConfigError(f"max_length={max_length}: must be > {specials}: {model_name} adds {specials} special "
                          f"token(s) to every text, which would leave no room for the text itself")
    limit = model_max_length(model, tokenizer)
    if max_length > limit:
        warn(f"warning: max_length={max_length} is more than {model_name} reads ({limit} tokens); using {limit}")
        return limit
    return max_length


def tokenize_splits(splits: DatasetDict, tokenizer, max_length: int) -> DatasetDict:
    """Tokenize without padding (the collator pads each batch) and record each example's length."""

    def tokenize(batch):
        encoded = tokenizer(batch["text"], truncation=True, max_length=max_length)
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        return encoded

    tokenized = splits.map(tokenize, batched=True, remove_columns=["text"], desc="Tokenizing")
    return tokenized.rename_column("label", "labels")



def sorted_by_length(split: Dataset) -> Dataset:
    """The split ordered by token count (for evaluation batches that barely pad), without the length column."""
    order = np.argsort(np.asarray(split["length"]), kind="stable")
    return split.select(order).remove_columns("length")


class PaddingCollator:
    """Pads a batch to its longest example, rounded up to a multiple of 8 (tensor-core friendly shapes).

    A vectorised replacement for ``DataCollatorWithPadding``, whose per-example Python work starves a
    fast GPU at large batches; every key is padded with the right value and returned as int64 tensors.
    """

    def __init__(self, pad_token_id: int, multiple: int = 8) -> None:
        self.pad_values = {"input_ids": pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        self.multiple = multiple

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(example["input_ids"]) for example in examples)
        width = -(-longest // self.multiple) * self.multiple
        batch = {}
        for key, pad_value in self.pad_values.items():
            if key not in examples[0]:
                continue
            padded = np.full((len(examples), width), pad_value, dtype=np.int64)
            for row, example in enumerate(examples):
                padded[row, :len(example[key])] = example[key]
            batch[key] = torch.from_numpy(padded)
        if "labels" in examples[0]:
            batch["labels"] = torch.tensor([example["labels"] for example in examples], dtype=torch.int64)
        return batch
