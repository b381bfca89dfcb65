"""Pruning from each evaluation: a listener on the training loop that reports every validation result of a trial to
its Optuna study and stops the trial when the pruner says it will not beat the others.

The loop knows nothing of Optuna: ``TrialPruning`` answers ``on_evaluate`` (distrinews/training/callbacks.py) on the
main process, where it asks the study once, and the loop hands its answer to every rank, so all ranks stop at the
same step, as early stopping stops them: the trial writes its checkpoint, finishes like any run and says
``pruned at step N`` in its log, its metrics.json and the sweep's table.

A trial run in the sweep's own process gets the Optuna trial itself. A trial run through ``distrinews launch``
(``--launch``) is another process tree: the sweep describes the trial in the ``DISTRINEWS_SWEEP_TRIAL`` environment
variable (storage URL, study name, trial id, pruner settings), ``distrinews.train`` adds the listener when it is set,
and the main rank connects to the study's storage itself.

The default pruner is Optuna's ``MedianPruner``: a trial stops when its validation result at a step is worse than
the median of the finished trials' results at that step, once ``startup_trials`` trials have finished and after
the trial's own first ``warmup_evaluations`` evaluations.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass

from ..training.callbacks import TrainerCallback

TRIAL_ENV = "DISTRINEWS_SWEEP_TRIAL"
PRUNED = "pruned at step"  # how a pruned trial's training_ended begins
PRUNERS = ("median", "none")


@dataclass(frozen=True)
class PrunerSettings:
    kind: str = "median"  # one of PRUNERS
    startup_trials: int = 3  # finished trials before any trial is pruned
    warmup_evaluations: int = 1  # evaluations of a trial before it can be pruned

    def build(self):
        import optuna

        if self.kind == "none":
            return optuna.pruners.NopPruner()
        return optuna.pruners.MedianPruner(n_startup_trials=self.startup_trials, n_warmup_steps=0)


class TrialPruning(TrainerCallback):
    """Reports each validation evaluation (the selection metric at the global step) to an Optuna trial and stops
    the run when the trial should be pruned. ``trial`` is the Optuna trial, or None to connect to the one
    ``TRIAL_ENV`` names when training begins (main process only)."""

    def __init__(self, settings: PrunerSettings, trial=None, described: dict | None = None) -> None:
        self.settings = settings
        self.trial = trial
        self.described = described

    def on_train_begin(self, run) -> None:
        if self.trial is None and run.accelerator.is_main_process:
            self.trial = _connect(self.described, self.settings)

    def on_evaluate(self, run, metrics: dict) -> str | None:
        if not run.accelerator.is_main_process:
            return None
        step, metric = run.state.global_step, run.selection.metric
        with warnings.catch_warnings():  # a step reported before an interruption is kept as it was (the same value)
            warnings.filterwarnings("ignore", message="The reported value is ignored because")
            self.trial.report(metrics[metric], step)
        if _evaluations_so_far(run) <= self.settings.warmup_evaluations or not self.trial.should_prune():
            return None
        return (f"{PRUNED} {step}: validation {metric} {metrics[metric]:.4f} is worse than the median of the "
                "finished trials at this step (Optuna's MedianPruner)")


def describe_trial(storage_url: str, study_name: str, trial_id: int, settings: PrunerSettings) -> str:
    """``TRIAL_ENV``'s value for a trial run through ``distrinews launch``."""
    return json.dumps({"storage": storage_url, "study_name": study_name, "trial_id": trial_id,
                       "pruner": asdict(settings)})


def pruning_from_environment() -> list[TrainerCallback]:
    """The listener ``TRIAL_ENV`` asks for (a trial launched by ``distrinews sweep --launch``), or none."""
    if TRIAL_ENV not in os.environ:
        return []
    described = json.loads(os.environ[TRIAL_ENV])
    return [TrialPruning(PrunerSettings(**described["pruner"]), described=described)]


def _connect(described: dict, settings: PrunerSettings):
    import optuna

    study = optuna.load_study(study_name=described["study_name"], storage=described["storage"],
                              pruner=settings.build())
    return optuna.Trial(study, described["trial_id"])


def _evaluations_so_far(run) -> int:
    """This run's validation evaluations up to now, this one included, from its log (which a resume rewinds)."""
    return sum(1 for record in run.run_log.records()
               if record["type"] == "eval" and record.get("split") == "validation" and not record.get("final"))
