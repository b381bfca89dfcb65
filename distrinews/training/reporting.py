"""What a run writes for people and programs: ``log.jsonl``, ``metrics.json`` and the plots.

matplotlib is imported by the plotting functions only: ``distrinews push`` and the Space write JSON through here.

Non-main ranks get a ``RunLog`` with ``enabled=False``: a no-op, so the loop needs no rank checks.
"""

from __future__ import annotations

import json
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path
from typing import Sequence



class RunLog:
    """Appends one JSON object per line; lines survive a crash because each is flushed."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, kind: str, **fields) -> None:
        if not self.enabled:
            return
        record = {"type": kind, "time": round(time.time(), 3), **fields}
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def rewind(self, step: int, **resume_fields) -> None:
        """On resume: drop what the interrupted attempt logged after ``step``, then note the resume.

        The log then tells the story of the weights that exist: every step once, in order. A torn last
        line (the process was killed mid-write) is dropped too.
        """
        if not self.enabled:
            return
        kept, dropped = [], 0
        lines = self.path.read_text(encoding="utf-8").split("\n") if self.path.is_file() else []
        for line in filter(str.strip, lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if record.get("step", 0) > step or record.get("final"):
                dropped += 1
            else:
                kept.append(line + "\n")
        staging = self.path.with_name(f".{self.path.name}.tmp")
        staging.write_text("".join(kept), encoding="utf-8")
        staging.replace(self.path)
        self.write("resume", step=step, dropped_records=dropped, **resume_fields)


def metrics_line(metrics: dict) -> str:
    """The one-number metrics of an evaluation as ``name value, ...``."""
    from .evaluation import scalar_metrics

    return ", ".join(f"{name} {value:.4f}" for name, value in scalar_metrics(metrics).items())


def shortened_list(names: Sequence[str], shown: int = 8) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: training machines and CI have no display
    import matplotlib.pyplot as plt

    return plt


def plot_loss(records: Sequence[dict], path: Path, metric: str = "accuracy") -> None:
    """The training loss and, on a second axis, the validation ``metric`` of each evaluation."""
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval" and r.get("split") == "validation" and metric in r]
    shown = metric.replace("_", " ")
    plt = pyplot()
    fig, loss_axis = plt.subplots(figsize=(7, 4), dpi=120)
    loss_axis.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", label="training loss")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    if evals:
        scale, unit = (1, "") if metric == "loss" else (100, " (%)")
        metric_axis = loss_axis.twinx()
        metric_axis.plot([r["step"] for r in evals], [scale * r[metric] for r in evals], "o-",
                         color="tab:orange", label=f"validation {shown}")
        metric_axis.set_ylabel(f"validation {shown}{unit}", color="tab:orange")
    loss_axis.set_title(f"Training loss and validation {shown}" if evals else "Training loss")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confusion(task, split_metrics: dict, path: Path) -> None:
    """The test split's confusion: the label x label matrix, or for multi-label each label's four counts."""
    if "label_confusion" in split_metrics:
        counts = split_metrics["label_confusion"]
        columns = ["true_positive", "false_negative", "false_positive", "true_negative"]
        plot_count_grid([[counts[name][c] for c in columns] for name in task.labels], task.labels,
                        [c.replace("_", " ") for c in columns], path, "Test confusion per label",
                        x_label="", y_label="label")
    else:
        plot_count_grid(split_metrics["confusion_matrix"], task.labels, task.labels, path, "Test confusion matrix")


def plot_reliability(split_metrics: dict, path: Path, split: str = "test") -> None:
    """The reliability diagram of a split before and after calibration: each bin's accuracy against its mean
    confidence (a calibrated model lies on the diagonal), with how many forecasts each bin holds."""
    plt = pyplot()
    fig, (axis, counts) = plt.subplots(2, 1, figsize=(5.5, 6.5), dpi=120, sharex=True,
                                       gridspec_kw={"height_ratios": [3, 1]})
    axis.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for stage, color in (("before", "tab:red"), ("after", "tab:blue")):
        bins = [b for b in split_metrics["reliability"].get(stage, []) if b["count"]]
        if not bins:
            continue
        ece = split_metrics["calibration"][stage]["ece"]
        axis.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color=color,
                  label=f"{stage} calibration (ECE {ece:.3f})")
        counts.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["count"] for b in bins], width=1 / 16,
                   alpha=0.5, color=color, label=stage)
    axis.set_ylabel("accuracy of the bin's forecasts")
    axis.set_title(f"Reliability on {split}")
    axis.legend(loc="lower right")
    counts.set_xlabel("forecast probability")
    counts.set_ylabel("forecasts")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_risk_coverage(split_metrics: dict, path: Path, split: str = "test") -> None:
    """Accuracy of the most confident answers against the share answered, and the floor's point if there is one."""
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(6, 4), dpi=120)
    curve = split_metrics["risk_coverage_curve"]
    axis.plot([100 * p["coverage"] for p in curve], [100 * p["accuracy"] for p in curve], "o-", color="tab:blue",
              label="most confident answers kept")
    floor = split_metrics.get("at_floor") or {}
    if floor.get("floor") is not None and floor.get("accuracy") is not None:
        axis.plot([100 * floor["coverage"]], [100 * floor["accuracy"]], "s", color="tab:red", markersize=9,
                  label=f"confidence floor {floor['floor']:.3f}")
    axis.set_xlabel("coverage: answers given (%)")
    axis.set_ylabel("accuracy of those answers (%)")
    axis.set_title(f"Risk-coverage on {split}")
    axis.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_count_grid(counts: Sequence[Sequence[int]], row_names: Sequence[str], column_names: Sequence[str],
                    path: Path, title: str, x_label: str = "predicted", y_label: str = "true") -> None:
    """A heat map of counts with each count written in its cell (cells too small to read are left blank)."""
    plt = pyplot()
    rows, columns = len(row_names), len(column_names)
    fig, axis = plt.subplots(figsize=(max(5.5, 0.32 * columns + 2.5), max(4.8, 0.28 * rows + 1.8)), dpi=120)
    image = axis.imshow(counts, cmap="Blues", aspect="auto")
    axis.set_xticks(range(columns), column_names, rotation=30, ha="right")
    axis.set_yticks(range(rows), row_names)
    axis.set_xlabel(x_label)
    axis.set_ylabel(y_label)
    peak = max(max(row) for row in counts) or 1
    if max(rows, columns) <= 16:
        for i in range(rows):
            for j in range(columns):
                axis.text(j, i, str(counts[i][j]), ha="center", va="center",
                          color="white" if counts[i][j] > peak / 2 else "black")
    fig.colorbar(image, ax=axis)
    axis.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# The one-number metrics a table shows, where a split has them: single-label splits have accuracy, multi-label
# splits micro-F1 and subset accuracy.
HEADLINE_METRICS = (("accuracy", "accuracy"), ("micro_f1", "micro-F1"), ("macro_f1", "macro-F1"),
                    ("subset_accuracy", "subset accuracy"))


def metrics_markdown_table(metrics: dict, splits: Sequence[str] = ("validation", "test")) -> str:
    """A Markdown table of a run's ``metrics.json``: the headline metrics and per-label F1 for each split."""
    missing = [split for split in splits if split not in metrics]
    if missing:
        raise KeyError(f"metrics has no {', '.join(missing)} section (it has: {', '.join(metrics) or 'nothing'})")
    shown = [split for split in splits if metrics[split] is not None]  # validation is None in a run without one
    label_names = list(metrics[shown[0]]["per_class"])
    headline = [(key, title) for key, title in HEADLINE_METRICS if key in metrics[shown[0]]]
    lines = ["| split | examples | " + " | ".join(title for _, title in headline) + " | "
             + " | ".join(f"F1 {name}" for name in label_names) + " |",
             "|---" * (2 + len(headline) + len(label_names)) + "|"]
    for split in shown:
        scores = metrics[split]
        values = " | ".join(f"{scores[key]:.4f}" for key, _ in headline)
        per_class = " | ".join(f"{scores['per_class'][name]['f1']:.4f}" for name in label_names)
        lines.append(f"| {split} | {scores['num_examples']} | {values} | {per_class} |")
    return "\n".join(lines)


def class_weights_by_label(labels: Sequence[str], weights) -> dict[str, float] | None:
    """``metrics.json``'s "class_weights": each label's weight in the loss (a tensor of them, or None)."""
    if weights is None:
        return None
    return {name: round(float(weight), 6) for name, weight in zip(labels, weights.tolist())}


def describe_training(*, hardware: str, num_processes: int, mixed_precision: str, distributed_type: str,
                      total_train_batch_size: int, optimizer_steps: int, train_seconds: float,
                      train_examples: int) -> dict:
    """``metrics.json``'s "train" entry: the setup, the time spent in training steps and the software versions."""
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", num_processes))
    return {
        "train_examples": train_examples,
        "num_processes": num_processes,
        "num_machines": max(1, num_processes // local_world_size),
        "mixed_precision": mixed_precision,
        "distributed_type": distributed_type,
        "total_train_batch_size": total_train_batch_size,
        "train_seconds": round(train_seconds, 2),
        "samples_per_s": round(max(optimizer_steps, 1) * total_train_batch_size / max(train_seconds, 1e-9), 2),
        "hardware": hardware,
        "versions": {"python": platform.python_version(),
                     **{name: version(name) for name in ("torch", "transformers", "accelerate", "datasets")}},
    }
