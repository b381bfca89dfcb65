"""What a run writes for people and programs: ``log.jsonl``, ``metrics.json`` and the plots.

matplotlib is imported by the plotting functions only: ``distrinews push`` and the Space write JSON through here.

Non-main ranks get a ``RunLog`` with ``enabled=False``: a no-op, so the loop needs no rank checks.
"""

from __future__ import annotations

import json
import time
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: training machines and CI have no display
    import matplotlib.pyplot as plt

    return plt


def plot_loss(records: Sequence[dict], path: Path) -> None:
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval" and r.get("split") == "validation"]
    plt = _pyplot()
    fig, loss_axis = plt.subplots(figsize=(7, 4), dpi=120)
    loss_axis.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", label="training loss")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    if evals:
        accuracy_axis = loss_axis.twinx()
        accuracy_axis.plot([r["step"] for r in evals], [100 * r["accuracy"] for r in evals], "o-",
                           color="tab:orange", label="validation accuracy")
        accuracy_axis.set_ylabel("validation accuracy (%)", color="tab:orange")
    loss_axis.set_title("Training loss and validation accuracy" if evals else "Training loss")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_confusion_matrix(confusion: Sequence[Sequence[int]], label_names: Sequence[str], path: Path,
                          title: str = "Test confusion matrix") -> None:
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(5.5, 4.8), dpi=120)
    image = axis.imshow(confusion, cmap="Blues")
    size = len(label_names)
    axis.set_xticks(range(size), label_names, rotation=30, ha="right")
    axis.set_yticks(range(size), label_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    peak = max(max(row) for row in confusion) or 1
    for i in range(size):
        for j in range(size):
            axis.text(j, i, str(confusion[i][j]), ha="center", va="center",
                      color="white" if confusion[i][j] > peak / 2 else "black")
    fig.colorbar(image, ax=axis)
    axis.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def metrics_markdown_table(metrics: dict, splits: Sequence[str] = ("validation", "test")) -> str:
    """A Markdown table of a run's ``metrics.json``: accuracy, macro-F1 and per-class F1 for each split."""
    missing = [split for split in splits if split not in metrics]
    if missing:
        raise KeyError(f"metrics has no {', '.join(missing)} section (it has: {', '.join(metrics) or 'nothing'})")
    shown = [split for split in splits if metrics[split] is not None]  # validation is None in a run without one
    label_names = list(metrics[shown[0]]["per_class"])
    lines = ["| split | examples | accuracy | macro-F1 | " + " | ".join(f"F1 {name}" for name in label_names) + " |",
             "|---" * (4 + len(label_names)) + "|"]
    for split in shown:
        scores = metrics[split]
        per_class = " | ".join(f"{scores['per_class'][name]['f1']:.4f}" for name in label_names)
        lines.append(f"| {split} | {scores['num_examples']} | {scores['accuracy']:.4f} | {scores['macro_f1']:.4f} "
                     f"| {per_class} |")
    return "\n".join(lines)
