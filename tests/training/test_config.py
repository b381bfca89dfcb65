"""The typed training config: defaults, files, flags, validation messages."""

from __future__ import annotations

import dataclasses
import json
import math

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


BOUNDED = [f for f in dataclasses.fields(TrainConfig) if f.metadata["bounds"] is not None]
CHOOSING = [f for f in dataclasses.fields(TrainConfig) if f.metadata["choices"]]


def _just_outside(bounds, number_type) -> list:
    """The nearest values beyond each end of ``bounds`` (an integer step for int fields, one float ulp else)."""
    below = (lambda x: x - 1) if number_type == "int" else (lambda x: math.nextafter(x, -math.inf))
    above = (lambda x: x + 1) if number_type == "int" else (lambda x: math.nextafter(x, math.inf))
    values = []
    if bounds.low is not None:
        values.append(bounds.low if bounds.low_open else below(bounds.low))
    if bounds.high is not None:
        values.append(bounds.high if bounds.high_open else above(bounds.high))
    return values


def _valid_around(name: str) -> dict:
    # num_train_epochs may be 0 only when max_steps counts the steps instead.
    return {"max_steps": 5} if name == "num_train_epochs" else {}


@pytest.mark.parametrize("field", BOUNDED, ids=[f.name for f in BOUNDED])
def test_every_number_field_refuses_the_values_just_outside_its_range(field):
    number_type = getattr(field.type, "__name__", field.type)
    for value in map(int if number_type == "int" else float, _just_outside(field.metadata["bounds"], number_type)):
        with pytest.raises(ConfigError) as caught:
            TrainConfig(**_valid_around(field.name), **{field.name: value})
        assert str(caught.value).startswith(f"{field.name}={value!r}: must be "), caught.value
    for inclusive in ("low", "high"):  # and takes its closed ends
        bound = getattr(field.metadata["bounds"], inclusive)
        if bound is not None and not getattr(field.metadata["bounds"], f"{inclusive}_open"):
            assert getattr(TrainConfig(**_valid_around(field.name), **{field.name: bound}), field.name) == bound


@pytest.mark.parametrize("field", CHOOSING, ids=[f.name for f in CHOOSING])
def test_every_choice_field_refuses_a_value_it_does_not_list(field):
    with pytest.raises(ConfigError, match=rf"^{field.name}='sideways': must be one of {', '.join(field.metadata['choices'])}$"):
        TrainConfig(**{field.name: "sideways"})


def test_seed_beyond_what_numpy_and_torch_take_is_refused_before_anything_loads():
    with pytest.raises(ConfigError, match=r"^seed=-5: must be in \[0, 4294967295\]$"):
        parse_train_config(["--seed", "-5"])
    assert TrainConfig(seed=2**32 - 1).seed == 2**32 - 1


def test_max_length_is_checked_against_the_model(tiny_model, ag_news_dir, tmp_path, capsys):
    from conftest import tiny_train_args
    from distrinews.training.loop import main as train_main

    # More than the model's 128 positions: cut to them, with a warning, as serving does (not a shape error).
    output_dir = tmp_path / "long"
    assert train_main(tiny_train_args(tiny_model, ag_news_dir, output_dir, max_length=100000, max_steps=2)) == 0
    assert f"warning: max_length=100000 is more than {tiny_model} reads (128 tokens); using 128" in \
        capsys.readouterr().out
    assert json.loads((output_dir / "train_config.json").read_text())["max_length"] == 128
    # No room for a single text token next to [CLS] and [SEP]: refused before anything is written.
    assert train_main(tiny_train_args(tiny_model, ag_news_dir, tmp_path / "short", max_length=2)) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith(f"error: max_length=2: must be > 2: {tiny_model} adds 2 special token(s)")
    assert not (tmp_path / "short").exists()
