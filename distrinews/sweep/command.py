"""``distrinews sweep``'s flags (cli.py's table calls ``main``); the sweep itself is sweep.py.

    distrinews sweep --search_space space.yaml --n_trials 20 --output_dir sweeps/lr [TRAIN OPTIONS] [--launch]
    distrinews sweep --best --output_dir sweeps/lr

Its own flags are below; every other flag is a ``distrinews train`` option that every trial shares. Nothing heavy is
imported until the flags are read, so ``--help`` and a bad flag answer at once.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from ..core.machine import PRECISION_CHOICES
from .pruning import PRUNERS, PrunerSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distrinews sweep", formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False,
        description="Search training options with Optuna (TPE): each trial is an ordinary run in "
        "OUTPUT_DIR/trial-NNNN, scored by metric_for_best_model on validation (test is read once, for the best trial, "
        "at the end), pruned from its evaluations by the median rule. Run the same command after any interruption to "
        "continue the sweep. Every other option is a training option every trial shares (`distrinews train "
        "--help`). Details: docs/README-sweep.md.")
    parser.add_argument("--output_dir", required=True, help="The sweep folder: study.db, trial-NNNN/, trials.md, "
                                                            "trials.csv, plots/.")
    parser.add_argument("--search_space", help="YAML mapping training options to {low, high[, log, step]} or "
                                               "{choices: [...]}.")
    parser.add_argument("--n_trials", type=int, default=20, help="Trials in the study, counted across every worker.")
    parser.add_argument("--storage", default="", help="An RDB URL (postgresql://user@host:port/db) shared by several "
                                                      "workers; default: sqlite:///OUTPUT_DIR/study.db.")
    parser.add_argument("--study_name", default="", help="The study's name in the storage (default: the name of the "
                                                         "OUTPUT_DIR folder).")
    parser.add_argument("--direction", choices=("auto", "maximize", "minimize"), default="auto",
                        help="auto: metric_for_best_model's (loss: minimize, any other: maximize).")
    parser.add_argument("--pruner", choices=PRUNERS, default="median",
                        help="Stop a trial whose validation result at a step is worse than the median of the finished "
                             "trials' at that step.")
    parser.add_argument("--pruner_startup_trials", type=int, default=3,
                        help="Finished trials before the pruner stops any.")
    parser.add_argument("--pruner_warmup_evaluations", type=int, default=1,
                        help="Evaluations of a trial before it can be pruned.")
    parser.add_argument("--timeout", type=float, default=0,
                        help="Start no trial after this many seconds (0: no limit).")
    parser.add_argument("--launch", action="store_true",
                        help="Run each trial through `distrinews launch` (every GPU, or 2 CPU processes).")
    parser.add_argument("--main_process_port", type=int, default=None, help="distrinews launch's, with --launch.")
    parser.add_argument("--mixed_precision", choices=PRECISION_CHOICES, default="auto",
                        help="The trials' precision, as `distrinews train` and `distrinews launch` take it.")
    parser.add_argument("--heartbeat_interval", type=int, default=20,
                        help="Seconds between a running trial's heartbeats; a trial without one for two intervals "
                             "(its worker was killed) is resumed by the next worker that asks.")
    parser.add_argument("--best", action="store_true", help="Print the best trial's command line and exit.")
    return parser


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args, train_argv = parser.parse_known_args(argv)
    from .sweep import SweepOptions, print_best, run_sweep

    options = SweepOptions(
        output_dir=args.output_dir, search_space=args.search_space or "", n_trials=args.n_trials,
        train_argv=train_argv, storage=args.storage, study_name=args.study_name, direction=args.direction,
        pruner=PrunerSettings(args.pruner, args.pruner_startup_trials, args.pruner_warmup_evaluations),
        timeout=args.timeout, launch=args.launch, main_process_port=args.main_process_port,
        mixed_precision=args.mixed_precision, heartbeat_interval=args.heartbeat_interval)
    if args.best:
        return print_best(options)
    for name, value, rule in (("--search_space", args.search_space, "is required"),
                              ("--n_trials", args.n_trials >= 1, "must be >= 1"),
                              ("--heartbeat_interval", args.heartbeat_interval >= 1, "must be >= 1"),
                              ("--pruner_startup_trials", args.pruner_startup_trials >= 0, "must be >= 0"),
                              ("--pruner_warmup_evaluations", args.pruner_warmup_evaluations >= 0, "must be >= 0"),
                              ("--timeout", args.timeout >= 0, "must be >= 0")):
        if not value:
            parser.error(f"{name} {rule}")
    return run_sweep(options)
