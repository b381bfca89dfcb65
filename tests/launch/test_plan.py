"""Launch settings chosen from the hardware found (the notebook's hardware cell)."""

from __future__ import annotations

import pytest
import yaml

from conftest import REPO_ROOT
from distrinews.core.machine import GpuInfo, cpu_bf16_units, fastest_precision
from distrinews.launch.plan import LaunchPlan, plan_launch

T4 = GpuInfo("Tesla T4", 15360, (7, 5))
P100 = GpuInfo("Tesla P100-PCIE-16GB", 16384, (6, 0))
A100 = GpuInfo("NVIDIA A100-SXM4-80GB", 81920, (8, 0))
CONFIG_DIR = REPO_ROOT / "accelerate_configs"


def launched_settings(plan: LaunchPlan) -> dict:
    """The accelerate settings a launch with this plan ends up with: the YAML, then the flags over it."""
    args = plan.launch_args(CONFIG_DIR)
    assert args[0] == "--config_file"
    settings = yaml.safe_load(open(args[1]))
    flags = args[2:]
    settings.update({flags[i].removeprefix("--"): flags[i + 1] for i in range(0, len(flags), 2)})
    return settings


def test_no_gpu_uses_two_cpu_processes_in_bf16_where_the_cpu_has_bf16_units():
    for units in (["AVX512_BF16"], ["AMX_BF16", "AVX512_BF16"]):
        plan = plan_launch([], cpu_units=units)
        settings = launched_settings(plan)
        assert plan.config_name == "cpu.yaml"
        assert settings["num_processes"] == 2 and settings["mixed_precision"] == "bf16"
        assert plan.reason == (f"no GPU found: 2 CPU processes, DDP over gloo, bf16 autocast, fp32 weights (this CPU "
                               f"has {' and '.join(units)} units; --mixed_precision no trains in fp32)")


def test_no_gpu_and_no_bf16_units_trains_in_fp32():
    plan = plan_launch([], cpu_units=[])
    assert launched_settings(plan)["mixed_precision"] == "no"
    assert plan.reason.endswith("fp32 (this CPU has no bf16 units (AVX512_BF16 or AMX))")


def test_mixed_precision_overrides_the_choice():
    plan = plan_launch([], "no", cpu_units=["AMX_BF16"])
    assert launched_settings(plan)["mixed_precision"] == "no" and plan.reason.endswith("fp32 (--mixed_precision no)")
    assert launched_settings(plan_launch([T4, T4], "no"))["mixed_precision"] == "no"
    with pytest.raises(ValueError, match="--mixed_precision must be one of auto, no, bf16, fp16, got 'fp8'"):
        plan_launch([], "fp8")


def test_the_plan_follows_this_machine_by_default():
    assert plan_launch([]).precision == fastest_precision([])
    assert fastest_precision([]).mixed_precision == ("bf16" if cpu_bf16_units() else "no")


def test_two_t4_use_multi_gpu_yaml_in_fp16():
    plan = plan_launch([T4, T4])
    assert plan.config_name == "multi_gpu.yaml" and plan.flags == ()
    settings = launched_settings(plan)
    assert settings["num_processes"] == 2 and settings["mixed_precision"] == "fp16"
    assert "2 x Tesla T4" in plan.reason and "fp16 (Tesla T4 has no bf16 units" in plan.reason


def test_one_gpu_without_bf16_trains_in_fp16():
    for gpu in (T4, P100):
        plan = plan_launch([gpu])
        assert plan.config_name == "single_gpu.yaml"
        assert launched_settings(plan)["mixed_precision"] == "fp16"


def test_one_gpu_with_bf16_trains_in_bf16():
    plan = plan_launch([A100])
    assert launched_settings(plan)["mixed_precision"] == "bf16"
    assert plan.reason == ("1 x NVIDIA A100-SXM4-80GB: one process, bf16 autocast, fp32 weights (NVIDIA "
                           "A100-SXM4-80GB computes bf16 natively; --mixed_precision no trains in fp32)")


def test_more_gpus_get_one_process_each_in_the_precision_every_one_computes():
    settings = launched_settings(plan_launch([A100] * 4))
    assert settings["num_processes"] == "4" and settings["mixed_precision"] == "bf16"
    assert launched_settings(plan_launch([A100, T4]))["mixed_precision"] == "fp16"
