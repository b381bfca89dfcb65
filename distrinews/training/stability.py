"""Skipping optimizer updates whose gradients are not finite, without stalling the GPU.

Reading ``torch.isfinite(grad_norm)`` on the host every step would make the CPU wait for the GPU at each
step, which costs real throughput at small batches. On CUDA with fused AdamW the skip happens on the
device instead: fused AdamW takes a ``found_inf`` tensor (the mechanism GradScaler uses) and leaves
parameters, moments and its step count untouched when it is non-zero. The count of consecutive bad steps
also stays on the device; the training loop reads it when it reads the device anyway (every step on the
CPU, every logging_steps on a GPU). Optimizers without that mechanism fall back to a host check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from ..core.errors import NonFiniteLossError


class NonFiniteGuard:
    def __init__(self, optimizer: torch.optim.Optimizer, *, limit: int, scaler_handles_overflow: bool) -> None:
        self.optimizer = optimizer  # the torch optimizer itself, not accelerate's wrapper
        self.limit = limit
        self.scaler_handles_overflow = scaler_handles_overflow
        self.on_device = bool(optimizer.defaults.get("fused")) and not scaler_handles_overflow
        self.consecutive = None  # device tensor: the number of non-finite steps in a row so far

    def step(self, optimizer_step: Callable[[], None], grad_norm: torch.Tensor) -> None:
        """Run ``optimizer_step`` unless ``grad_norm`` (of the all-reduced gradients) is not finite."""
        bad = ~torch.isfinite(grad_norm)
        if self.consecutive is None:
            self.consecutive = torch.zeros((), dtype=torch.int32, device=grad_norm.device)
        self.consecutive = (self.consecutive + 1) * bad  # back to 0 on a finite step
        if self.scaler_handles_overflow:
            optimizer_step()  # fp16: GradScaler must see the overflow to skip the step and lower its scale
        elif self.on_device:
            self.optimizer.found_inf = bad.float()
            try:
                optimizer_step()
            finally:
                del self.optimizer.found_inf
        elif not bool(bad):
            optimizer_step()

    def raise_if_persistent(self, consecutive: int, step: int, last_good: Path | None) -> None:
        """Stop once ``consecutive`` (read from ``self.consecutive`` by the caller) reaches the limit."""
        if consecutive >= self.limit:
            raise NonFiniteLossError(
                f"non-finite loss or gradients for {consecutive} optimizer steps in a row (up to step {step}); "
                f"no update was applied at those steps and the last good checkpoint is "
                f"{last_good or 'not written yet'}. Run the same command to resume from it if the cause was "
                "transient; otherwise use bf16 instead of fp16 or a lower learning_rate and start over with "
                "--resume none.")
