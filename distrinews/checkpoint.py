"""Crash-safe checkpoint folders: written under a temporary name, renamed into place when complete.

A checkpoint is ``checkpoints/step-00000120/`` holding accelerate's state files (model, optimizer,
scheduler, scaler, every rank's RNG), ``trainer_state.json`` (the data position and bookkeeping) and a
``COMPLETE`` marker written last. Only folders with the marker are ever resumed from, and an older
checkpoint is deleted only after a newer one is complete, so a kill at any moment leaves a usable one.
This module does file work only; the training loop calls accelerate to fill the staging folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

COMPLETE_MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
_PREFIX = "step-"
_STAGING_PREFIX = ".staging-"


@dataclass
class TrainerState:
    """Where training stands; enough, with accelerate's state, to continue from the exact next batch."""

    global_step: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0  # micro-batches of `epoch` already trained on
    best_validation_accuracy: float = -1.0
    best_step: int = -1
    train_seconds: float = 0.0  # time spent in training steps, summed over every resumed attempt

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "TrainerState":
        return cls(**json.loads(path.read_text()))


def checkpoint_name(step: int) -> str:
    return f"{_PREFIX}{step:08d}"


def staging_dir(root: Path, step: int) -> Path:
    """The folder every rank writes a checkpoint into before it is complete."""
    return root / f"{_STAGING_PREFIX}{checkpoint_name(step)}"


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def remove_stale_staging(root: Path) -> None:
    """Drop half-written checkpoints left by a crash (main process, before training)."""
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(_STAGING_PREFIX):
                shutil.rmtree(path, ignore_errors=True)


def finalize_checkpoint(staging: Path, state: TrainerState, keep_last: int) -> Path:
    """Mark the staged checkpoint complete, move it into place, then prune old ones (main process)."""
    final = staging.parent / checkpoint_name(state.global_step)
    if (final / COMPLETE_MARKER).is_file():
        # Already complete for this step (resumed at the very end): keep the one on disk.
        shutil.rmtree(staging)
        return final
    state.save(staging / STATE_FILE)
    _fsync_tree(staging)
    (staging / COMPLETE_MARKER).write_text(f"{state.global_step}\n")
    _fsync_tree(staging)
    shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover under the final name
    os.replace(staging, final)
    _fsync_dir(final.parent)
    for old in complete_checkpoints(final.parent)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
