"""Labels, columns and splits from the data itself: files written as pandas and spreadsheet users write them, read
back into labelled splits and a task, and every way such data can be wrong refused by file, row and label."""

from __future__ import annotations

import json

import datasets
import pandas as pd
import pytest

from conftest import tiny_train_args
from distrinews.cli import main as cli_main
from distrinews.core.errors import DataError
from distrinews.training.data import DataOptions, load_labelled_data
from labelled_data import multi_label_rows, single_label_rows

MULTI = "multi_label_classification"
EXCEL = {"encoding": "utf-8-sig", "lineterminator": "\r\n"}  # Excel's "CSV UTF-8 (Comma delimited)"


def _folder(tmp_path, files: dict[str, pd.DataFrame], writer: str = "csv"):
    folder = tmp_path / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for split, frame in files.items():
        if writer == "csv":
            frame.to_csv(folder / f"{split}.csv", index=False, **EXCEL)
        elif writer == "jsonl":
            frame.to_json(folder / f"{split}.jsonl", orient="records", lines=True)
        else:
            frame.to_parquet(folder / f"{split}.parquet")
    return folder


def _load(folder, **options):
    return load_labelled_data(DataOptions(str(folder), **{"validation_fraction": 0, "seed": 0, **options}))


def test_string_labels_are_sorted_whatever_the_row_order(tmp_path):
    train = single_label_rows(["spam", "ham"], [30, 40], seed=1)
    first = _load(_folder(tmp_path / "a", {"train": train, "test": train.head(9)}))
    shuffled = train.sample(frac=1, random_state=3)
    second = _load(_folder(tmp_path / "b", {"train": shuffled, "test": shuffled.head(9)}))
    assert first.task.labels == second.task.labels == ("ham", "spam")
    assert first.task.problem_type == "single_label_classification"
    names = first.splits["train"].features["label"].names
    assert [names[i] for i in first.splits["train"]["label"]] == list(train["label"])


def test_integer_labels_take_label_names_or_transformers_defaults(tmp_path):
    train = single_label_rows([0, 1, 2, 3, 4], [8] * 5, seed=2)
    folder = _folder(tmp_path, {"train": train, "test": train.head(10)}, writer="parquet")
    named = _load(folder, label_names=("politics", "sport", "tech", "business", "entertainment"))
    assert named.task.labels == ("politics", "sport", "tech", "business", "entertainment")
    assert named.splits["train"]["label"] == list(train["label"])
    assert _load(folder).task.labels == tuple(f"LABEL_{i}" for i in range(5))


def test_true_false_labels_are_named_false_and_true(tmp_path):
    frame = pd.DataFrame({"text": ["free money now", "lunch at noon?", "win a prize", "see you"],
                          "is_spam": [True, False, True, False]})
    loaded = _load(_folder(tmp_path, {"train": frame, "test": frame}, writer="jsonl"), label_column="is_spam")
    assert loaded.task.labels == ("false", "true") and loaded.splits["train"]["label"] == [1, 0, 1, 0]


def test_class_label_names_and_lists_of_them_come_from_the_features(tmp_path):
    """What a Hub dataset holds: ClassLabel (and Sequence(ClassLabel)) columns, in their own order."""
    folder = tmp_path / "data"
    folder.mkdir()
    topics = datasets.ClassLabel(names=["world", "sport", "tech"])
    features = datasets.Features({"text": datasets.Value("string"), "label": topics,
                                  "tags": datasets.Sequence(topics)})
    rows = {"text": ["a b", "c d", "e f", "g h"], "label": [2, 0, 1, 2], "tags": [[2, 0], [], [1], [0, 1, 2]]}
    for split in ("train", "test"):
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / f"{split}.parquet"))
    single = _load(folder)
    assert single.task.labels == ("world", "sport", "tech") and single.splits["test"]["label"] == [2, 0, 1, 2]
    multi = _load(folder, problem_type=MULTI, label_column="tags")
    assert multi.task.labels == ("world", "sport", "tech")
    assert multi.splits["train"]["label"] == [[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]]


def test_multi_label_lists_and_separated_csv_cells_give_the_same_rows(tmp_path):
    frame = multi_label_rows(["sport", "tech", "world"], 40, seed=4, column="topics")
    lists = _load(_folder(tmp_path / "jsonl", {"train": frame, "test": frame.head(5)}, writer="jsonl"),
                  problem_type=MULTI, label_column="topics")
    cells = frame.assign(topics=frame["topics"].map("|".join))  # a row without a topic is an empty cell
    csv = _load(_folder(tmp_path / "csv", {"train": cells, "test": cells.head(5)}), problem_type=MULTI,
                label_column="topics", label_separator="|")
    assert lists.task.labels == csv.task.labels == ("sport", "tech", "world")
    assert lists.splits["train"]["label"] == csv.splits["train"]["label"]
    assert [0, 0, 0] in lists.splits["train"]["label"]  # rows with no label are kept
    with pytest.raises(DataError, match=r"train\.csv: row \d+: label '[a-z|]+' is not a list of labels; .* "
                                        r"--label_separator"):
        _load(tmp_path / "csv" / "data", problem_type=MULTI, label_column="topics")


def test_text_columns_are_joined_and_the_label_column_named(tmp_path):
    frame = pd.DataFrame({"title": ["Cup final", "Oil up", "Rates held", "Goal!"],
                          "content": ["Late goal.", "", "x", "y"], "category": ["sport", "business", "business", "sport"]})
    loaded = _load(_folder(tmp_path, {"train": frame, "test": frame}), text_columns=("title", "content"),
                   label_column="category", text_delimiter=" - ")
    assert loaded.splits["train"]["text"][:2] == ["Cup final - Late goal.", "Oil up -"]
    with pytest.raises(DataError, match=r"train\.csv: missing column\(s\) text, label \(found: title, content, "
                                        r"category\); name the columns with --text_column_names"):
        _load(tmp_path / "data")


def test_without_a_test_split_one_is_carved_from_train_and_reported(tmp_path):
    train = single_label_rows(["a", "b", "c"], [40, 20, 1], seed=5)  # 'c' has a single row
    folder = _folder(tmp_path, {"train": train})
    loaded = _load(folder, test_fraction=0.2, validation_fraction=0.1)
    sizes = {name: len(split) for name, split in loaded.splits.items()}
    assert sizes == {"train": 44, "validation": 5, "test": 12} and sum(sizes.values()) == 61
    assert loaded.carved == {"test": "20% of train, stratified, seed 0",
                             "validation": "10% of what train kept, stratified, seed 0"}
    assert loaded.summary()["carved_splits"] == loaded.carved
    test_labels = loaded.splits["test"]["label"]
    assert test_labels.count(0) == 8 and test_labels.count(1) == 4  # each label's share
    assert 2 in loaded.splits["train"]["label"]  # the single row stays in train
    again = _load(folder, test_fraction=0.2, validation_fraction=0.1)
    assert again.splits["test"]["text"] == loaded.splits["test"]["text"]  # seeded
    with pytest.raises(DataError, match="has no test split and test_fraction is 0"):
        _load(folder, test_fraction=0)


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.mark.parametrize("case", ["unseen_in_test", "single_class", "mixed_types_jsonl", "mixed_types_csv",
                                  "gap_in_integers"])
def test_bad_labels_stop_before_anything_is_written(case, tiny_model, tmp_path, capsys):
    data = tmp_path / "data"
    rows = [{"text": f"story {i}", "label": ["sport", "tech"][i % 2]} for i in range(20)]
    if case == "unseen_in_test":
        _write_jsonl(data / "train.jsonl", rows)
        _write_jsonl(data / "test.jsonl", rows[:3] + [{"text": "new", "label": "weather"}])
        expected = "test.jsonl: row 4: label 'weather' never appears in the training rows"
    elif case == "single_class":
        _write_jsonl(data / "train.jsonl", [{**row, "label": "sport"} for row in rows])
        expected = "train.jsonl: the training rows hold 1 distinct label(s) ('sport'); a classifier needs at least 2"
    elif case == "mixed_types_jsonl":
        rows[6]["label"] = 3
        _write_jsonl(data / "train.jsonl", rows)
        expected = "train.jsonl: row 7: label 3 is an integer, but row 1's label 'sport' is a name"
    elif case == "mixed_types_csv":
        frame = pd.DataFrame(rows)
        frame.loc[11, "label"] = "2"
        data.mkdir()
        frame.to_csv(data / "train.csv", index=False)
        expected = "train.csv: row 13: label 2 is an integer, but row 2's label 'sport' is a name"
    else:
        _write_jsonl(data / "train.jsonl", [{**row, "label": [0, 1, 3][i % 3]} for i, row in enumerate(rows)])
        expected = "train.jsonl: row 3: label 3 skips label(s) 2, which no training row has"
    output_dir = tmp_path / "out"
    assert cli_main(["train", *tiny_train_args(tiny_model, data, output_dir)]) == 2
    message = capsys.readouterr().err
    (error,) = [line for line in message.splitlines() if "error:" in line]  # one line, no traceback
    assert expected in error and "Traceback" not in message, message
    assert not output_dir.exists()
