"""headline_views: each training article also as its headline alone and its description alone."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import load_splits, write_csv_rows
from distrinews.core.errors import DataError


def test_training_split_gains_each_headline_and_description_with_its_label(tmp_path):
    train = [("1", "Rebels seize town", "Fighting spread overnight."), ("2", "Cup final tonight", "Fans gather."),
             ("3", "", "A description with no headline."), ("4", "A headline with no description", "")]
    write_csv_rows(tmp_path / "data" / "train.csv", train)
    write_csv_rows(tmp_path / "data" / "test.csv", [("1", "Summit opens", "Leaders meet.")])
    splits = load_splits(tmp_path / "data", validation_fraction=0, seed=0, headline_views=True)
    rows = list(zip(splits["train"]["text"], splits["train"]["label"]))
    assert rows == [("Rebels seize town Fighting spread overnight.", 0), ("Cup final tonight Fans gather.", 1),
                    ("A description with no headline.", 2), ("A headline with no description", 3),
                    # views only where an article has both parts: a part alone would repeat the article
                    ("Rebels seize town", 0), ("Fighting spread overnight.", 0),
                    ("Cup final tonight", 1), ("Fans gather.", 1)]
    assert splits["test"]["text"] == ["Summit opens Leaders meet."]  # evaluation data is left as it is
    assert all(split.column_names == ["text", "label"] for split in splits.values())


def test_views_come_from_training_articles_only(ag_news_dir):
    """The validation split is carved out first: none of its headlines is trained on."""
    plain = load_splits(ag_news_dir, validation_fraction=0.2, seed=3)
    views = load_splits(ag_news_dir, validation_fraction=0.2, seed=3, headline_views=True)
    assert views["validation"]["text"] == plain["validation"]["text"]
    assert views["train"]["text"][:len(plain["train"])] == plain["train"]["text"]
    assert len(views["train"]) == 3 * len(plain["train"])  # every conftest row has both parts
    trained = set(views["train"]["text"])
    with (ag_news_dir / "train.csv").open(newline="", encoding="utf-8") as handle:
        headline_of = {f"{t} {d}": t for _, t, d in csv.reader(handle)}
    assert not any(headline_of[text] in trained for text in plain["validation"]["text"])


def test_data_with_one_text_per_row_is_refused_by_name(tmp_path):
    folder = tmp_path / "joined"
    folder.mkdir()
    rows = [{"text": "Rebels seize town", "label": 0}, {"text": "Cup final tonight", "label": 1}]
    for name in ("train", "test"):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError, match=r"headline_views needs .* has one text per row"):
        load_splits(folder, validation_fraction=0, seed=0, headline_views=True)
    assert len(load_splits(folder, validation_fraction=0, seed=0)["train"]) == 2  # fine without views


def test_training_run_uses_the_views(tiny_model, ag_news_dir, tmp_path, capsys):
    from conftest import tiny_train_args
    from distrinews.training.loop import main as train_main

    run = dict(num_train_epochs=1, validation_fraction=0, headline_views="true")
    assert train_main(tiny_train_args(tiny_model, ag_news_dir, tmp_path / "run", **run)) == 0
    assert "on 720 windows of 720 texts" in capsys.readouterr().out  # 240 articles, each with its headline and description
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "| headline views | each headline and each description also trained on alone |" in card
    assert "720 training examples (no validation split held out): the articles, then each headline" in card


def test_other_files_keep_only_text_and_label_whatever_else_they_hold(tmp_path):
    """Only the original CSVs hand their parts on: a file's own 'title' column, of any type, is not read."""
    folder = tmp_path / "extra-columns"
    folder.mkdir()
    rows = [{"text": "Rebels seize town", "label": label, "title": {"nested": 1}, "description": ["a", "list"]}
            for label in (0, 1)]
    for name in ("train", "test"):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert load_splits(folder, validation_fraction=0, seed=0)["train"].column_names == ["text", "label"]
    with pytest.raises(DataError, match="headline_views needs"):
        load_splits(folder, validation_fraction=0, seed=0, headline_views=True)
