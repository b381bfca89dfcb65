"""What ``distrinews compare`` writes: one row per group (Markdown or CSV), the seeds plot, the paired comparisons.

Each split's metric is summarized over the group's seeds (stats.Summary). A Markdown cell reads
``mean ± std (min–max)``; the CSV has a column for each number.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

from ..core.errors import InputError
from .runs import Group, Run
from .stats import PairedComparison, Summary, paired_comparison

SPLITS = ("validation", "test")
# From metrics.json's "train", as the mean over the group's seeds.
TRAIN_NUMBERS = (("train_seconds", "train s"), ("samples_per_s", "samples/s"))


def headline_metric(runs: Sequence[Run]) -> str:
    """accuracy for single-label runs, micro_f1 for multi-label ones (metrics.json's test split says which)."""
    for name in ("accuracy", "micro_f1"):
        if all(name in run.metrics.get("test", {}) for run in runs):
            return name
    raise InputError("the runs mix single-label and multi-label tasks (accuracy vs micro_f1): compare them "
                     "separately, or name a metric both have with --metric")


def split_values(group: Group, split: str, metric: str) -> dict:
    """``{seed: value}`` of ``metric`` on ``split`` (empty for runs without that split, e.g. no validation)."""
    values = {}
    for run in group.runs:
        scores = run.metrics.get(split)
        if scores is None:
            continue
        if not isinstance(scores.get(metric), (int, float)):
            raise InputError(f"{run.folder}/metrics.json: no {metric} in its {split} metrics (it has "
                             f"{', '.join(name for name, v in scores.items() if isinstance(v, (int, float)))})")
        values.setdefault(run.seed, scores[metric])  # a seed given twice counts once
    return values


def summaries(group: Group, metrics: Sequence[str]) -> dict[tuple[str, str], Summary | None]:
    """(split, metric) -> its Summary over the group's seeds, or None where no run has that split."""
    result = {}
    for metric in metrics:
        for split in SPLITS:
            values = list(split_values(group, split, metric).values())
            result[split, metric] = Summary.of(values) if values else None
    return result


def train_summaries(group: Group) -> dict[str, Summary | None]:
    result = {}
    for name, _ in TRAIN_NUMBERS:
        values = [run.metrics["train"][name] for run in group.runs if name in (run.metrics.get("train") or {})]
        result[name] = Summary.of(values) if values else None
    return result


def _cell(summary: Summary | None) -> str:
    if summary is None:
        return "–"
    if summary.std is None:
        return f"{summary.mean:.4f}"
    return f"{summary.mean:.4f} ± {summary.std:.4f} ({summary.min:.4f}–{summary.max:.4f})"


def _shown(value) -> str:
    text = str(value)
    return text if len(text) <= 40 else "…" + text[-39:]  # a long path: its end names it


def markdown_table(groups: Sequence[Group], fields: Sequence[str], metrics: Sequence[str]) -> str:
    """One row per group: its setup (``fields``), seeds, each metric on validation and test, time and speed."""
    header = ["group", *fields, "seeds", *(f"{split} {metric}" for metric in metrics for split in SPLITS),
              *(title for _, title in TRAIN_NUMBERS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in groups:
        scores, train = summaries(group, metrics), train_summaries(group)
        cells = [str(group.number), *(_shown(group.setup.get(name)).replace("|", "\\|") for name in fields),
                 f"{len(group.runs)} ({', '.join(map(str, group.seeds))})",
                 *(_cell(scores[split, metric]) for metric in metrics for split in SPLITS),
                 *("–" if train[name] is None else f"{train[name].mean:.1f}" for name, _ in TRAIN_NUMBERS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_table(groups: Sequence[Group], fields: Sequence[str], metrics: Sequence[str]) -> str:
    """The same rows with one column per number, and the run folders of each group."""
    stats = ("mean", "std", "min", "max")
    header = ["group", *fields, "n_seeds", "seeds",
              *(f"{split}_{metric}_{stat}" for metric in metrics for split in SPLITS for stat in stats),
              *(f"{name}_mean" for name, _ in TRAIN_NUMBERS), "runs"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for group in groups:
        scores, train = summaries(group, metrics), train_summaries(group)
        numbers = [getattr(scores[split, metric], stat, None) if scores[split, metric] else None
                   for metric in metrics for split in SPLITS for stat in stats]
        writer.writerow([group.number, *(group.setup.get(name) for name in fields), len(group.runs),
                         " ".join(map(str, group.seeds)), *("" if value is None else value for value in numbers),
                         *("" if train[name] is None else train[name].mean for name, _ in TRAIN_NUMBERS),
                         " ".join(str(run.folder) for run in group.runs)])
    return buffer.getvalue()


def paired_comparisons(groups: Sequence[Group], metric: str) -> list[tuple[Group, PairedComparison | None]]:
    """Each group after the first against the first (the baseline) on the test ``metric``, seed by seed."""
    baseline = split_values(groups[0], "test", metric)
    return [(group, paired_comparison(baseline, split_values(group, "test", metric))) for group in groups[1:]]


def paired_lines(groups: Sequence[Group], metric: str) -> list[str]:
    """One sentence per paired comparison: the mean difference, its spread, the t-test and the verdict."""
    lines = []
    for group, comparison in paired_comparisons(groups, metric):
        name = f"group {group.number} − group {groups[0].number} (test {metric})"
        if comparison is None:
            lines.append(f"{name}: fewer than 2 seeds in common, no paired comparison")
            continue
        verdict = "exceeds" if comparison.exceeds_seed_spread() else "does not exceed"
        lines.append(f"{name} on seeds {', '.join(map(str, comparison.seeds))}: mean difference "
                     f"{comparison.mean_difference:+.4f}, std of the differences {comparison.std_difference:.4f}, "
                     f"paired t = {comparison.t:.2f} ({comparison.df} df), p = {comparison.p_value:.3g} "
                     f"(two-sided paired t-test): the difference {verdict} the seed spread at p < 0.05")
    return lines


def plot_seeds(groups: Sequence[Group], fields: Sequence[str], metric: str, path: Path) -> None:
    """Each group's test ``metric``: its seeds as dots, its mean as a bar across them."""
    import matplotlib

    matplotlib.use("Agg")  # headless: CI and training machines have no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(max(4.0, 2.2 * len(groups) + 1), 4))
    for position, group in enumerate(groups):
        values = split_values(group, "test", metric)
        axes.scatter([position] * len(values), list(values.values()), color="tab:blue", zorder=3)
        seeds_at: dict[float, list[str]] = {}  # seeds that scored alike share one dot and one label
        for seed, value in values.items():
            seeds_at.setdefault(value, []).append(str(seed))
        for value, seeds in seeds_at.items():
            axes.annotate(", ".join(seeds), (position, value), xytext=(6, 0), textcoords="offset points", fontsize=7)
        if values:
            axes.hlines(Summary.of(list(values.values())).mean, position - 0.2, position + 0.2, color="black")
    axes.set_xticks(range(len(groups)), [_tick(group, fields) for group in groups], fontsize=8)
    axes.set_ylabel(f"test {metric}")
    axes.set_title(f"test {metric} by seed (bar: mean)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _tick(group: Group, fields: Sequence[str]) -> str:
    return "\n".join([f"group {group.number}", *(f"{name}={_short(group.setup.get(name))}" for name in fields[:3])])


def _short(value) -> str:
    """A tick label's value: a float to 4 significant digits (a searched learning rate has 17), else ``_shown``."""
    return f"{value:.4g}" if isinstance(value, float) else _shown(value)
