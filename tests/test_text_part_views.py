"""Text part views: each training text also as its opening words and as the rest, on train only."""

from __future__ import annotations

import json

from datasets import ClassLabel, Dataset, Features, Value

from conftest import tiny_train_args
from distrinews.data import LABEL_NAMES, add_text_part_views
from distrinews.train import main as train_main

FEATURES = Features({"text": Value("string"), "label": ClassLabel(names=list(LABEL_NAMES))})


def _train_split(texts: list[str]) -> Dataset:
    return Dataset.from_dict({"text": texts, "label": [i % 4 for i in range(len(texts))]}, features=FEATURES)


def test_two_views_per_text_that_rejoin_to_it():
    texts = [" ".join(f"w{i}_{j}" for j in range(4 + i % 37)) for i in range(200)] + ["single"]
    train = _train_split(texts)
    augmented = add_text_part_views(train, seed=0)
    assert augmented.features == train.features
    assert augmented[:len(train)] == train[:]  # the originals come first, unchanged
    views = augmented.select(range(len(train), len(augmented)))
    assert len(views) == 2 * 200  # the one-word text gets none
    for i in range(200):
        head, rest = views[2 * i], views[2 * i + 1]
        assert head["label"] == rest["label"] == train[i]["label"]
        words = train[i]["text"].split()
        assert head["text"].split() + rest["text"].split() == words
        cut = len(head["text"].split())
        assert 1 <= cut <= len(words) - 1
        assert round(0.15 * len(words)) - 1 <= cut <= round(0.5 * len(words)) + 1


def test_cuts_are_drawn_per_text_and_repeat_with_the_seed():
    train = _train_split([" ".join(["word"] * 40)] * 100)
    cuts = [len(row["text"].split()) for row in add_text_part_views(train, seed=0).select(range(100, 300, 2))]
    assert len(set(cuts)) > 5  # 15-50% of 40 words: 6..20
    again = [len(row["text"].split()) for row in add_text_part_views(train, seed=0).select(range(100, 300, 2))]
    other = [len(row["text"].split()) for row in add_text_part_views(train, seed=1).select(range(100, 300, 2))]
    assert cuts == again and cuts != other


def test_training_run_adds_views_to_train_only(tiny_model, ag_news_dir, tmp_path):
    output_dir = tmp_path / "out"
    assert train_main(tiny_train_args(tiny_model, ag_news_dir, output_dir, text_part_views="true",
                                      num_train_epochs=1, validation_fraction=0.1)) == 0
    metrics = json.loads((output_dir / "metrics.json").read_text())
    # 240 rows, 24 held out for validation before the views: 216 texts + 2 views each (every text has >= 2 words).
    assert metrics["train"]["train_examples"] == 3 * 216
    assert metrics["validation"]["num_examples"] == 24 and metrics["test"]["num_examples"] == 61
    card = (output_dir / "model" / "README.md").read_text()
    assert "| text part views | each training text also trained on as its opening words" in card
