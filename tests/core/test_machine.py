"""Facts about the machine: the CPU's units as Linux lists them, the GPUs as nvidia-smi lists them, and the
precision chosen from them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from distrinews.core.machine import (GpuInfo, cpu_bf16_units, cpu_flags, cpu_has_int8_dot_product, describe_cpu,
                                     fastest_precision, parse_nvidia_smi, usable_cores)

T4 = GpuInfo("Tesla T4", 15360, (7, 5))


def _flags_line() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return next((line for line in lines if line.startswith(("flags", "Features"))), "")


def test_the_cpu_units_are_read_from_the_cpus_own_flags():
    listed = set(_flags_line().split(":", 1)[-1].split()) if _flags_line() else set()
    assert cpu_flags() == listed
    assert cpu_bf16_units() == [unit.upper() for unit in ("amx_bf16", "avx512_bf16") if unit in listed]
    assert cpu_has_int8_dot_product() == bool(listed & {"amx_int8", "avx512_vnni", "avx_vnni", "asimddp"})
    assert f"{usable_cores()} usable cores" in describe_cpu()


def test_the_cpu_precision_follows_its_bf16_units():
    assert fastest_precision([], cpu_units=["AVX512_BF16"]).mixed_precision == "bf16"
    assert fastest_precision([], cpu_units=["AMX_BF16", "AVX512_BF16"]).why == "this CPU has AMX_BF16 and AVX512_BF16 units"
    assert fastest_precision([], cpu_units=[]).mixed_precision == "no"


def test_the_machine_describes_itself():
    result = subprocess.run([sys.executable, "-m", "distrinews.core.machine"], capture_output=True, text=True,
                            timeout=60, check=True)
    precision = fastest_precision([])
    assert result.stdout.splitlines()[0] == f"CPU: {describe_cpu()}"
    assert result.stdout.splitlines()[-1] == f"training precision: {precision.words} ({precision.why})"


def test_parses_nvidia_smi_csv():
    text = "Tesla T4, 15360, 7.5\nTesla T4, 15360, 7.5\n"
    assert parse_nvidia_smi(text) == [T4, T4]
    assert parse_nvidia_smi("NVIDIA RTX A6000, Ada, 49140, 8.6") == [GpuInfo("NVIDIA RTX A6000, Ada", 49140, (8, 6))]
    assert parse_nvidia_smi("") == []


def test_unreadable_nvidia_smi_line_is_named():
    with pytest.raises(ValueError, match=r"line 2 .*'Tesla T4, \[N/A\], 7.5'"):
        parse_nvidia_smi("Tesla T4, 15360, 7.5\nTesla T4, [N/A], 7.5")
