"""Model selection by metric_for_best_model and early stopping, in one process (in-process, no launcher): a run whose
metric cannot improve stops after exactly ``early_stopping_patience`` evaluations, and a run interrupted after the
first of them resumes to the same step with the same weights."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import assert_published_weights_are, assert_same_weights, shared_folder, tiny_train_args
from distrinews.training.loop import main as train_main

# 216 training rows / 16 per step = 13 steps per epoch. Validation every 4 steps; macro-F1 lies in [0, 1], so it can
# never improve by more than 1.0: evaluation 1 (step 4) sets the best, 2 and 3 (steps 8, 12) use up the patience.
RUN = dict(per_device_train_batch_size=16, eval_every=4, checkpoint_every=4, keep_last=20, logging_steps=1,
           model_selection="best_validation", metric_for_best_model="macro_f1", early_stopping_patience=2,
           early_stopping_threshold=1.0)
STOP_STEP = 12


def _records(output_dir, kind):
    return [r for r in map(json.loads, (output_dir / "log.jsonl").read_text().splitlines()) if r["type"] == kind]


@pytest.fixture(scope="session")
def stopped_run(tiny_model, ag_news_dir, tmp_path_factory):
    def train(folder):
        assert train_main(tiny_train_args(tiny_model, ag_news_dir, folder / "out", **RUN)) == 0

    return shared_folder(tmp_path_factory, "early-stopping-run", train) / "out"


def test_training_stops_after_patience_evaluations_without_improvement(stopped_run):
    metrics = json.loads((stopped_run / "metrics.json").read_text())
    assert metrics["global_step"] == STOP_STEP  # of 26 (2 epochs)
    evals = [r for r in _records(stopped_run, "eval") if not r.get("final")]
    assert [r["step"] for r in evals] == [4, 8, 12]
    (stop,) = _records(stopped_run, "early_stop")
    reason = ("early stopping: validation macro_f1 did not improve by more than 1 for 2 evaluation(s) in a row "
              f"(best {max(r['macro_f1'] for r in evals):.4f} at step {metrics['selected_step']})")
    assert stop == {**stop, "step": STOP_STEP, "reason": reason}
    assert metrics["training_ended"] == reason and _records(stopped_run, "end")[0]["reason"] == reason
    assert f"Training ended: {reason}." in (stopped_run / "model" / "README.md").read_text()
    # The training steps up to the stop are all logged, the last one too.
    assert [r["step"] for r in _records(stopped_run, "train")] == list(range(1, STOP_STEP + 1))
    assert (stopped_run / "checkpoints" / f"step-{STOP_STEP:08d}" / "COMPLETE").is_file()


def test_the_published_weights_are_the_best_macro_f1(stopped_run):
    metrics = json.loads((stopped_run / "metrics.json").read_text())
    evals = [r for r in _records(stopped_run, "eval") if not r.get("final")]
    best = max(evals, key=lambda r: (r["macro_f1"], -r["step"]))  # the first of equal values is kept
    assert metrics["metric_for_best_model"] == "macro_f1" and metrics["selected_step"] == best["step"]
    assert_published_weights_are(stopped_run / "best_model.safetensors", stopped_run)


@pytest.mark.parametrize("step", [8, STOP_STEP], ids=["after_the_first_evaluation_without_improvement",
                                                      "at_the_stop"])
def test_a_resumed_run_stops_at_the_same_step_with_the_same_weights(step, stopped_run, tiny_model, ag_news_dir,
                                                                     tmp_path):
    output_dir = tmp_path / "out"
    name = f"step-{step:08d}"
    shutil.copytree(stopped_run / "checkpoints" / name, output_dir / "checkpoints" / name)
    shutil.copy(stopped_run / "log.jsonl", output_dir / "log.jsonl")  # it went on past the checkpoint
    assert train_main(tiny_train_args(tiny_model, ag_news_dir, output_dir, **RUN)) == 0
    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (output_dir, stopped_run))
    assert (ours["global_step"], ours["selected_step"], ours["training_ended"]) == \
        (theirs["global_step"], theirs["selected_step"], theirs["training_ended"])
    assert ours["test"] == theirs["test"]
    assert_same_weights(stopped_run / "model" / "model.safetensors", output_dir / "model" / "model.safetensors")
    assert [r["step"] for r in _records(output_dir, "early_stop")] == [STOP_STEP]


def test_a_checkpoint_resumes_only_with_the_same_patience(stopped_run, tiny_model, ag_news_dir, tmp_path, capsys):
    """A setting that changes when training ends is part of the run signature, as every resume=same field is."""
    output_dir = tmp_path / "out"
    shutil.copytree(stopped_run / "checkpoints" / "step-00000008", output_dir / "checkpoints" / "step-00000008")
    assert train_main(tiny_train_args(tiny_model, ag_news_dir, output_dir,
                                      **{**RUN, "early_stopping_patience": 5})) == 2
    assert "early_stopping_patience: checkpoint 2, this run 5" in capsys.readouterr().err


def test_early_stopping_needs_a_validation_split(tiny_model, ag_news_dir, tmp_path, capsys):
    output_dir = tmp_path / "out"
    code = train_main(tiny_train_args(tiny_model, ag_news_dir, output_dir, validation_fraction=0,
                                      early_stopping_patience=2))
    assert code == 2
    assert "early_stopping_patience=2 needs a validation split" in capsys.readouterr().err
    assert not output_dir.exists()
