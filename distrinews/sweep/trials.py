"""One trial: an ordinary training run in its own folder, in this process or through ``distrinews launch``.

The sweep only decides the parameters and reads the result. The trial is ``distrinews train`` with the options every
trial shares, its parameters, ``--output_dir DIR/trial-NNNN`` and ``--resume auto``, so an interrupted trial continues
from its own newest checkpoint. Its result is what its folder says: ``metrics.json`` (how training ended, the steps,
the time) and ``log.jsonl`` (the validation result of the selected weights, the objective). Test is in metrics.json
too, as in any run, but the sweep reads it for the best trial only, once, at the end (report.py).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..core.errors import ConfigError
from .pruning import PRUNED, TRIAL_ENV, PrunerSettings, TrialPruning


@dataclass(frozen=True)
class Outcome:
    """How a trial ended: ``state`` complete, pruned or failed; ``value`` its objective (None unless complete)."""

    state: str
    value: float | None = None
    attrs: dict[str, Any] | None = None  # what the sweep's table shows: steps, time, how training ended


def trial_argv(train_argv: Sequence[str], params: dict[str, Any], folder: Path, run_name: str | None) -> list[str]:
    """The ``distrinews train`` options of a trial: the shared ones, its parameters, its folder and, unless the
    shared options name it, the trackers' run name (the sweep's: each trial is a run of it)."""
    flags = [part for name, value in params.items() for part in (f"--{name}", flag_value(value))]
    tracker_run = ["--run_name", run_name] if run_name else []
    return [*train_argv, *flags, "--output_dir", str(folder), "--resume", "auto", *tracker_run]


def flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)  # repr: the float itself, every digit


def run_in_process(argv: Sequence[str], trial, pruner: PrunerSettings, mixed_precision: str) -> None:
    """Train the trial in this process, the pruning listener holding the Optuna trial itself."""
    from ..hub.callbacks import hub_callbacks
    from ..training.config import parse_train_config
    from ..training.loop import train

    config = parse_train_config(argv)
    train(config, [*hub_callbacks(config), TrialPruning(pruner, trial=trial)], mixed_precision)


def run_launched(argv: Sequence[str], described: str, mixed_precision: str, main_process_port: int | None) -> int:
    """Train the trial through ``distrinews launch`` (every GPU, or 2 CPU processes); returns its exit code. The
    trial's main rank reports to the study itself (``described``: pruning.describe_trial)."""
    port = [] if main_process_port is None else ["--main_process_port", str(main_process_port)]
    command = [sys.executable, "-m", "distrinews", "launch", "--mixed_precision", mixed_precision, *port, *argv]
    process = subprocess.Popen(command, env={**os.environ, TRIAL_ENV: described}, preexec_fn=_stop_with_parent())
    # A SIGTERM to the sweep goes on to the trial, which stops with a checkpoint (exit 75). A Ctrl-C reaches the
    # whole process group at once, so the sweep only waits for the trial to stop.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: process.send_signal(signum))
    try:
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_with_parent():
    """A ``preexec_fn`` that makes the trial's launcher receive SIGTERM if the sweep dies, even of kill -9: it then
    stops the ranks with a checkpoint instead of training on, unseen, in the folder the next sweep resumes."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork: the child only calls it
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, int(signal.SIGTERM))


def read_outcome(folder: Path, metric: str) -> Outcome:
    """The result of the finished trial in ``folder``: pruned, or complete with its objective, the validation
    ``metric`` of the weights it selected (as the trial's log recorded it during training)."""
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    ended, step = metrics["training_ended"], metrics["global_step"]
    attrs = {"steps": step, "train_seconds": metrics["train"]["train_seconds"], "training_ended": ended}
    if ended.startswith(PRUNED):
        return Outcome("pruned", attrs={**attrs, "pruned_at": step})
    evaluations = [record for record in _log(folder) if record["type"] == "eval"
                   and record.get("split") == "validation" and not record.get("final")
                   and record["step"] == metrics["selected_step"]]
    if not evaluations:
        raise ConfigError(f"{folder}: no validation evaluation at the selected step {metrics['selected_step']}: a "
                          "sweep's objective is measured on validation (set validation_fraction > 0 or give the "
                          "data a validation split)")
    return Outcome("complete", value=float(evaluations[-1][metric]), attrs=attrs)


def failed(error: str) -> Outcome:
    return Outcome("failed", attrs={"error": error})


def _log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
