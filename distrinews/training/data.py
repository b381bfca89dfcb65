"""Any labelled text into train/validation/test splits and the task they define; tokenization and batching.

``load_labelled_data(options)`` returns a ``LabelledData``: a ``DatasetDict`` whose splits hold a ``text`` string
and a ``label`` (a ``ClassLabel`` index, or for multi-label a 0/1 row per label), the task (label names and
problem type, ``distrinews.core.tasks``) and what the run should report about the data. Sources
(``distrinews.training.data_files``): a Hub dataset id, or a local folder of train/validation/test files.

- The text is one column or several joined (``text_column_names``, ``text_column_delimiter``); the label column
  is ``label_column_name``. Labels and their order come from the training data (``distrinews.training.labels``).
- Without a test split, a stratified (multi-label: random), seeded test split is carved from train
  (``test_fraction``); then, without a validation split, a validation split from what is left
  (``validation_fraction``). A label with a single training row stays in train. Both are reported, so nobody
  mistakes a carved split for an official test set.
- The AG News preset (``distrinews.core.formats.AG_NEWS``): the original CSVs' headline and description become the
  text, class index 1..4 the label with the four topic names, and ``headline_views`` also trains on each
  article's headline alone and its description alone (only those files keep the two apart).

Every problem is reported before anything is written, naming the file, the row and what is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict

from ..core.errors import ConfigError, DataError
from ..core.formats import AG_NEWS, DatasetPreset
from ..core.tasks import MULTI_LABEL, Task, make_task
from .data_files import StoredSplit, read_splits
from .labels import LabelRules, RawLabels, encode_labels, label_set, labels_in

_VIEW_PARTS = ("title", "description")  # the AG News columns headline_views trains on alone


@dataclass(frozen=True)
class DataOptions:
    """How to read a dataset into labelled splits (``TrainConfig`` has a field of the same meaning for each)."""

    source: str
    config_name: str = ""
    revision: str = ""
    text_columns: tuple[str, ...] = ("text",)
    text_delimiter: str = " "
    label_column: str = "label"
    problem_type: str = "single_label_classification"
    label_names: tuple[str, ...] = ()
    label_separator: str = ""
    validation_fraction: float = 0.05
    test_fraction: float = 0.1
    seed: int = 42
    max_train_samples: int = 0
    max_eval_samples: int = 0
    headline_views: bool = False

    @classmethod
    def from_config(cls, config) -> "DataOptions":
        """The data settings of a ``TrainConfig``."""
        return cls(source=config.dataset, config_name=config.dataset_config_name, revision=config.dataset_revision,
                   text_columns=config.text_columns(), text_delimiter=config.text_column_delimiter,
                   label_column=config.label_column_name, problem_type=config.problem_type,
                   label_names=config.label_name_list(), label_separator=config.label_separator,
                   validation_fraction=config.validation_fraction, test_fraction=config.test_fraction,
                   seed=config.seed, max_train_samples=config.max_train_samples,
                   max_eval_samples=config.max_eval_samples, headline_views=config.headline_views)

    @property
    def label_rules(self) -> LabelRules:
        return LabelRules(self.problem_type == MULTI_LABEL, self.label_names, self.label_separator)


@dataclass
class LabelledData:
    splits: DatasetDict
    task: Task
    preset: DatasetPreset | None = None
    carved: dict[str, str] = field(default_factory=dict)  # split -> how it was carved from train

    def summary(self) -> dict[str, Any]:
        """The ``data`` entry of metrics.json: what the model card says about the data."""
        return {"labels": list(self.task.labels), "problem_type": self.task.problem_type,
                "preset": self.preset.key if self.preset else None, "carved_splits": self.carved,
                "rows": {name: len(split) for name, split in self.splits.items()}}


def load_labelled_data(options: DataOptions, labels: tuple[str, ...] | None = None) -> LabelledData:
    """Read, check, label and split ``options.source``. ``labels`` (a saved model's) replaces the label set the
    training split would give, for evaluating that model on other data."""
    stored = read_splits(options.source, config_name=options.config_name, revision=options.revision)
    preset = next((s.preset for s in stored.values() if s.preset), None) or \
        (AG_NEWS if AG_NEWS.describes(options.source) else None)
    raw_labels = {name: _raw_labels(split, options) for name, split in stored.items()}
    names = labels or label_set(raw_labels["train"], options.label_rules)
    task = make_task(options.problem_type, names)
    splits = _labelled_splits(stored, raw_labels, options, task, check_unseen=labels is None)
    splits, carved = _carve_missing_splits(splits, options, task)
    if options.max_train_samples:
        splits["train"] = _first_n_shuffled(splits["train"], options.max_train_samples, options.seed)
    if options.max_eval_samples:
        for name in ("validation", "test"):
            if name in splits:
                splits[name] = _first_n_shuffled(splits[name], options.max_eval_samples, options.seed)
    if options.headline_views:  # after the splits and the subsetting: views of the training articles only
        splits["train"] = _with_headline_views(splits["train"], options.source)
    splits = DatasetDict({name: split.select_columns(["text", "label"]) for name, split in splits.items()})
    return LabelledData(splits, task, preset, carved)


def _raw_labels(split: StoredSplit, options: DataOptions) -> RawLabels:
    column = split.preset.original_columns[0] if split.preset else options.label_column
    _require_columns(split, [*_text_columns(split, options), column])
    values = split.rows[column]
    feature = split.rows.features[column]
    if split.preset:  # the original files' class index 1..N is label 0..N-1 of the preset's names
        values = [split.preset.class_indices.index(v.strip()) for v in values]
        return RawLabels(values, split.where, split.first_row, split.preset.label_names)
    inner = getattr(feature, "feature", None)  # Sequence(ClassLabel) / List(ClassLabel) of a multi-label column
    class_label = feature if isinstance(feature, ClassLabel) else inner if isinstance(inner, ClassLabel) else None
    return RawLabels(values, split.where, split.first_row, tuple(class_label.names) if class_label else (),
                     split.from_text_file)


def _text_columns(split: StoredSplit, options: DataOptions) -> tuple[str, ...]:
    # The original AG News files have a headline and a description; unless told otherwise, the text is both.
    return _VIEW_PARTS if split.preset and options.text_columns == ("text",) else options.text_columns


def _require_columns(split: StoredSplit, columns: list[str]) -> None:
    names = split.rows.column_names
    missing = [name for name in columns if name not in names]
    if missing:
        raise DataError(f"{split.where}: missing column(s) {', '.join(missing)} (found: {', '.join(names)}); "
                        "name the columns with --text_column_names and --label_column_name")


def _labelled_splits(stored: dict[str, StoredSplit], raw_labels: dict[str, RawLabels], options: DataOptions,
                     task: Task, check_unseen: bool) -> dict[str, Dataset]:
    """Each split as ``text`` + ``label`` (plus the headline and description of AG News files)."""
    rules, names = options.label_rules, task.labels
    encoded = {"train": encode_labels(raw_labels["train"], rules, names, None)}
    seen = labels_in(encoded["train"], rules.multi_label) if check_unseen else None
    for name in stored:
        if name != "train":
            encoded[name] = encode_labels(raw_labels[name], rules, names, seen)
    label_feature = datasets.Sequence(datasets.Value("int8")) if rules.multi_label else ClassLabel(names=list(names))
    return {name: _text_and_label(split, _text_columns(split, options), options.text_delimiter, encoded[name],
                                  label_feature) for name, split in stored.items()}


def _text_and_label(split: StoredSplit, columns: tuple[str, ...], delimiter: str, labels: list,
                    label_feature) -> Dataset:
    if len(split.rows) == 0:
        raise DataError(f"{split.where}: no rows")
    texts = _joined_texts([split.rows[column] for column in columns], delimiter)
    empty = next((i for i, text in enumerate(texts) if not text.strip()), None)
    if empty is not None:
        raise DataError(f"{split.where}: row {split.row(empty)}: empty text (column(s) {', '.join(columns)})")
    kept = [part for part in _VIEW_PARTS if split.preset]
    features = datasets.Features({"text": datasets.Value("string"), "label": label_feature,
                                  **{part: datasets.Value("string") for part in kept}})

    def text_and_label(batch, indices):
        return {"text": _joined_texts([batch[column] for column in columns], delimiter),
                "label": [labels[i] for i in indices]}

    # A map over the stored rows (not a new in-memory table): datasets caches its result, and the tokenization
    # after it, by content, so the other ranks and later runs read them instead of computing them again.
    return split.rows.map(text_and_label, batched=True, with_indices=True, features=features,
                          remove_columns=[c for c in split.rows.column_names if c not in kept], desc="Labelling")


def _joined_texts(columns: list[list], delimiter: str) -> list[str]:
    """One column's texts as written; several joined by ``delimiter`` (an empty part adds no delimiter at the
    ends: the AG News headline and description give exactly "title description")."""
    as_text = [["" if value is None else str(value) for value in column] for column in columns]
    if len(as_text) == 1:
        return as_text[0]
    return [delimiter.join(parts).strip() for parts in zip(*as_text)]


def _carve_missing_splits(splits: dict[str, Dataset], options: DataOptions, task: Task):
    """A test split (then a validation split) carved from train where the data has none."""
    carved = {}
    if "test" not in splits:
        if options.test_fraction <= 0:
            raise DataError(f"{options.source!r} has no test split and test_fraction is 0: give it a test file "
                            "(or split) or set test_fraction > 0 to carve one from train")
        splits["train"], splits["test"] = _split_off(splits["train"], options.test_fraction, options, task, "test")
        carved["test"] = _carving(options.test_fraction, task, options.seed, "train")
    if "validation" not in splits and options.validation_fraction > 0:
        splits["train"], splits["validation"] = _split_off(splits["train"], options.validation_fraction, options,
                                                           task, "validation")
        carved["validation"] = _carving(options.validation_fraction, task, options.seed,
                                        "what train kept" if "test" in carved else "train")
    return {name: splits[name] for name in ("train", "validation", "test") if name in splits}, carved


def _carving(fraction: float, task: Task, seed: int, source: str) -> str:
    how = "random" if task.problem_type == MULTI_LABEL else "stratified"
    return f"{fraction:.0%} of {source}, {how}, seed {seed}"


def _split_off(train: Dataset, fraction: float, options: DataOptions, task: Task, name: str):
    """``fraction`` of ``train`` as a new split, seeded; single-label splits keep each label's share."""
    held_out = math.ceil(fraction * len(train))
    if task.problem_type == MULTI_LABEL:
        parts = train.train_test_split(test_size=fraction, seed=options.seed)
        return parts["train"], parts["test"]
    counts = np.bincount(np.asarray(train["label"]), minlength=len(task.labels))
    if held_out < np.count_nonzero(counts >= 2):
        raise DataError(f"{name}: {fraction:g} of {len(train)} training rows is {held_out} rows, fewer than the "
                        f"{np.count_nonzero(counts >= 2)} labels a stratified split gives one row each; raise "
                        f"{name}_fraction or give the data a {name} split")
    # A label with a single row stays in train: a stratified split cannot share it out, and a label only in
    # the held-out split would be one the model never trains on.
    alone = counts[np.asarray(train["label"])] < 2
    parts = train.select(np.flatnonzero(~alone)).train_test_split(
        test_size=fraction, stratify_by_column="label", seed=options.seed)
    kept = parts["train"] if not alone.any() else datasets.concatenate_datasets(
        [parts["train"], train.select(np.flatnonzero(alone))])
    return kept, parts["test"]


def _with_headline_views(train: Dataset, source: str) -> Dataset:
    """The articles, then each one's headline alone and description alone (where it has both)."""
    if not set(_VIEW_PARTS) <= set(train.column_names):
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
    return split.select(evaluation_order(split)).remove_columns("length")


def evaluation_order(split: Dataset) -> np.ndarray:
    """The rows of a tokenized split by token count: the order in which its evaluation reads them."""
    return np.argsort(np.asarray(split["length"]), kind="stable")


class PaddingCollator:
    """Pads a batch to its longest example, rounded up to a multiple of 8 (tensor-core friendly shapes).

    A vectorised replacement for ``DataCollatorWithPadding``, whose per-example Python work starves a
    fast GPU at large batches; every key is padded with the right value and returned as int64 tensors. Labels
    are int64 indices, or float32 rows of 0/1 for multi-label data (what binary cross-entropy takes).
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
            labels = [example["labels"] for example in examples]
            multi_label = isinstance(labels[0], (list, tuple))
            batch["labels"] = torch.tensor(labels, dtype=torch.float32 if multi_label else torch.int64)
        return batch


def loss_class_weights(config, task: Task, train_labels, device: torch.device) -> torch.Tensor | None:
    """The loss's weight per label (a ``TrainConfig``'s class_weights), the same on every rank: it comes from the
    same data."""
    if config.class_weights == "none":
        return None
    if config.class_weights == "balanced":
        counts = task.label_counts(train_labels)
        if not counts.all():
            missing = [name for name, count in zip(task.labels, counts) if not count]
            raise ConfigError(f"class_weights=balanced: label(s) {', '.join(map(repr, missing))} have no training "
                              "rows, so no weight balances them; give the weights (one number per label) instead")
        weights = task.balanced_weights(train_labels)
    else:
        weights = config.class_weight_values()
        if len(weights) != len(task.labels):
            raise ConfigError(f"class_weights={config.class_weights!r} gives {len(weights)} weight(s), but the data "
                              f"has {len(task.labels)} labels ({', '.join(task.labels)}): give one per label, in "
                              "that order")
    return torch.tensor(weights, dtype=torch.float32, device=device)
