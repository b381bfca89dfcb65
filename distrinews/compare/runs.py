"""Run folders found from the command's arguments, read, and grouped into setups that differ only in their seed.

A run folder holds ``train_config.json`` and ``metrics.json`` (training/loop.py writes both). An argument is a run
folder, a folder of run folders (a sweep's ``DIR/trial-NNNN/``, or any ``runs/``), or a glob of either. Unfinished
runs inside a folder of runs (a pruned, failed or running trial has no ``metrics.json``) are left out and counted;
a run named directly must be finished.
"""

from __future__ import annotations

import dataclasses
import glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..core.errors import InputError
from ..training.config import FREE, TrainConfig

CONFIG_FILE, METRICS_FILE = "train_config.json", "metrics.json"

# Fields a resumed attempt may change (resume kind FREE) are where files go, logging, the Hub and workers: they
# do not change a run's results, so runs that differ only in them are the same setup. These FREE fields are the
# exception: they decide on validation at the end of the run (calibration, thresholds, the confidence floor), so
# the reported metrics depend on them.
DECIDED_AT_THE_END = ("calibration", "per_label_thresholds", "target_precision")
IGNORED_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig)
                           if f.metadata["resume"] == FREE and f.name not in DECIDED_AT_THE_END) | {"seed"}
# What metrics.json's "train" says about how the steps were computed: a setup too (the global batch, precision).
TRAIN_SETUP = ("num_processes", "mixed_precision")


@dataclass
class Run:
    folder: Path
    config: dict
    metrics: dict

    @property
    def seed(self):
        return self.config.get("seed")

    def setup(self) -> dict:
        """Everything that can change this run's results except its seed: config fields and the process setup."""
        setup = {name: value for name, value in self.config.items() if name not in IGNORED_FIELDS}
        train = self.metrics.get("train") or {}
        setup.update({name: train.get(name) for name in TRAIN_SETUP})
        return setup


@dataclass
class Group:
    """Runs of one setup (their seeds differ)."""

    number: int
    setup: dict
    runs: list[Run] = field(default_factory=list)

    @property
    def seeds(self) -> list:
        return [run.seed for run in self.runs]


@dataclass
class FoundRuns:
    runs: list[Run]
    unfinished: list[Path]  # run folders inside a folder of runs that have no metrics.json yet


def find_runs(arguments: Sequence[str]) -> FoundRuns:
    """The runs the arguments name, in the order given, each once. InputError for an argument that names no run."""
    found, unfinished, seen = [], [], set()
    for argument in arguments:
        for folder, directly in _folders_of(argument):
            if folder.resolve() in seen:
                continue
            seen.add(folder.resolve())
            if (folder / METRICS_FILE).is_file():
                found.append(read_run(folder))
            elif directly:
                raise InputError(f"{folder}: no {METRICS_FILE}: not a finished run (it has {CONFIG_FILE} only)")
            else:
                unfinished.append(folder)
    if not found:
        raise InputError(f"no finished run in {' '.join(arguments)}: a run folder holds {CONFIG_FILE} and "
                         f"{METRICS_FILE}")
    return FoundRuns(found, unfinished)


def _folders_of(argument: str) -> list[tuple[Path, bool]]:
    """(run folder, named directly?) for each run folder ``argument`` names."""
    paths = [Path(match) for match in sorted(glob.glob(argument))] if glob.has_magic(argument) else [Path(argument)]
    if not paths:
        raise InputError(f"{argument}: matches no file or folder")
    folders = []
    for path in paths:
        if _is_run(path):
            folders.append((path, True))
            continue
        inside = sorted(child for child in path.iterdir() if _is_run(child)) if path.is_dir() else []
        if not inside:
            what = "does not exist" if not path.exists() else "is neither a run folder nor a folder of runs"
            raise InputError(f"{path}: {what} (a run folder holds {CONFIG_FILE} and {METRICS_FILE}; a sweep "
                             f"folder holds them in trial-NNNN/)")
        folders += [(child, False) for child in inside]
    return folders


def _is_run(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def read_run(folder: Path) -> Run:
    return Run(folder, _read_json(folder / CONFIG_FILE), _read_json(folder / METRICS_FILE))


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: cannot be read as JSON ({err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Runs with the same setup, in one group each, numbered in the order their first run was given."""
    groups: dict[str, Group] = {}
    for run in runs:
        setup = run.setup()
        key = json.dumps(setup, sort_keys=True, default=str)
        if key not in groups:
            groups[key] = Group(len(groups) + 1, setup)
        groups[key].runs.append(run)
    return list(groups.values())


def differing_fields(groups: Sequence[Group]) -> list[str]:
    """The setup fields whose values differ between groups (what the table shows of each setup), in config order."""
    names = list(dict.fromkeys(name for group in groups for name in group.setup))
    return [name for name in names if len({json.dumps(group.setup.get(name), default=str) for group in groups}) > 1]
