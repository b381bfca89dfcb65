"""What the training loop's phases share: one ``Run`` (its parts, built by the loop's ``_set_up``, and its progress)
and the ``LogWindow`` of the steps since the last log line.

The loop (``distrinews/training/loop.py``) is the only module that calls the ``Accelerator`` a ``Run`` holds; the
listeners (``callbacks.py``) receive the ``Run`` and read what they need from it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from ..core.tasks import Task
from .callbacks import TrainerCallback
from .checkpoint import TrainerState
from .config import TrainConfig
from .data import LabelledData
from .extra_metrics import ExtraMetric
from .preemption import StopRequest
from .reporting import RunLog
from .sampling import ResumableBatchSampler
from .selection import Selection
from .stability import NonFiniteGuard


@dataclass
class LogWindow:
    """What the optimizer steps since the last log line add up to. Loss stays on the device, read only at log
    steps: reading it every step would make the CPU wait for the GPU each time."""

    loss: torch.Tensor
    tokens: int = 0
    micro_batches: int = 0
    steps: int = 0
    started: float = field(default_factory=time.perf_counter)

    def restart(self) -> None:
        self.loss.zero_()
        self.tokens = self.micro_batches = self.steps = 0
        self.started = time.perf_counter()


@dataclass
class Run:
    """One training run: its parts, built by ``_set_up``, and its progress, shared by the phases."""

    config: TrainConfig
    accelerator: Accelerator
    model: torch.nn.Module  # wrapped by accelerate: no_sync, unwrap and saving go through it
    forward_model: Any  # the same model, compiled where that pays
    tokenizer: Any
    data: LabelledData  # the splits as loaded, their task and what the run reports about them
    tokenized: Any  # DatasetDict of the tokenized splits
    class_weights: torch.Tensor | None  # on the device; the loss's per-label weights (class_weights)
    selection: Selection
    callbacks: Sequence[TrainerCallback]
    extra_metrics: Sequence[ExtraMetric]  # scored on validation and test at the end (extra_metrics.py)
    sampler: ResumableBatchSampler
    train_loader: DataLoader
    eval_loaders: dict[str, DataLoader]
    optimizer: Any
    scheduler: Any
    total_steps: int
    micro_batches_per_epoch: int
    state: TrainerState
    run_log: RunLog
    stop_request: StopRequest
    guard: NonFiniteGuard | None = None
    window: LogWindow | None = None
    progress: Any = None
    stop_vote: torch.Tensor | None = None  # filled, never re-created: no host-to-device copy per step

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def task(self) -> Task:
        return self.data.task

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def checkpoint_root(self) -> Path:
        return self.output_dir / "checkpoints"

    @property
    def examples_per_step(self) -> int:
        return self.config.total_train_batch_size(self.accelerator.num_processes)

    @property
    def host_check_every(self) -> int:
        # The host reads the device every step on the CPU (free there) but only every logging_steps on a GPU,
        # where a read makes the CPU wait for the GPU: the non-finite run and the stop vote are read together.
        return 1 if self.device.type == "cpu" else self.config.logging_steps
