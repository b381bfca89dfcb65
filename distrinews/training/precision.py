"""The precision this training process computes in: accelerate's setting when accelerate launched it (its YAML or
its ``--mixed_precision``), else the ``--mixed_precision`` of ``distrinews train``, else the fastest precision
that keeps accuracy on this device (``distrinews.core.machine.fastest_precision``: bf16 autocast over fp32
weights on a GPU or CPU with bf16 units, fp16 on older GPUs, fp32 on other CPUs).
"""

from __future__ import annotations

import os

import torch

from ..core.errors import ConfigError
from ..core.machine import PRECISION_CHOICES, GpuInfo, Precision, fastest_precision

# What accelerate launch sets for the processes it starts, and what the Accelerator reads.
ACCELERATE_VARIABLE = "ACCELERATE_MIXED_PRECISION"


def training_precision(flag: str = "auto") -> Precision:
    """The precision for this process; ``flag`` is ``distrinews train --mixed_precision``. Naming it both there and
    in the environment (accelerate launch, or an exported variable) with different values is refused."""
    if flag not in PRECISION_CHOICES:
        raise ConfigError(f"--mixed_precision must be one of {', '.join(PRECISION_CHOICES)}, got {flag!r}")
    launched = os.environ.get(ACCELERATE_VARIABLE, "").strip().lower()
    if launched and flag not in ("auto", launched):
        raise ConfigError(f"the precision is set twice: {ACCELERATE_VARIABLE}={launched} (accelerate launch's YAML "
                          f"or --mixed_precision, or the environment) and --mixed_precision {flag}; set it in one "
                          "place")
    if launched:
        return Precision(launched, f"{ACCELERATE_VARIABLE}, from accelerate launch or the environment")
    if flag != "auto":
        return Precision(flag, f"--mixed_precision {flag}")
    return fastest_precision(_this_gpu())


def _this_gpu() -> list[GpuInfo]:
    if not torch.cuda.is_available():
        return []
    return [GpuInfo(torch.cuda.get_device_name(), 0, torch.cuda.get_device_capability())]
