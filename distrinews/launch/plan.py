"""The accelerate launch settings that suit this machine: the shipped YAML, the process count and the precision.

    python -m distrinews.launch.plan        # prints the GPUs found and the accelerate launch flags to use

One process per GPU, or 2 CPU processes over gloo without one; the precision is the fastest that keeps accuracy
(``distrinews.core.machine.fastest_precision``) unless ``--mixed_precision`` names one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..core.machine import PRECISION_CHOICES, Precision, cpu_bf16_units, describe_machine, fastest_precision, list_gpus
from .configs import launch_config_path

CPU_PROCESSES = 2  # accelerate_configs/cpu.yaml: the threads of the machine are split between them


@dataclass(frozen=True)
class LaunchPlan:
    """Which file of ``accelerate_configs/`` to launch with, the flags that adjust it, and why."""

    config_name: str
    processes: int
    precision: Precision
    flags: tuple[str, ...] = field(default=())
    reason: str = ""

    @property
    def on_cpu(self) -> bool:
        return self.config_name == "cpu.yaml"

    def launch_args(self, config_dir: str | Path | None = None) -> list[str]:
        """Arguments for ``accelerate launch`` that come before ``-m distrinews.train``.

        ``config_dir`` defaults to the YAMLs shipped with the package (distrinews/launch/configs.py)."""
        path = Path(config_dir) / self.config_name if config_dir is not None else launch_config_path(self.config_name)
        return ["--config_file", str(path), *self.flags,
                "--mixed_precision", self.precision.mixed_precision]


def plan_launch(gpus: Sequence, mixed_precision: str = "auto", *, cpu_units: Sequence[str] | None = None) -> LaunchPlan:
    """One process per GPU, or the 2-process gloo config on a CPU; the precision ``mixed_precision`` names, or with
    ``auto`` the fastest that keeps accuracy on these GPUs or this CPU (``cpu_units``: its bf16 units, read from
    the CPU when not given)."""
    if mixed_precision not in PRECISION_CHOICES:
        raise ValueError(f"--mixed_precision must be one of {', '.join(PRECISION_CHOICES)}, got {mixed_precision!r}")
    precision = (fastest_precision(gpus, cpu_units=cpu_bf16_units() if cpu_units is None else cpu_units)
                 if mixed_precision == "auto" else Precision(mixed_precision, f"--mixed_precision {mixed_precision}"))
    chosen_here = mixed_precision == "auto" and precision.mixed_precision != "no"
    said = f"{precision.words} ({precision.why}{'; --mixed_precision no trains in fp32' if chosen_here else ''})"
    if not gpus:
        return LaunchPlan("cpu.yaml", CPU_PROCESSES, precision,
                          reason=f"no GPU found: {CPU_PROCESSES} CPU processes, DDP over gloo, {said}")
    if len(gpus) == 1:
        return LaunchPlan("single_gpu.yaml", 1, precision, reason=f"1 x {gpus[0].name}: one process, {said}")
    names = ", ".join(sorted({gpu.name for gpu in gpus}))
    flags = () if len(gpus) == 2 else ("--num_processes", str(len(gpus)))  # multi_gpu.yaml is written for 2
    return LaunchPlan("multi_gpu.yaml", len(gpus), precision, flags,
                      reason=f"{len(gpus)} x {names}: DDP over NCCL, one process per GPU, {said}")


def main() -> int:
    gpus = list_gpus()
    plan = plan_launch(gpus)
    print("\n".join([*describe_machine(gpus), plan.reason]))
    print(f"accelerate launch {' '.join(plan.launch_args())} -m distrinews.train ...")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
