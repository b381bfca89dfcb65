"""Listeners the training loop calls at named moments, as the HF Trainer's callbacks do.

The loop knows nothing of who listens: the Hub side (``distrinews/hub/callbacks.py``) uploads checkpoints and
pushes the model, so the dependency points from it to the loop, never back. Every hook is called on every rank,
in the order the callbacks were given; a listener that acts on the main process only checks
``run.accelerator.is_main_process`` itself. Hooks start no collective: the loop keeps those, so that no rank can
wait in one that another rank skipped (``on_evaluate``'s answer is shared by the loop). Every rank must be given
the same listeners.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class TrainerCallback:
    """The hooks, each a no-op here: a listener overrides the ones it needs."""

    def on_train_begin(self, run: Any) -> None:
        """Set up, before the loop looks for a checkpoint to resume from; every rank waits for the others after
        this, so the main process may fetch one here."""

    def on_step_end(self, run: Any) -> None:
        """An optimizer step is done, with its log, evaluation and checkpoint; ``run.state.global_step`` counts it."""

    def on_evaluate(self, run: Any, metrics: dict) -> str | None:
        """A validation evaluation at ``run.state.global_step`` gave ``metrics``. Return a reason to stop training at
        this step, or None: the main process's answer counts, and the loop hands it to every rank, so a listener
        may decide on the main process alone (a sweep's pruner asks its study once, distrinews/sweep/pruning.py)."""
        return None

    def on_checkpoint(self, run: Any, folder: Path) -> None:
        """A checkpoint is complete in ``folder`` (main process only)."""

    def on_stop(self, run: Any) -> None:
        """Training stops on a signal after writing a checkpoint; the process exits right after."""

    def on_train_end(self, run: Any, metrics: dict) -> None:
        """The outputs are written and the process group is gone; ``metrics`` is what ``train`` returns."""
