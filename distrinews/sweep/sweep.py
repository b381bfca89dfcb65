"""``distrinews sweep``: search training options with Optuna, each trial an ordinary run folder.

    distrinews sweep --search_space space.yaml --n_trials 20 --output_dir sweeps/lr [TRAIN OPTIONS]
    distrinews sweep ... --launch                                  # each trial on every GPU (2 CPU processes without)
    distrinews sweep ... --study_name lr --storage postgresql://user@host:5432/db   # one worker per machine or GPU
    distrinews sweep --best --output_dir sweeps/lr                 # the best trial's command line

The objective is ``metric_for_best_model`` on validation, in its direction (loss: minimize); test is read once, for
the best trial, at the end. The study lives in ``DIR/study.db`` (or ``--storage``), each trial in
``DIR/trial-NNNN/``; run the same command after any interruption (kill -9 included) and the sweep continues: finished
trials are kept, an interrupted one resumes from its own checkpoint with the same parameters (study.py), and the
count of ``--n_trials`` trials is kept across every worker. docs/README-sweep.md has the details.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ConfigError, NonFiniteLossError
from ..training.config import DERIVED, SAME, TrainConfig, parse_train_values
from .pruning import PrunerSettings, describe_trial
from .report import PLOTS, best_command, best_trial_report, trial_rows, write_plots, write_tables
from .space import SearchSpace, load_search_space
from .study import SETTINGS_ATTR, Heartbeat, check_settings, hand_back, masked, next_trial, open_study, \
    require_optuna
from .trials import Outcome, failed, read_outcome, run_in_process, run_launched, trial_argv

STUDY_FILE = "study.db"
DIRECTIONS = ("auto", "maximize", "minimize")


@dataclass
class SweepOptions:
    """What ``distrinews sweep`` was asked (cli.py's flags)."""

    output_dir: str  # the sweep folder: study.db, trial-NNNN/, the tables and plots
    search_space: str = ""  # the YAML file (space.py)
    n_trials: int = 20  # trials in the study, counted across every worker
    train_argv: list[str] = field(default_factory=list)  # the training options every trial shares
    storage: str = ""  # an RDB URL; "" = sqlite:///DIR/study.db
    study_name: str = ""  # "" = the sweep folder's name
    direction: str = "auto"  # one of DIRECTIONS; auto = metric_for_best_model's (loss: minimize)
    pruner: PrunerSettings = field(default_factory=PrunerSettings)
    timeout: float = 0.0  # start no trial after this many seconds (0 = no limit)
    launch: bool = False  # each trial through distrinews launch
    main_process_port: int | None = None  # distrinews launch's, for --launch
    mixed_precision: str = "auto"
    heartbeat_interval: int = 20  # seconds; a trial is stale after two intervals without a beat

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(Path(self.output_dir) / STUDY_FILE).resolve()}"

    def name(self) -> str:
        return self.study_name or Path(self.output_dir).resolve().name


def run_sweep(options: SweepOptions) -> int:
    """Run trials until the study has ``n_trials`` (or the timeout); then the table, the plots and the best trial."""
    fixed = parse_train_values(options.train_argv)
    fixed.pop("output_dir", None)  # from a --config file: each trial's is DIR/trial-NNNN
    if fixed.get("resume", "auto") != "auto":
        raise ConfigError(f"resume={fixed['resume']!r}: a sweep resumes each trial from its own folder (resume=auto); "
                          "leave resume out, or start a new sweep in another --output_dir")
    space = load_search_space(options.search_space, fixed)
    base = TrainConfig(**fixed)
    if base.push_to_hub or base.hub_strategy == "checkpoint":
        raise ConfigError("push_to_hub and hub_strategy=checkpoint would send every trial to the same repo: push the "
                          "best trial after the sweep (distrinews push DIR/trial-NNNN --repo_id USER/NAME)")
    metric, direction = base.selection_metric(), _direction(options.direction, base)
    settings = {"metric": metric, "direction": direction, "search_space": space.to_dict(),
                "fixed": _fixed_signature(base, space), "train_argv": list(options.train_argv),
                "launch": options.launch}
    output_dir = Path(options.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    storage, study = open_study(options.storage_url(), options.name(), direction, pruner=options.pruner.build(),
                                seed=base.seed, heartbeat_interval=options.heartbeat_interval)
    check_settings(study, settings, masked(options.storage_url()))
    print(f"sweep {study.study_name!r}: {options.n_trials} trials over {', '.join(p.name for p in space.params)}; "
          f"objective validation {metric} ({direction}); pruner {options.pruner.kind}; study in "
          f"{masked(options.storage_url())}", flush=True)
    deadline = time.monotonic() + (options.timeout or math.inf)
    poll = min(5.0, options.heartbeat_interval)
    while (trial := next_trial(study, storage, options.n_trials, deadline, poll, base.seed)) is not None:
        code = _run_trial(options, study, storage, trial, space, metric, fixed)
        if code:
            return code
    _report(study, options, space, metric)
    return 0


def _run_trial(options: SweepOptions, study, storage, trial, space: SearchSpace, metric: str, fixed: dict) -> int:
    """Run one claimed trial to its end and tell the study; returns 0, or the exit code that stops the sweep (the
    trial is then queued again: the next run of the sweep continues it)."""
    folder = Path(options.output_dir) / trial.user_attrs["folder"]
    params = space.suggest(trial)
    argv = trial_argv(options.train_argv, params, folder, None if "run_name" in fixed else study.study_name)
    resumed = "" if trial.number == int(folder.name.rsplit("-", 1)[1]) else f" (attempt {trial.number})"
    print(f"{folder.name}{resumed}: " + ", ".join(f"{name}={value!r}" for name, value in params.items()), flush=True)
    code = 0
    try:
        with Heartbeat(storage, trial._trial_id, options.heartbeat_interval):
            if options.launch:
                described = describe_trial(options.storage_url(), study.study_name, trial._trial_id, options.pruner)
                code = run_launched(argv, described, options.mixed_precision, options.main_process_port)
            else:
                code = _in_process(argv, trial, options)
        outcome = failed("non-finite loss (exit code 3)") if code == 3 else None
        if code in (0, 3):
            outcome, code = outcome or read_outcome(folder, metric), 0
    except BaseException:
        hand_back(study, trial)
        raise
    if code:
        hand_back(study, trial)
        return code
    _tell(study, trial, outcome, folder.name)
    return 0


def _in_process(argv: list[str], trial, options: SweepOptions) -> int:
    try:
        run_in_process(argv, trial, options.pruner, options.mixed_precision)
    except NonFiniteLossError as err:  # this trial's settings diverge; the sweep goes on with the next
        print(f"error: {err}", flush=True)
        return 3
    return 0


def _tell(study, trial, outcome: Outcome, folder: str) -> None:
    import optuna

    if next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number).state.is_finished():
        # Its heartbeat stalled past the grace period and another worker queued it again: the retry continues the
        # folder, which holds this result, from its last checkpoint.
        print(f"{folder}: finished, but the study had declared it stale; its retry will take its result", flush=True)
        return
    for key, value in (outcome.attrs or {}).items():
        trial.set_user_attr(key, value)
    states = {"pruned": optuna.trial.TrialState.PRUNED, "failed": optuna.trial.TrialState.FAIL}
    if outcome.state == "complete":
        study.tell(trial, outcome.value)
        print(f"{folder}: complete, objective {outcome.value:.4f}", flush=True)
    else:
        study.tell(trial, state=states[outcome.state])
        print(f"{folder}: {outcome.attrs.get('training_ended') or outcome.attrs.get('error')}", flush=True)


def _report(study, options: SweepOptions, space: SearchSpace, metric: str) -> None:
    output_dir = Path(options.output_dir)
    rows = trial_rows(study)
    names = [param.name for param in space.params]
    settings = study.user_attrs[SETTINGS_ATTR]
    title = (f"Sweep {study.study_name}: validation {metric} ({settings['direction']}), {len(rows)} of "
             f"{options.n_trials} trials")
    write_tables(rows, names, f"validation {metric}", output_dir, title)
    notes = write_plots(study, rows, space, f"validation {metric}", output_dir / PLOTS)
    best = best_trial_report(study, output_dir, metric, settings)
    if best:
        with (output_dir / "trials.md").open("a", encoding="utf-8") as handle:
            handle.write(f"\n**Best**: {best.removeprefix('best: ')}\n")
    for line in [*notes, best or "no trial completed: no best trial", f"table: {output_dir / 'trials.md'}"]:
        print(line, flush=True)


def print_best(options: SweepOptions) -> int:
    """``distrinews sweep --best``: print the command line that trains the study's best trial again."""
    optuna = require_optuna()
    if not options.storage and not (Path(options.output_dir) / STUDY_FILE).is_file():
        raise ConfigError(f"{Path(options.output_dir) / STUDY_FILE} does not exist: give the sweep's --output_dir (and "
                          "its --storage and --study_name, if it had them)")
    try:
        study = optuna.load_study(study_name=options.name(), storage=options.storage_url())
    except KeyError:
        raise ConfigError(f"no study {options.name()!r} in {masked(options.storage_url())}: give the sweep's "
                          "--output_dir (and its --storage and --study_name, if it had them)") from None
    try:
        best = study.best_trial
    except ValueError:
        raise ConfigError(f"the study {study.study_name!r} has no complete trial yet") from None
    print(best_command(study.user_attrs[SETTINGS_ATTR], best.params, Path(options.output_dir)))
    return 0


def _direction(asked: str, config: TrainConfig) -> str:
    natural = "maximize" if config.greater_is_better() else "minimize"
    if asked not in ("auto", natural):
        raise ConfigError(f"--direction {asked} contradicts metric_for_best_model={config.selection_metric()} "
                          f"({'higher' if natural == 'maximize' else 'lower'} is better): leave --direction auto")
    return natural


def _fixed_signature(config: TrainConfig, space: SearchSpace) -> dict:
    """The shared options that change what a trial computes (a worker joining the study must share them)."""
    import dataclasses

    searched = {param.name for param in space.params}
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.metadata["resume"] in (SAME, DERIVED) and f.name not in searched}
