"""Pick the accelerate launch settings that suit the GPUs of this machine (used by the Kaggle notebook).

    python -m distrinews.training.hardware        # prints the GPUs found and the accelerate launch flags to use

GPUs are listed with ``nvidia-smi`` rather than ``torch.cuda``: querying torch would create a CUDA context
on every GPU inside the notebook kernel, holding memory the training processes then cannot use.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .launch_configs import launch_config_path

# bf16 arithmetic needs compute capability 8.0 (Ampere) or newer. torch.cuda.is_bf16_supported() is no
# guide here: it also answers True for GPUs that only emulate bf16 (a T4, 7.5), which is slow.
BF16_MIN_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    memory_mib: int
    capability: tuple[int, int]

    @property
    def has_bf16(self) -> bool:
        return self.capability >= BF16_MIN_CAPABILITY


@dataclass(frozen=True)
class LaunchPlan:
    """Which file of ``accelerate_configs/`` to launch with, the flags that adjust it, and why."""

    config_name: str
    processes: int
    flags: tuple[str, ...] = field(default=())
    reason: str = ""

    @property
    def on_cpu(self) -> bool:
        return self.config_name == "cpu.yaml"

    def launch_args(self, config_dir: str | Path | None = None) -> list[str]:
        """Arguments for ``accelerate launch`` that come before ``-m distrinews.train``.

        ``config_dir`` defaults to the YAMLs shipped with the package (distrinews/training/launch_configs.py).
        """
        path = Path(config_dir) / self.config_name if config_dir is not None else launch_config_path(self.config_name)
        return ["--config_file", str(path), *self.flags]


def parse_nvidia_smi(csv_text: str) -> list[GpuInfo]:
    """Parse ``nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader,nounits``."""
    gpus = []
    for line_number, line in enumerate(csv_text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = [part.strip() for part in line.rsplit(",", 2)]  # names may contain commas; numbers do not
        try:
            name, memory, capability = parts
            major, minor = capability.split(".")
            gpus.append(GpuInfo(name=name, memory_mib=int(memory), capability=(int(major), int(minor))))
        except ValueError:
            raise ValueError(f"nvidia-smi output line {line_number} is not 'name, memory MiB, major.minor': "
                             f"{line!r}") from None
    return gpus


def list_gpus() -> list[GpuInfo]:
    """The NVIDIA GPUs of this machine; empty when there is no driver (no ``nvidia-smi``)."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return []
    result = subprocess.run([executable, "--query-gpu=name,memory.total,compute_cap",
                             "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"nvidia-smi failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    return parse_nvidia_smi(result.stdout)


def plan_launch(gpus: Sequence[GpuInfo]) -> LaunchPlan:
    """One process per GPU; on CPU, the 2-process gloo config. Precision follows what the GPUs can do."""
    if not gpus:
        return LaunchPlan("cpu.yaml", 2, reason="no GPU found: 2 CPU processes, DDP over gloo, fp32")
    if len(gpus) == 1:
        gpu = gpus[0]
        if gpu.has_bf16:
            return LaunchPlan("single_gpu.yaml", 1, reason=f"1 x {gpu.name}: one process, bf16")
        # single_gpu.yaml asks for bf16, which this GPU lacks.
        return LaunchPlan("single_gpu.yaml", 1, ("--mixed_precision", "fp16"),
                          reason=f"1 x {gpu.name} (no bf16): one process, fp16")
    names = ", ".join(sorted({gpu.name for gpu in gpus}))
    # multi_gpu.yaml is written for 2 GPUs with fp16, which every GPU since the P100 runs natively.
    flags = () if len(gpus) == 2 else ("--num_processes", str(len(gpus)))
    return LaunchPlan("multi_gpu.yaml", len(gpus), flags,
                      reason=f"{len(gpus)} x {names}: DDP over NCCL, one process per GPU, fp16")


def main() -> int:
    gpus = list_gpus()
    for index, gpu in enumerate(gpus):
        print(f"GPU {index}: {gpu.name}, {gpu.memory_mib} MiB, compute capability "
              f"{gpu.capability[0]}.{gpu.capability[1]}{' (bf16)' if gpu.has_bf16 else ''}")
    plan = plan_launch(gpus)
    print(plan.reason)
    print(f"accelerate launch {' '.join(plan.launch_args())} -m distrinews.train ...")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
