"""validation_fraction=0: no validation split, every training row is trained on; the outputs say so."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import load_splits, tiny_train_args
from distrinews.cli import main as cli_main
from distrinews.training.reporting import metrics_markdown_table
from distrinews.training.loop import main as train_main

TRAIN_ROWS = 240  # conftest's train.csv


def test_fraction_zero_keeps_every_row_for_training(ag_news_dir):
    splits = load_splits(ag_news_dir, validation_fraction=0, seed=0)
    assert set(splits) == {"train", "test"}
    assert len(splits["train"]) == TRAIN_ROWS


def test_a_validation_file_is_still_used(ag_news_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(ag_news_dir, data)
    shutil.copyfile(data / "test.csv", data / "validation.csv")
    splits = load_splits(data, validation_fraction=0, seed=0)
    assert len(splits["train"]) == TRAIN_ROWS and len(splits["validation"]) == len(splits["test"]) == 61


@pytest.fixture(scope="module")
def run_without_validation(tiny_model, ag_news_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run") / "out"
    assert train_main(tiny_train_args(tiny_model, ag_news_dir, output_dir, validation_fraction=0,
                                      num_train_epochs=1, head_learning_rate=0.01)) == 0
    return output_dir


def test_a_run_without_validation_reports_test_only(run_without_validation):
    output_dir = run_without_validation
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["validation"] is None
    assert metrics["train"]["train_examples"] == TRAIN_ROWS
    assert metrics["test"]["num_examples"] == 61
    records = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
    assert [record["split"] for record in records if record["type"] == "eval"] == ["test"]  # once, at the end
    card = (output_dir / "model" / "README.md").read_text()
    assert "Validation: none (`validation_fraction=0`)" in card
    assert "| validation |" not in card and "Validation per class" not in card
    assert f"{TRAIN_ROWS:,} training examples (no validation split held out)" in card
    assert "| learning rate | 0.005 (task head 0.01), linear schedule" in card
    table = metrics_markdown_table(metrics)
    assert "| test | 61 |" in table and "validation" not in table


def test_best_validation_needs_a_validation_split(tiny_model, ag_news_dir, tmp_path, capsys):
    output_dir = tmp_path / "out"
    code = train_main(tiny_train_args(tiny_model, ag_news_dir, output_dir, validation_fraction=0,
                                      model_selection="best_validation"))
    assert code == 2
    assert "model_selection=best_validation needs a validation split" in capsys.readouterr().err
    assert not output_dir.exists()


def test_evaluate_command_scores_the_saved_model(run_without_validation, ag_news_dir, tmp_path, capsys):
    output = tmp_path / "test_metrics.json"
    assert cli_main(["evaluate", "--model", str(run_without_validation / "model"), "--dataset", str(ag_news_dir),
                     "--max_length", "64", "--output", str(output)]) == 0
    assert "test: accuracy" in capsys.readouterr().out
    trained = json.loads((run_without_validation / "metrics.json").read_text())["test"]
    assert json.loads(output.read_text())["confusion_matrix"] == trained["confusion_matrix"]
    assert cli_main(["evaluate", "--model", str(run_without_validation / "model"), "--dataset", str(ag_news_dir),
                     "--split", "validation", "--validation_fraction", "0"]) == 2
    assert "has no validation split with --validation_fraction 0 (it has: train, test)" in capsys.readouterr().err
