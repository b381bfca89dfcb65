"""Experiment tracking (``report_to``) through accelerate's trackers: which ones, the run's name and its config.

The training loop hands ``log_with`` to its Accelerator, which opens the trackers' run on the main process
only and logs there. The trackers' own files go under ``output_dir/runs/<run_name>`` (TensorBoard), as the
HF Trainer lays them out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import accelerate
import accelerate.utils

from ..core.errors import ConfigError
from .config import TrainConfig
from .evaluation import scalar_metrics
from .extra_metrics import EXTRA_METRICS, extra_scalars

TRACKERS = ("tensorboard", "wandb", "trackio")  # report_to=all: every one of these that is installed
TRACKER_FOLDER = "runs"


def trackers_for(report_to: str) -> list[str]:
    """accelerate's ``log_with`` names for ``report_to``. accelerate silently drops a tracker whose package is
    missing, so a missing one is an error here, before anything is written."""
    if report_to == "none":
        return []
    if report_to == "all":
        installed = [name for name in TRACKERS if _installed(name)]
        if not installed:
            raise ConfigError("report_to=all: none of tensorboard, wandb, trackio is installed; "
                              "pip install tensorboard (or wandb, or trackio)")
        return installed
    if not _installed(report_to):
        raise ConfigError(f"report_to={report_to}: the {report_to} package is not installed (or this accelerate "
                          f"{accelerate.__version__} cannot use it); pip install {report_to}")
    return [report_to]


def _installed(tracker: str) -> bool:
    supported = tracker in accelerate.utils.LoggerType.list()
    return supported and getattr(accelerate.utils, f"is_{tracker}_available")()


def run_name(config: TrainConfig) -> str:
    """``run_name``, or the name of the output_dir folder."""
    return config.run_name or Path(config.output_dir).resolve().name


def tracker_config(values: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """The config as the trackers store it: nested mappings flattened to ``outer/inner`` keys, and every value
    that is not a bool, number or string (None, a list, a path) written as text, which TensorBoard requires."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(tracker_config(value, prefix=f"{name}/"))
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def train_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The scalars of one log.jsonl training line, under the HF Trainer's names."""
    return {"train/loss": record["loss"], "train/learning_rate": record["lr"],
            "train/samples_per_second": record["samples_per_s"], "train/epoch": record["epoch"]}


def eval_scalars(split: str, metrics: dict[str, Any]) -> dict[str, float]:
    """Every one-number metric of an evaluation (accuracy or micro-F1, macro-F1, loss, ...) under ``split/``, and
    the extra_metrics' under ``split/extra/`` (kept apart: evaluate's accuracy is not the built-in one's tag)."""
    extra = extra_scalars(metrics.get(EXTRA_METRICS, {}))
    return {**{f"{split}/{name}": value for name, value in scalar_metrics(metrics).items()},
            **{f"{split}/extra/{name}": value for name, value in extra.items()}}
