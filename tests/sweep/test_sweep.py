"""``distrinews sweep`` with the real Optuna, real processes and the tiny model: a 4-trial sweep in one process that
is killed with SIGKILL in the middle of a trial and run again, a sweep whose trials run through ``distrinews launch``
on 2 processes with a pruned trial, and bad search spaces refused before any trial starts.

The trials' parameters are queued in the study before the sweep starts (``enqueue_trial``, as a researcher seeds a
study with known points), so that which trial is pruned, and which one is killed, does not hang on TPE's draws. The
objective is the validation loss (minimized), which moves from the first steps on where accuracy on 24 rows does not.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, assert_same_weights, free_port, shared_folder, tiny_train_args

optuna = pytest.importorskip("optuna")

SEARCH_SPACE = """\
learning_rate: {low: 1.0e-7, high: 1.0e-2, log: true}
max_steps: {choices: [8, 12]}
"""
GOOD, BAD = 5e-3, 1e-7  # the tiny model's validation loss falls from step 6 on at GOOD; at BAD it stays put
# Trial 1 is the one killed: the only one with 12 steps, so the only one that writes a checkpoint at step 10, where
# the fault hook SIGKILLs the sweep's process (its trials run in it) before the checkpoint is complete. Trial 2 is
# worse than the median of the finished trials at its second evaluation, step 8, and is pruned there.
QUEUED = [{"learning_rate": GOOD, "max_steps": 8}, {"learning_rate": 8e-3, "max_steps": 12},
          {"learning_rate": BAD, "max_steps": 8}, {"learning_rate": GOOD, "max_steps": 12}]
KILLED, KILLED_AT, CHECKPOINT_BEFORE = 1, 10, 5
PRUNED_TRIAL, PRUNED_AT = 2, 8
SWEEP_RUN = dict(metric_for_best_model="loss", eval_every=4, checkpoint_every=CHECKPOINT_BEFORE, keep_last=5,
                 logging_steps=2)


def sweep_command(search_space: Path, output_dir: Path, n_trials: int, *options: str, **train) -> list[str]:
    model, data = train.pop("model"), train.pop("data")
    flags = tiny_train_args(model, data, output_dir, **{**SWEEP_RUN, **train})
    # The sweep's --output_dir is the sweep folder; the searched options are the trials' own.
    for name in ("--output_dir", "--learning_rate", "--num_train_epochs"):
        at = flags.index(name)
        del flags[at:at + 2]
    return [sys.executable, "-m", "distrinews", "sweep", "--search_space", str(search_space), "--n_trials",
            str(n_trials), "--output_dir", str(output_dir), "--pruner_startup_trials", "1", *options, *flags]


def queue_trials(output_dir: Path, params: list[dict]) -> None:
    output_dir.mkdir(parents=True)
    study = optuna.create_study(study_name=output_dir.name, storage=f"sqlite:///{output_dir / 'study.db'}",
                                direction="minimize")
    for values in params:
        study.enqueue_trial(values)


def run(command: list[str], extra_env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, **(extra_env or {})}, capture_output=True,
                          text=True, timeout=timeout)


def study_trials(output_dir: Path):
    return optuna.load_study(study_name=output_dir.name, storage=f"sqlite:///{output_dir / 'study.db'}").trials


def records(folder: Path, kind: str) -> list[dict]:
    lines = (folder / "log.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["type"] == kind]


@pytest.fixture(scope="session")
def killed_sweep(tiny_model, ag_news_dir, tmp_path_factory):
    """(sweep folder, first run, second run, trial-0000's metrics.json as the first run left it) of a 4-trial sweep
    in one process, killed in trial 1 and run again with the same command (read-only)."""
    def build(folder: Path) -> None:
        (folder / "space.yaml").parent.mkdir(parents=True)
        (folder / "space.yaml").write_text(SEARCH_SPACE)
        output_dir = folder / "sweep"
        queue_trials(output_dir, QUEUED)
        command = sweep_command(folder / "space.yaml", output_dir, 4, "--heartbeat_interval", "1",
                                model=tiny_model, data=ag_news_dir)
        first = run(command, {"DISTRINEWS_FAULT_INJECT": f"crash_during_checkpoint@{KILLED_AT}"})
        (folder / "first.txt").write_text(f"{first.returncode}\n{first.stdout}\n{first.stderr}")
        (folder / "trial-0000-metrics.json").write_bytes((output_dir / "trial-0000" / "metrics.json").read_bytes())
        second = run(command)
        (folder / "second.txt").write_text(f"{second.returncode}\n{second.stdout}\n{second.stderr}")

    folder = shared_folder(tmp_path_factory, "killed-sweep", build)
    first, second = ((folder / name).read_text() for name in ("first.txt", "second.txt"))
    return folder / "sweep", first, second, folder / "trial-0000-metrics.json"


def test_a_sweep_killed_in_a_trial_continues_it_and_ends_with_n_trials(killed_sweep):
    output_dir, first, second, metrics_before = killed_sweep
    assert first.startswith("-9\n"), first[-3000:]  # SIGKILL, in trial 1, with trial 0 finished
    assert second.startswith("0\n"), second[-3000:]
    assert sorted(path.name for path in output_dir.glob("trial-*")) == [f"trial-{n:04d}" for n in range(4)]
    # Optuna's record: trial 1 failed when its worker died (its heartbeat stopped) and was queued again as trial 4,
    # which ran in trial 1's folder; every folder ended once, complete or pruned.
    trials = study_trials(output_dir)
    states = {trial.number: (trial.state.name, trial.user_attrs.get("folder")) for trial in trials}
    assert states == {0: ("COMPLETE", "trial-0000"), 1: ("FAIL", "trial-0001"), 2: ("PRUNED", "trial-0002"),
                      3: ("COMPLETE", "trial-0003"), 4: ("COMPLETE", "trial-0001")}
    assert trials[4].params == trials[1].params == QUEUED[KILLED]
    # Nothing ran twice: the finished trial was left as it was, and the killed one continued from its checkpoint.
    assert (output_dir / "trial-0000" / "metrics.json").read_bytes() == metrics_before.read_bytes()
    assert [r["step"] for r in records(output_dir / "trial-0001", "resume")] == [CHECKPOINT_BEFORE]
    assert all(not records(output_dir / f"trial-{n:04d}", "resume") for n in (0, 2, 3))
    assert re.findall(r"^\| (\d+) \|", (output_dir / "trials.md").read_text(), re.MULTILINE) == ["0", "1", "2", "3"]


def test_the_killed_trial_equals_an_uninterrupted_run_with_its_parameters(killed_sweep, tmp_path):
    from distrinews.training.loop import main as train_main

    output_dir = killed_sweep[0]
    trial = output_dir / "trial-0001"
    assert train_main(["--config", str(trial / "train_config.json"), "--output_dir", str(tmp_path / "whole")]) == 0
    ours, theirs = (json.loads((folder / "metrics.json").read_text()) for folder in (trial, tmp_path / "whole"))
    assert ours["global_step"] == theirs["global_step"] == 12 and ours["validation"] == theirs["validation"]
    assert_same_weights(trial / "model" / "model.safetensors", tmp_path / "whole" / "model" / "model.safetensors")


def test_a_pruned_trial_stops_at_the_evaluation_and_says_so(killed_sweep):
    output_dir = killed_sweep[0]
    trial = output_dir / f"trial-{PRUNED_TRIAL:04d}"
    (stop,) = records(trial, "early_stop")
    assert stop["step"] == PRUNED_AT and stop["reason"].startswith(f"pruned at step {PRUNED_AT}: validation loss")
    metrics = json.loads((trial / "metrics.json").read_text())
    assert metrics["global_step"] == PRUNED_AT and metrics["training_ended"] == stop["reason"]
    assert (trial / "checkpoints" / f"step-{PRUNED_AT:08d}" / "COMPLETE").is_file()
    assert f"| pruned at step {PRUNED_AT} | {PRUNED_AT} |" in (output_dir / "trials.md").read_text()


def test_the_table_plots_and_best_trial(killed_sweep):
    output_dir = killed_sweep[0]
    trials = {trial.number: trial for trial in study_trials(output_dir)}
    with (output_dir / "trials.csv").open() as handle:
        rows = [line.split(",") for line in handle.read().splitlines()]
    assert rows[0] == ["trial", "folder", "learning_rate", "max_steps", "validation loss", "state", "steps",
                       "train_seconds"]
    assert [row[:4] for row in rows[1:]] == [[str(n), f"trial-{n:04d}", repr(QUEUED[n]["learning_rate"]),
                                              str(QUEUED[n]["max_steps"])] for n in range(4)]
    # The objective is the validation loss the trial's log recorded for the weights it kept (model_selection=last).
    for n in (0, 3):
        steps = QUEUED[n]["max_steps"]
        (last,) = [r for r in records(output_dir / f"trial-{n:04d}", "eval")
                   if r["step"] == steps and not r.get("final")]
        assert float(rows[1 + n][4]) == trials[n].value == last["loss"]
    assert {path.name for path in (output_dir / "plots").iterdir()} >= {"objective.png", "parameters.png"}
    best = json.loads((output_dir / "best.json").read_text())
    winner = min((trial for trial in trials.values() if trial.state.name == "COMPLETE"), key=lambda t: t.value)
    folder = winner.user_attrs["folder"]
    test = json.loads((output_dir / folder / "metrics.json").read_text())["test"]["loss"]
    assert (best["folder"], best["test_loss"]) == (str(output_dir / folder), test)
    assert f"\n**Best**: {folder}, validation loss " in (output_dir / "trials.md").read_text()
    assert f"test loss {test:.4f}" in (output_dir / "trials.md").read_text()


def test_best_prints_the_best_trials_command_line(killed_sweep, capsys):
    from distrinews.cli import main

    output_dir = killed_sweep[0]
    assert main(["sweep", "--best", "--output_dir", str(output_dir)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == json.loads((output_dir / "best.json").read_text())["command"]
    assert printed.startswith("distrinews train --model_name_or_path ") and "--metric_for_best_model loss" in printed


def test_trials_through_distrinews_launch_prune_on_both_ranks_at_the_same_step(tiny_model, ag_news_dir, tmp_path):
    (tmp_path / "space.yaml").write_text(SEARCH_SPACE)
    output_dir = tmp_path / "sweep"
    queue_trials(output_dir, [QUEUED[0], QUEUED[PRUNED_TRIAL]])
    # 2 processes of 8 rows a step: twice the batch, so validation falls sooner; the pruning step is the same.
    command = sweep_command(tmp_path / "space.yaml", output_dir, 2, "--launch", "--main_process_port",
                            str(free_port()), model=tiny_model, data=ag_news_dir)
    result = run(command, timeout=420)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    trials = study_trials(output_dir)
    assert [trial.state.name for trial in trials] == ["COMPLETE", "PRUNED"]
    # The trial's main rank reported each evaluation to the study itself (the sweep process only waited).
    assert sorted(trials[1].intermediate_values) == [4, PRUNED_AT] and trials[1].value == \
        trials[1].intermediate_values[PRUNED_AT]
    trial = output_dir / "trial-0001"
    metrics = json.loads((trial / "metrics.json").read_text())
    assert metrics["train"]["num_processes"] == 2
    assert metrics["global_step"] == PRUNED_AT and metrics["training_ended"].startswith(f"pruned at step {PRUNED_AT}")
    # Both ranks stopped at that step: each wrote its own state into the checkpoint there, and the run ended cleanly
    # (a rank that went on would have waited for the other in its next collective until the launch failed).
    checkpoint = trial / "checkpoints" / f"step-{PRUNED_AT:08d}"
    assert {"random_states_0.pkl", "random_states_1.pkl", "COMPLETE"} <= {p.name for p in checkpoint.iterdir()}
    assert not list((trial / "checkpoints").glob(f"step-{PRUNED_AT + 1:08d}"))


@pytest.mark.parametrize("space, error", [
    ("lerning_rate: {low: 1.0e-5, high: 1.0e-3}", "unknown option 'lerning_rate' (did you mean learning_rate?)"),
    ("warmup_ratio: {low: 0.0, high: 1.5}", "warmup_ratio: high=1.5: must be in [0, 1)"),
    ("lr_scheduler_type: {choices: []}", "lr_scheduler_type: choices must be a non-empty list"),
])
def test_bad_search_spaces_are_refused_in_seconds_before_any_trial(space, error, tmp_path):
    (tmp_path / "space.yaml").write_text(space + "\n")
    started = time.monotonic()
    result = run([sys.executable, "-m", "distrinews", "sweep", "--search_space", str(tmp_path / "space.yaml"),
                  "--n_trials", "4", "--output_dir", str(tmp_path / "sweep")])
    assert result.returncode == 2 and time.monotonic() - started < 20, result.stderr
    assert result.stderr == f"error: search space {tmp_path / 'space.yaml'}: {error}\n"
    assert not (tmp_path / "sweep").exists()  # no study, no trial


def test_a_run_without_a_sweep_never_imports_optuna():
    """The training entry point's listeners (the Hub's, and a sweep's pruning only in a trial a sweep launched)
    come without Optuna, which costs every run start-up time."""
    check = ("import sys; from distrinews.train import _listeners; from distrinews.training.config import TrainConfig; "
             "assert _listeners(TrainConfig()) == []; assert 'optuna' not in sys.modules, 'optuna was imported'")
    result = run([sys.executable, "-c", check])
    assert result.returncode == 0, result.stderr
