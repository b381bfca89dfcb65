"""Every command and entry point answers --help with each option's default and allowed values, as a user runs it
(a subprocess, the installed console script and ``python -m``), and ``distrinews`` alone lists its commands."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from distrinews import __version__
from distrinews.cli import COMMANDS
from distrinews.training.config import TrainConfig

DISTRINEWS = shutil.which("distrinews") or pytest.fail("the distrinews console script is not installed")


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_prints_its_help(command):
    result = _run(DISTRINEWS, command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"usage: distrinews {command}" in result.stdout and "Traceback" not in result.stderr


def test_train_help_shows_every_field_with_its_default_and_choices():
    for command in ([DISTRINEWS, "train", "--help"], [sys.executable, "-m", "distrinews.train", "--help"]):
        result = _run(*command)
        assert result.returncode == 0, result.stderr
        text = " ".join(result.stdout.split())  # argparse wraps lines
        for field in dataclasses.fields(TrainConfig):
            assert f"--{field.name}" in text and f"(default: {field.default!r})" in text, field.name
        assert "{linear,cosine,cosine_with_restarts,polynomial,constant,constant_with_warmup}" in text
        assert "--no_group_by_length" in text and "5% of train" in text


def test_no_boolean_flags_and_hyphen_aliases_parse():
    from distrinews.training.config import parse_train_config

    assert parse_train_config(["--no_group_by_length"]).group_by_length is False
    assert parse_train_config(["--group_by_length", "--no_cpu_dropout_masks"]).cpu_dropout_masks is False
    from distrinews.core.errors import ConfigError

    with pytest.raises(ConfigError, match="lr_scheduler_type='sideways': must be one of linear, cosine"):
        parse_train_config(["--lr_scheduler_type", "sideways"])


def test_distrinews_alone_lists_the_commands_and_version_prints():
    alone = _run(DISTRINEWS)
    assert alone.returncode == 2 and all(name in alone.stderr for name in COMMANDS)
    listed = _run(sys.executable, "-m", "distrinews", "--help")
    assert listed.returncode == 0 and listed.stdout.count("\n  ") >= len(COMMANDS)
    assert _run(DISTRINEWS, "--version").stdout.strip() == f"distrinews {__version__}"
    unknown = _run(DISTRINEWS, "trian")
    assert unknown.returncode == 2 and "unknown command 'trian'" in unknown.stderr


@pytest.mark.parametrize("script", ["bench_train.py", "bench_inference.py", "bench_multi_label.py", "bench_trust.py",
                                    "profile_train.py", "profile_serving.py"])
def test_benchmark_scripts_print_their_help(script):
    result = _run(sys.executable, str(REPO_ROOT / "benchmarks" / script), "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage:"), result.stderr


@pytest.mark.parametrize("case", ["push: malformed repo id", "push: no model in the run folder",
                                  "deploy-space: a staging folder that cannot be made", "export-onnx: no such folder"])
def test_bad_input_to_a_command_is_one_line_and_exit_code_2(case, tmp_path):
    (tmp_path / "a-file").write_text("in the way")
    (tmp_path / "empty-run").mkdir()
    command, expected = {
        "push: malformed repo id": (["push", str(tmp_path / "empty-run"), "--repo_id", "not a repo"],
                                    "error: repo id 'not a repo' must look like USER/NAME"),
        "push: no model in the run folder": (["push", str(tmp_path / "empty-run"), "--repo_id", "me/news"],
                                             f"error: {tmp_path / 'empty-run' / 'model'} holds no saved model"),
        "deploy-space: a staging folder that cannot be made": (
            ["deploy-space", "me/space", "--model_id", "me/news", "--stage_only", str(tmp_path / "a-file" / "space")],
            f"error: cannot create the staging folder {tmp_path / 'a-file' / 'space'}: "),
        "export-onnx: no such folder": (["export-onnx", str(tmp_path / "missing")],
                                        f"error: {tmp_path / 'missing'} is not a folder"),
    }[case]
    result = _run(DISTRINEWS, *command)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(expected) and result.stderr.count("\n") == 1, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file", "empty-run"]  # nothing was written


def test_evaluate_takes_the_training_configs_data_flags(tmp_path, capsys):
    from distrinews.cli import EVALUATE_FIELDS, main as cli_main

    result = _run(DISTRINEWS, "evaluate", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps lines
    fields = {field.name: field for field in dataclasses.fields(TrainConfig)}
    for name in EVALUATE_FIELDS:  # the field's own help and default
        field = fields[name]
        assert f"--{name}" in text and " ".join(f"{field.metadata['help']} (default: {field.default!r})".split()) \
            in text, name
    # and its own bounds, checked before any model loads
    assert cli_main(["evaluate", "--model", str(tmp_path / "no-model"), "--validation_fraction", "1.5"]) == 2
    assert capsys.readouterr().err.startswith("error: validation_fraction=1.5: must be in [0, 1)")
