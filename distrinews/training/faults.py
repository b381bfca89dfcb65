"""TEST-ONLY fault injection. Nothing here does anything unless DISTRINEWS_FAULT_INJECT is set.

The training loop calls one hook, ``inject(point, run)``, at two points: ``"start"`` (after resume, before the
first step) and ``"checkpoint_files_written"`` (every rank's files are written, the checkpoint is not yet marked
complete). Without the variable it returns at once.

The reliability tests (tests/training/test_fault_injection.py) inject most faults from outside -- kill -9, SIGTERM,
file-size limits -- and use this hook only for the two faults that cannot be timed from outside:

    DISTRINEWS_FAULT_INJECT=crash_during_checkpoint@8   every rank SIGKILLs itself at step 8's checkpoint,
                                                        after accelerate wrote its files, before the
                                                        checkpoint is marked complete
    DISTRINEWS_FAULT_INJECT=nan_loss@6                  the training loss is NaN from step 6 on
    DISTRINEWS_FAULT_INJECT=crash_in_shard@3            distrinews predict --input SIGKILLs itself while writing
                                                        shard 3 (counted from 0): its counts and its staging
                                                        Parquet file are written, the rename that completes it
                                                        is not

Several faults may be combined with commas. Steps are optimizer steps, counted from 1.
"""

from __future__ import annotations

import math
import os
import signal
from typing import Callable

import torch

ENV_VAR = "DISTRINEWS_FAULT_INJECT"
FAULTS = ("crash_during_checkpoint", "nan_loss", "crash_in_shard")


def requested_faults() -> dict[str, int]:
    """Parse DISTRINEWS_FAULT_INJECT into {fault: step}; an empty dict when it is unset."""
    spec = os.environ.get(ENV_VAR, "").strip()
    faults = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, step = item.partition("@")
        if name not in FAULTS or not step.isdigit():
            raise ValueError(f"{ENV_VAR}={spec!r}: {item!r} is not FAULT@STEP with FAULT one of {', '.join(FAULTS)}")
        faults[name] = int(step)
    return faults


def inject(point: str, run) -> None:
    """The one hook the training loop calls (``run`` is its ``distrinews.train.Run``)."""
    faults = requested_faults()
    if not faults:
        return
    if point == "start" and "nan_loss" in faults:
        _install_nan_loss(run.accelerator.unwrap_model(run.model), faults["nan_loss"],
                          current_step=lambda: run.state.global_step + 1)
    if point == "checkpoint_files_written":
        crash_if_asked("crash_during_checkpoint", run.state.global_step)


def crash_if_asked(fault: str, number: int) -> None:
    """SIGKILL this process, as kill -9 would, where DISTRINEWS_FAULT_INJECT asks for ``fault`` at ``number``."""
    if requested_faults().get(fault) == number:
        os.kill(os.getpid(), signal.SIGKILL)


def _install_nan_loss(model: torch.nn.Module, first_bad_step: int, current_step: Callable[[], int]) -> None:
    """Make the training loss NaN from ``first_bad_step`` on (a forward hook on the logits, which the task's loss
    is computed from; evaluation is untouched)."""

    def poison(module, args, kwargs, output):
        if module.training and current_step() >= first_bad_step:
            output.logits = output.logits * math.nan
        return output

    model.register_forward_hook(poison, with_kwargs=True)
