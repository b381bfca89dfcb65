"""Facts about this machine that choose how to train and serve: its cores, its CPU's arithmetic units, its GPUs,
its matmul rate, and from them the precision a run computes in by default.

One module for training (the launch plan, the precision, the CPU estimate), serving (threads, the int8 path) and
the benchmarks (the hardware they state, the peaks they measure against). torch is imported only to measure.

    python -m distrinews.core.machine        # prints what this machine has and the precision training would use
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

# CPU flags of the units that compute bf16 at speed (AVX-512 bf16 dot products, AMX tiles). Without them torch
# emulates bf16 by converting to fp32 and back, slower than fp32 itself.
CPU_BF16_UNITS = ("amx_bf16", "avx512_bf16")
# int8 dot-product units: VNNI (x86), AMX int8 tiles, Arm's dot product. ONNX Runtime's int8 matmuls use them.
CPU_INT8_UNITS = ("amx_int8", "avx512_vnni", "avx_vnni", "asimddp")
# The flags a benchmark states with its figures: the vector width and the units above.
CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", *CPU_BF16_UNITS, *CPU_INT8_UNITS)
# bf16 arithmetic on a GPU needs compute capability 8.0 (Ampere) or newer. torch.cuda.is_bf16_supported() is no
# guide: it also answers True for GPUs that only emulate bf16 (a T4, 7.5), which is slow.
GPU_BF16_MIN_CAPABILITY = (8, 0)


def usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (x86 ``flags``, Arm ``Features``); empty elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_bf16_units() -> list[str]:
    """The bf16 units this CPU has, by their flag names in upper case (``["AMX_BF16", "AVX512_BF16"]``)."""
    return [flag.upper() for flag in CPU_BF16_UNITS if flag in cpu_flags()]


def cpu_has_int8_dot_product() -> bool:
    """int8 matmuls run at several times the fp32 rate without saturation."""
    return bool(cpu_flags() & set(CPU_INT8_UNITS))


def describe_cpu() -> str:
    """The CPU as a benchmark states it: its name, the cores this process may use, and its units of interest."""
    flags = sorted(cpu_flags() & set(CPU_FLAGS_OF_INTEREST))
    return f"{cpu_name()}, {usable_cores()} usable cores ({', '.join(flags) or 'no AVX2'})"


# ----------------------------------------------------------------------------- GPUs

@dataclass(frozen=True)
class GpuInfo:
    name: str
    memory_mib: int
    capability: tuple[int, int]

    @property
    def has_bf16(self) -> bool:
        return self.capability >= GPU_BF16_MIN_CAPABILITY


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
    """The NVIDIA GPUs of this machine; empty when there is no driver (no ``nvidia-smi``).

    Listed with ``nvidia-smi`` rather than ``torch.cuda``: querying torch would create a CUDA context on every GPU
    inside a notebook kernel, holding memory the training processes then cannot use."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return []
    result = subprocess.run([executable, "--query-gpu=name,memory.total,compute_cap",
                             "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"nvidia-smi failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    return parse_nvidia_smi(result.stdout)


# ----------------------------------------------------------------------------- the precision

# accelerate's --mixed_precision values, and auto: the fastest that keeps accuracy (fastest_precision).
PRECISION_CHOICES = ("auto", "no", "bf16", "fp16")


@dataclass(frozen=True)
class Precision:
    """A precision in accelerate's words (``no``, ``bf16``, ``fp16``) and why it was chosen."""

    mixed_precision: str
    why: str

    @property
    def words(self) -> str:
        """How the plan line says it: bf16 is autocast over fp32 master weights on every device."""
        return {"no": "fp32", "bf16": "bf16 autocast, fp32 weights"}.get(self.mixed_precision, self.mixed_precision)


def fastest_precision(gpus: Sequence[GpuInfo] = (), *, cpu_units: Sequence[str] | None = None) -> Precision:
    """The fastest precision that keeps accuracy on these GPUs, or on this CPU without one: bf16 where every GPU
    or the CPU has bf16 units, fp16 on older GPUs (with a gradient scaler), fp32 on a CPU without bf16 units."""
    if gpus:
        without = [gpu for gpu in gpus if not gpu.has_bf16]
        if not without:
            return Precision("bf16", f"{gpus[0].name} computes bf16 natively")
        return Precision("fp16", f"{without[0].name} has no bf16 units (compute capability below "
                                 f"{GPU_BF16_MIN_CAPABILITY[0]}.{GPU_BF16_MIN_CAPABILITY[1]})")
    units = cpu_bf16_units() if cpu_units is None else list(cpu_units)
    if units:
        return Precision("bf16", f"this CPU has {' and '.join(units)} units")
    return Precision("no", "this CPU has no bf16 units (AVX512_BF16 or AMX)")


# ----------------------------------------------------------------------------- measured rates

def measure_matmul_flops(seconds: float = 0.4, size: int = 1024, dtype=None) -> float:
    """This CPU's matmul rate over all of torch's threads, in FLOP/s (a square matmul large enough to run at the
    kernels' peak, repeated for about ``seconds``); fp32 unless ``dtype`` says otherwise."""
    import torch

    dtype = dtype or torch.float32
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)  # warm-up: thread pool start, first-touch of the output
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or done < 3:
        torch.mm(a, b)
        done += 1
    return done * 2 * size**3 / elapsed


def describe_machine(gpus: Sequence[GpuInfo]) -> list[str]:
    """A line for the CPU and one per GPU, as ``python -m distrinews.core.machine`` and the launch plan print them."""
    lines = [f"CPU: {describe_cpu()}"]
    lines += [f"GPU {index}: {gpu.name}, {gpu.memory_mib} MiB, compute capability {gpu.capability[0]}."
              f"{gpu.capability[1]}{' (bf16)' if gpu.has_bf16 else ''}" for index, gpu in enumerate(gpus)]
    return lines


def main() -> int:
    gpus = list_gpus()
    precision = fastest_precision(gpus)
    print("\n".join([*describe_machine(gpus), f"training precision: {precision.words} ({precision.why})"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
