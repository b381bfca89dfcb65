"""The typed training config: defaults, files, flags, validation messages."""

from __future__ import annotations

import json

import pytest

from distrinews.training.config import ConfigError, TrainConfig, parse_train_config


def test_defaults_are_the_documented_recipe():
    config = TrainConfig()
    assert config.model_name_or_path == "distilbert-base-uncased"
    assert config.resume == "auto"
    assert config.total_train_batch_size(num_processes=2) == 64


def test_flags_override_file_which_overrides_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 3.0e-5\nnum_train_epochs: 2\nseed: 5\n")
    config = parse_train_config(["--config", str(path), "--seed", "9", "--push_to_hub", "false"])
    assert (config.learning_rate, config.num_train_epochs, config.seed, config.push_to_hub) == (3e-5, 2.0, 9, False)


def test_json_config_and_bare_boolean_flag(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"hub_model_id": "me/news"}))
    assert parse_train_config(["--config", str(path), "--push_to_hub"]).push_to_hub is True


def test_saved_config_loads_back(tmp_path):
    config = TrainConfig(learning_rate=1e-4, output_dir=str(tmp_path / "out"))
    config.save(tmp_path / "train_config.json")
    assert parse_train_config(["--config", str(tmp_path / "train_config.json")]) == config


@pytest.mark.parametrize("flags, message", [
    (["--learning_rate", "-1"], "learning_rate=-1.0: must be in (0, 1)"),
    (["--per_device_train_batch_size", "0"], "per_device_train_batch_size=0: must be >= 1"),
    (["--lr_scheduler_type", "wobbly"], "lr_scheduler_type='wobbly': must be one of"),
    (["--warmup_ratio", "1.5"], "warmup_ratio=1.5: must be in [0, 1)"),
    (["--push_to_hub"], "hub_model_id='': push_to_hub needs hub_model_id as USER/NAME"),
    (["--hub_strategy", "checkpoint"], "hub_model_id='': hub_strategy=checkpoint needs hub_model_id as USER/NAME"),
    (["--hub_strategy", "every_save", "--hub_model_id", "me/news"], "hub_strategy='every_save': must be one of end, "
                                                                      "checkpoint"),
    (["--resume", "/no/such/checkpoint"], "resume='/no/such/checkpoint'"),
    (["--max_length", "12.5"], "max_length='12.5': expected int"),
    (["--group_by_length", "maybe"], "group_by_length='maybe': expected true or false"),
    (["--learning_rate", "nan"], "learning_rate='nan': must be a finite number"),
    (["--head_learning_rate", "-0.1"], "head_learning_rate=-0.1: must be in [0, 1)"),
    (["--layer_lr_decay", "0"], "layer_lr_decay=0.0: must be in (0, 1]"),
    (["--validation_fraction", "1"], "validation_fraction=1.0: must be in [0, 1)"),
    (["--problem_type", "multi_label"], "problem_type='multi_label': must be one of single_label_classification, "
                                        "multi_label_classification"),
    (["--metric_for_best_model", "micro_f1"], "metric_for_best_model='micro_f1': must be one of auto, accuracy, "
                                              "macro_f1, loss for problem_type=single_label_classification"),
    (["--class_weights", "1,-2"], "class_weights='1,-2': must be none, balanced or positive numbers"),
    (["--label_names", "a,a"], "label_names='a,a': must be distinct, non-empty names"),
    (["--label_separator", "|"], "label_separator='|': applies to problem_type=multi_label_classification only"),
    (["--decision_threshold", "0.4"], "decision_threshold=0.4: applies to problem_type=multi_label_classification"),
    (["--test_fraction", "0.96"], "test_fraction=0.96: with validation_fraction=0.05 leaves no training rows"),
    (["--early_stopping_patience", "-1"], "early_stopping_patience=-1: must be >= 0"),
])
def test_bad_values_name_the_field(flags, message):
    with pytest.raises(ConfigError) as caught:
        parse_train_config(flags)
    assert message in str(caught.value)


def test_unknown_key_in_file_is_an_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rat: 1.0e-4\n")
    with pytest.raises(ConfigError, match="unknown field.*learning_rat"):
        parse_train_config(["--config", str(path)])


def test_unknown_flag_is_an_error():
    with pytest.raises(SystemExit):
        parse_train_config(["--learning_rat", "1e-4"])


def test_resume_from_an_incomplete_checkpoint_is_a_one_line_error(tiny_model, ag_news_dir, tmp_path, capsys):
    from conftest import tiny_train_args
    from distrinews.cli import main as cli_main

    half_written = tmp_path / "step-00000004"
    half_written.mkdir()
    code = cli_main(["train", *tiny_train_args(tiny_model, ag_news_dir, tmp_path / "out", resume=half_written)])
    assert code == 2
    assert "is not a complete checkpoint (no COMPLETE marker)" in capsys.readouterr().err
