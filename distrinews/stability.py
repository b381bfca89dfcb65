"""Skipping optimizer updates whose gradients are not finite, without stalling the GPU.

Reading ``torch.isfinite(grad_norm)`` on the host every step would make the CPU wait for the GPU at each
step, which costs real throughput at small batches. On CUDA with fused AdamW the skip happens on the
device instead: fused AdamW takes a ``found_inf`` tensor (the mechanism GradScaler uses) and leaves
parameters, moments and its step count untouched when it is non-zero. The count of consecutive bad steps
also stays on the device and is read only every ``check_every`` steps (every step on the CPU, where a read
is free). Optimizers without that mechanism fall back to a host check before each step.
"""

from __future__ import annotations

from typing import Callable

import torch


class NonFiniteLossError(RuntimeError):
    """Training produced non-finite gradients for too many steps in a row."""


class NonFiniteGuard:
    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device, *, limit: int,
                 check_every: int, scaler_handles_overflow: bool) -> None:
        self.optimizer = optimizer  # the torch optimizer itself, not accelerate's wrapper
        self.limit = limit
        self.on_device = bool(optimizer.defaults.get("fused")) and not scaler_handles_overflow
        self.scaler_handles_overflow = scaler_handles_overflow
        self.check_every = check_every if device.type == "cuda" else 1
        self.consecutive = torch.zeros((), dtype=torch.int32, device=device)

    def step(self, optimizer_step: Callable[[], None], grad_norm: torch.Tensor) -> None:
        """Run ``optimizer_step`` unless ``grad_norm`` (of the all-reduced gradients) is not finite."""
        bad = ~torch.isfinite(grad_norm)
        self.consecutive = (self.consecutive + 1) * bad  # back to 0 on a finite step
        if self.scaler_handles_overflow:
            optimizer_step()  # fp16: GradScaler skips overflowing steps and lowers its scale by itself
        elif self.on_device:
            self.optimizer.found_inf = bad.float()
            try:
                optimizer_step()
            finally:
                del self.optimizer.found_inf
        elif not bool(bad):
            optimizer_step()

    def raise_if_persistent(self, step: int, where: str) -> None:
        """Raise when the last ``limit`` steps were all non-finite (a host read: called every check_every)."""
        if step % self.check_every:
            return
        consecutive = int(self.consecutive)
        if consecutive >= self.limit:
            raise NonFiniteLossError(
                f"non-finite loss or gradients for {consecutive} optimizer steps in a row (up to step {step}); "
                f"no update was applied for them. The last good checkpoint is in {where}. "
                "Lower learning_rate or use bf16 instead of fp16, then resume.")
