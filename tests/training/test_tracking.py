"""report_to: a real 2-process run logs its config, training scalars and evaluations to TensorBoard, read back
with TensorBoard's own reader; a tracker whose package is missing is a clear error before anything is written."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

from conftest import TWO_PROCESS_STEPS, tiny_train_args
from distrinews.cli import main as cli_main

TRAIN_TAGS = ["train/loss", "train/learning_rate", "train/samples_per_second", "train/epoch"]


def _scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})  # 0: keep every event
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_two_process_run_logs_to_tensorboard(two_process_run):
    output_dir, _ = two_process_run  # conftest.TWO_PROCESS_RUN: report_to=tensorboard, run_name=tiny-run
    logged = [step for step in range(1, TWO_PROCESS_STEPS + 1) if step % 3 == 0] + [TWO_PROCESS_STEPS]
    # Every 4 steps and at each epoch's end (step 13 of 2 x 13).
    validated = sorted({step for step in range(4, TWO_PROCESS_STEPS + 1, 4)} | {13, TWO_PROCESS_STEPS})

    run_dir = output_dir / "runs" / "tiny-run"
    # One writer: only the main process logs (a second rank would add its own events file).
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    scalars = _scalars(run_dir)
    assert sorted(scalars) == sorted(TRAIN_TAGS + ["eval/accuracy", "eval/macro_f1", "eval/loss", "test/accuracy",
                                                   "test/macro_f1", "test/loss"])

    log = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
    train = [r for r in log if r["type"] == "train"]
    evals = [r for r in log if r["type"] == "eval" and r["split"] == "validation" and not r.get("final")]
    assert [r["step"] for r in train] == logged
    assert [r["step"] for r in evals] == validated
    for tag, key in zip(TRAIN_TAGS, ("loss", "lr", "samples_per_s", "epoch")):
        assert [step for step, _ in scalars[tag]] == logged, tag
        assert [value for _, value in scalars[tag]] == pytest.approx([r[key] for r in train], rel=1e-6), tag
    assert [step for step, _ in scalars["eval/accuracy"]] == validated
    assert [value for _, value in scalars["eval/accuracy"]] == pytest.approx([r["accuracy"] for r in evals])
    test_accuracy = json.loads((output_dir / "metrics.json").read_text())["test"]["accuracy"]
    assert scalars["test/accuracy"] == [(TWO_PROCESS_STEPS, pytest.approx(test_accuracy))]

    # The resolved config, as the trackers stored it (TensorBoard's hparams, with accelerate's hparams.yml copy).
    [hparams_file] = run_dir.glob("*/hparams.yml")
    hparams = yaml.safe_load(hparams_file.read_text())
    assert hparams["report_to"] == "tensorboard" and hparams["run_name"] == "tiny-run"
    assert hparams["num_processes"] == 2 and hparams["total_steps"] == TWO_PROCESS_STEPS
    assert hparams["total_train_batch_size"] == 16


@pytest.mark.parametrize("tracker", ["wandb", "trackio"])
def test_missing_tracker_package_is_a_clear_error(tracker, tiny_model, ag_news_dir, tmp_path, capsys):
    if importlib.util.find_spec(tracker) is not None:
        pytest.skip(f"{tracker} is installed here")
    output_dir = tmp_path / "out"
    code = cli_main(["train", *tiny_train_args(tiny_model, ag_news_dir, output_dir, report_to=tracker)])
    message = capsys.readouterr().err
    assert code == 2
    assert f"report_to={tracker}: the {tracker} package is not installed" in message, message
    assert message.rstrip().endswith(f"pip install {tracker}"), message
    assert not output_dir.exists()
