"""What a researcher reads after a sweep: the trials as a table (``trials.md``, ``trials.csv``), three plots and the
best trial, whose test result is read once, here, at the end; and its command line (``distrinews sweep --best``).

Everything comes from the study's storage, so any worker writes the same table, whichever ran which trial. A trial
is one row per folder (a resumed trial is the same row), in the state of its latest attempt.
"""

from __future__ import annotations

import csv
import io
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..core.atomic import write_json
from ..training.reporting import pyplot
from .space import SearchSpace
from .study import FOLDER_ATTR, SURPLUS_ATTR
from .trials import flag_value

TABLE_MD, TABLE_CSV, BEST_FILE, PLOTS = "trials.md", "trials.csv", "best.json", "plots"


@dataclass(frozen=True)
class Row:
    number: int  # the folder's trial number
    folder: str
    params: dict[str, Any]
    objective: float | None
    state: str  # complete, pruned at step N, failed: why, running, waiting (to resume)
    steps: int | None
    seconds: float | None


def trial_rows(study) -> list[Row]:
    latest = {}
    for trial in study.get_trials(deepcopy=False):  # in number order: a retry comes after its trial
        if FOLDER_ATTR in trial.user_attrs and not trial.user_attrs.get(SURPLUS_ATTR):
            latest[trial.user_attrs[FOLDER_ATTR]] = trial
    return [_row(folder, trial) for folder, trial in sorted(latest.items())]


def _row(folder: str, trial) -> Row:
    attrs, state = trial.user_attrs, trial.state.name.lower()
    if state == "pruned":
        state = f"pruned at step {attrs.get('pruned_at', trial.last_step)}"
    elif state == "fail":
        state = f"failed: {attrs['error']}" if "error" in attrs else "interrupted (resumed by the next attempt)"
    return Row(number=int(folder.rsplit("-", 1)[1]), folder=folder, params=dict(trial.params),
               objective=trial.value if trial.state.name in ("COMPLETE", "PRUNED") else None, state=state,
               steps=attrs.get("steps"), seconds=attrs.get("train_seconds"))


def write_tables(rows: Sequence[Row], names: Sequence[str], objective: str, output_dir: Path, title: str) -> None:
    header = ["trial", *names, objective, "state", "steps", "time"]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [str(row.number), *(_shown(row.params.get(name)) for name in names), _shown(row.objective),
                 row.state, _shown(row.steps), "" if row.seconds is None else f"{row.seconds:.1f} s"]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    (output_dir / TABLE_MD).write_text("\n".join(lines) + "\n", encoding="utf-8")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["trial", "folder", *names, objective, "state", "steps", "train_seconds"])
    for row in rows:
        writer.writerow([row.number, row.folder, *(row.params.get(name, "") for name in names),
                         "" if row.objective is None else row.objective, row.state,
                         "" if row.steps is None else row.steps, "" if row.seconds is None else row.seconds])
    (output_dir / TABLE_CSV).write_text(buffer.getvalue(), encoding="utf-8")


def _shown(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def best_trial_report(study, output_dir: Path, metric: str, settings: dict) -> str | None:
    """The best complete trial: its validation objective and, read now for the first time, its test result, in
    ``best.json`` and one line (None without a complete trial). A best trial run by a worker elsewhere has no
    folder here: its test result is in that worker's folder."""
    complete = [trial for trial in study.get_trials(deepcopy=False) if trial.state.name == "COMPLETE"]
    if not complete:
        return None
    best = study.best_trial
    folder = output_dir / best.user_attrs[FOLDER_ATTR]
    test = None
    if (folder / "metrics.json").is_file():
        test = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))["test"][metric]
    command = best_command(settings, best.params, output_dir)
    write_json(output_dir / BEST_FILE, {"trial": best.number, "folder": str(folder), "params": best.params,
                                        f"validation_{metric}": best.value, f"test_{metric}": test,
                                        "command": command})
    on_test = f"test {metric} {test:.4f}" if test is not None else f"test: in {folder.name} on the worker that ran it"
    return (f"best: {folder.name}, validation {metric} {best.value:.4f}; {on_test} (the only look at test). "
            f"Rerun it (with other seeds: --seed): {command}")


def best_command(settings: dict, params: dict[str, Any], output_dir: Path) -> str:
    """The command line that trains the best trial's configuration again, into ``output_dir/best``."""
    flags = [part for name, value in params.items() for part in (f"--{name}", flag_value(value))]
    command = ["distrinews", "launch" if settings.get("launch") else "train", *settings["train_argv"], *flags,
               "--output_dir", str(output_dir / "best")]
    return shlex.join(command)


def write_plots(study, rows: Sequence[Row], space: SearchSpace, objective: str, folder: Path) -> list[str]:
    """The objective over the trials, each parameter against the objective and the parameters' importances (Optuna's
    default evaluator, PED-ANOVA); returns notes on the plots that could not be drawn yet."""
    folder.mkdir(exist_ok=True)
    plt = pyplot()
    scored = [row for row in rows if row.objective is not None]
    figure, axes = plt.subplots(figsize=(6, 4))
    for kind, marker in (("complete", "o"), ("pruned", "x")):
        shown = [row for row in scored if row.state.startswith(kind)]
        axes.scatter([row.number for row in shown], [row.objective for row in shown], marker=marker,
                     label=kind if kind == "complete" else "pruned (its last evaluation)")
    axes.set(xlabel="trial", ylabel=objective, title="objective over trials")
    axes.legend()
    _save(plt, figure, folder / "objective.png")
    complete = [row for row in scored if row.state == "complete"]
    figure, grid = plt.subplots(1, len(space.params), figsize=(4 * len(space.params), 3.5), squeeze=False)
    for axes, param in zip(grid[0], space.params):
        values = [row.params[param.name] for row in complete]
        if param.kind == "categorical":  # as categories, in the search space's order
            values = [param.choices.index(value) for value in values]
            axes.set_xticks(range(len(param.choices)), [str(choice) for choice in param.choices])
        axes.scatter(values, [row.objective for row in complete])
        if param.log:
            axes.set_xscale("log")
        axes.set(xlabel=param.name, ylabel=objective)
    _save(plt, figure, folder / "parameters.png")
    return _plot_importances(study, plt, folder / "importances.png")


def _plot_importances(study, plt, path: Path) -> list[str]:
    import optuna

    try:
        importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as err:
        return [f"no importances plot yet: {err}"]
    figure, axes = plt.subplots(figsize=(6, 0.5 + 0.5 * len(importances)))
    axes.barh(list(importances)[::-1], list(importances.values())[::-1])
    axes.set(xlabel="importance (PED-ANOVA, sums to 1)", title="parameter importances")
    _save(plt, figure, path)
    return []


def _save(plt, figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
