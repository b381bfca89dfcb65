"""The study in its storage: opening it, handing out trials once, and keeping interrupted trials alive.

Everything a sweep knows lives in Optuna's RDB storage (``DIR/study.db`` by default, or ``--storage`` on PostgreSQL
for several workers), never in a worker's memory. Three rules make it survive the machine:

- Each trial of the study owns one folder, ``trial-NNNN`` (its number, a user attribute): an ordinary run folder
  with its own checkpoints, resumed with ``resume=auto``.
- A running trial's worker records a heartbeat in the storage. A trial whose heartbeat stops (the worker was
  killed, even with kill -9, or the machine died) is declared stale after the grace period, marked failed, and
  queued again by Optuna's ``RetryHeartbeatStaleTrialCallback`` with the same parameters, user attributes (so the
  same folder) and reported evaluations; the next worker to ask takes it up and continues the folder from its newest
  checkpoint, bitwise as ``--resume auto`` does (or starts it again, with the same parameters, if it had none).
  A worker that stops its trial itself (SIGTERM, an error) queues it again at once.
- The trial count counts each folder once: a study's first ``n_trials`` trials that are not retries (by number,
  which the storage hands out atomically) are the sweep's; a trial asked beyond them, when two workers ask for the
  last one at once, is marked ``surplus`` and failed without running.
"""

from __future__ import annotations

import json
import re
import threading
import time
import warnings
from typing import Any

from ..core.errors import ConfigError

SETTINGS_ATTR = "distrinews_sweep"  # the study's user attribute holding what the sweep was started with
FOLDER_ATTR = "folder"
SURPLUS_ATTR = "surplus"
RETRY_OF = "failed_trial"  # RetryHeartbeatStaleTrialCallback's system attribute: the first trial of the series
_OPEN_TRIES = 5  # workers creating the tables of a new database at once can collide; the loser tries again


def require_optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("distrinews sweep needs Optuna: pip install 'distrinews[sweep]' (optuna and the "
                          "PostgreSQL driver)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep says what happens in its own lines
    # The heartbeat API is marked experimental, and Optuna expects it with Study.optimize: here each worker asks for
    # its trials and beats for them itself (next_trial, Heartbeat), which is what optimize does inside.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    return optuna


def masked(url: str) -> str:
    """``url`` without its password, to print."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def open_study(url: str, name: str, direction: str, *, pruner, seed: int, heartbeat_interval: int):
    """The study ``name`` in the storage at ``url``, created if new; returns (storage, study)."""
    optuna = require_optuna()
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None, inherit_intermediate_values=True)
    for attempt in range(_OPEN_TRIES):
        try:
            storage = optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval,
                                                 heartbeat_stale_trial_callback=retry)
            study = optuna.create_study(storage=storage, study_name=name, direction=direction, load_if_exists=True,
                                        sampler=trial_sampler(seed, -1), pruner=pruner)
            return storage, study
        except Exception as err:  # noqa: BLE001 - SQLAlchemy's errors name the driver's problem; reported below
            if attempt == _OPEN_TRIES - 1:
                raise ConfigError(f"cannot open the study {name!r} in {masked(url)}: "
                                  f"{type(err).__name__}: {str(err).splitlines()[0]}") from None
            time.sleep(1 + attempt)


def check_settings(study, settings: dict[str, Any], where: str) -> dict[str, Any]:
    """Record what this sweep is (metric, direction, search space, the fixed training options) in a new study, or
    check that an existing one was started with the same; returns the study's record."""
    settings = json.loads(json.dumps(settings))  # as the storage gives it back
    saved = study.user_attrs.get(SETTINGS_ATTR)
    if saved is None:
        study.set_user_attr(SETTINGS_ATTR, settings)
        return settings
    compared = ("metric", "direction", "search_space", "fixed")
    differences = [key for key in compared if saved.get(key) != settings.get(key)]
    for key in differences:
        if isinstance(settings[key], dict) and isinstance(saved.get(key), dict):
            names = sorted(name for name in {*settings[key], *saved[key]}
                           if settings[key].get(name) != saved[key].get(name))
            differences[differences.index(key)] = f"{key} ({', '.join(names)})"
    if differences:
        raise ConfigError(f"the study {study.study_name!r} in {where} was started with other settings: "
                          f"{'; '.join(differences)} differ. Run the same command to continue it, or give another "
                          "--study_name or --output_dir for a new sweep")
    return saved


def trial_sampler(seed: int, number: int):
    """The sampler that draws trial ``number``'s parameters: TPE, seeded from the sweep's ``--seed`` and the trial's
    number. A sampler seeded once per process would replay the same draws in every process that opens the study (the
    sweep run again after an interruption, a second worker with the same seed) and train the same parameters twice."""
    import numpy as np

    optuna = require_optuna()
    return optuna.samplers.TPESampler(seed=int(np.random.SeedSequence([seed, number + 1]).generate_state(1)[0]))


def next_trial(study, storage, n_trials: int, deadline: float, poll_seconds: float, seed: int):
    """The next trial for this worker, claimed in the study with its heartbeat recorded, or None when the sweep has
    nothing left to start: ``n_trials`` trials are taken and none waits to be resumed, or ``deadline`` (a
    ``time.monotonic()`` value) has passed. While other workers' trials still run, it waits for them, since one
    of them may turn out to be stale and need resuming here."""
    import optuna
    from optuna.trial import TrialState

    while time.monotonic() < deadline:
        optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials) or len(_counted(trials)) < n_trials:
            trial = study.ask()
            storage.record_heartbeat(trial._trial_id)  # first thing: a trial without a heartbeat never goes stale
            if _claim(study, trial, n_trials):
                study.sampler = trial_sampler(seed, trial.number)  # trial.suggest_* draws from it
                return trial
        elif any(t.state == TrialState.RUNNING for t in trials):
            time.sleep(poll_seconds)
        else:
            return None
    return None


def _counted(trials) -> list[int]:
    """The numbers of the trials that count towards n_trials: not retries, not surplus."""
    return [t.number for t in trials if RETRY_OF not in t.system_attrs and not t.user_attrs.get(SURPLUS_ATTR)]


def _claim(study, trial, n_trials: int) -> bool:
    """Give ``trial`` its folder (a retry has it already); a trial beyond the first ``n_trials`` is surplus."""
    from optuna.trial import TrialState

    if FOLDER_ATTR in trial.user_attrs:
        return True
    trials = study.get_trials(deepcopy=False)
    home = next(t for t in trials if t.number == trial.number).system_attrs.get(RETRY_OF, trial.number)
    if home in sorted(_counted(trials))[:n_trials]:
        trial.set_user_attr(FOLDER_ATTR, f"trial-{home:04d}")
        return True
    trial.set_user_attr(SURPLUS_ATTR, True)
    study.tell(trial, state=TrialState.FAIL)
    return False


def hand_back(study, trial) -> None:
    """This worker stops ``trial`` before its end (a signal, an error): mark it failed and queue it again with the
    same parameters and folder, as a stale trial is, so that the next run of the sweep continues it at once."""
    import optuna

    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    if frozen.state != optuna.trial.TrialState.RUNNING:
        return  # another worker found it stale meanwhile, and queued it again itself
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    optuna.storages.RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)(study, frozen)


class Heartbeat:
    """While entered, records ``trial_id``'s heartbeat in ``storage`` every ``interval`` seconds (a thread)."""

    def __init__(self, storage, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="sweep-heartbeat", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopped.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stopped.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as err:  # noqa: BLE001 - a storage hiccup must not end the trial; the next beat retries
                print(f"Warning: the sweep's heartbeat for trial id {self.trial_id} failed ({err}); retrying",
                      flush=True)
