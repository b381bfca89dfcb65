"""How long a training run takes on this machine's CPU, said before it starts (``distrinews launch`` without a GPU).

The estimate counts the model's arithmetic at the data's real window and token counts (a long text is several
windows, each costing as much as a short text; launch/preflight.py counts them as the ranks cut them): 6 FLOPs per
parameter and token for the forward and backward matmuls, plus attention. It divides that by this CPU's own
matmul rate in the run's precision (fp32, or bf16 on a CPU with bf16 units), measured on the spot, times the share
of that rate a distrinews training step reaches on such a CPU (``CPU_SHARE_OF_PEAK``, from the training benchmark,
``benchmarks/bench_train.py --preset cpu``). It is an estimate, not a promise: it says so.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from ..core.machine import Precision, cpu_bf16_units, measure_matmul_flops
from ..training.config import TrainConfig

# The share of its precision's matmul peak a distrinews training step reaches (MiniLM-L6, batch 32, 2 cores),
# by the unit that computes it: the lowest share the `cpu` preset of benchmarks/bench_train.py measured on a CPU
# with that unit (docs/experiments.md), so the estimate errs long. AMX tiles multiply so fast that the rest of a
# step dominates: a small share of a large peak.
CPU_SHARE_OF_PEAK = {"fp32": 0.38, "AVX512_BF16": 0.43, "AMX_BF16": 0.15}
# A run that checks every step in minutes on a CPU (the notebook's SMOKE setting); distrinews launch names it.
QUICK_RUN = {"max_train_samples": 2000, "max_eval_samples": 500, "num_train_epochs": 1, "max_steps": -1}
QUICK_RUN_FLAGS = " ".join(f"--{name} {value}" for name, value in QUICK_RUN.items() if name != "max_steps")


def training_flops_per_token(model: torch.nn.Module, tokens_per_example: float) -> float:
    """Forward + backward FLOPs per token: 6 per weight outside the embeddings (a lookup costs no multiply), plus
    the attention scores and weighted sums, whose cost grows with the sequence length."""
    embedding = sum(module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Embedding))
    weights = sum(parameter.numel() for parameter in model.parameters()) - embedding
    config = model.config
    layers = getattr(config, "num_hidden_layers", 0) or 0
    hidden = getattr(config, "hidden_size", 0) or 0
    # Q.K^T and attention x V: 2 matmuls of (tokens x hidden) x (hidden x tokens), 2 FLOPs per multiply-add, x3 for
    # forward and backward.
    attention = 3 * 2 * 2 * layers * hidden * tokens_per_example
    return 6 * weights + attention


def share_of_peak(precision: Precision, cpu_units: list[str]) -> tuple[float, str]:
    """The share of ``CPU_SHARE_OF_PEAK`` for a run in ``precision`` on a CPU with ``cpu_units``, and its name."""
    if precision.mixed_precision != "bf16" or not cpu_units:
        return CPU_SHARE_OF_PEAK["fp32"], "fp32"
    unit = "AMX_BF16" if "AMX_BF16" in cpu_units else "AVX512_BF16"
    return CPU_SHARE_OF_PEAK[unit], "bf16"


@dataclass(frozen=True)
class CpuEstimate:
    examples: int  # training examples processed over the whole run (steps x global batch)
    flops: float  # training, and the evaluations (a forward pass: a third of a training step's arithmetic)
    peak_flops: float  # the matmul rate of the run's precision
    share: float  # of that rate, a training step's (CPU_SHARE_OF_PEAK)

    @property
    def seconds(self) -> float:
        return self.flops / (self.peak_flops * self.share)


def estimate_cpu_run(config: TrainConfig, processes: int, model: torch.nn.Module, tokens_per_example: float,
                     train_examples: int, eval_sizes: dict[str, int], peak_flops: float,
                     share: float = CPU_SHARE_OF_PEAK["fp32"]) -> CpuEstimate:
    """The run ``config`` describes on ``train_examples`` (after max_train_samples) and the evaluation splits of
    ``eval_sizes`` (after max_eval_samples), all counted in windows of ``tokens_per_example`` tokens: a long text
    is several examples (train_windows=all) and every evaluation reads each of its windows."""
    steps = config.total_steps(train_examples, processes)
    steps_per_epoch = max(1, train_examples // config.total_train_batch_size(processes))
    # Validation at each epoch end and every eval_every steps, and once more at the end; test once.
    validations = math.ceil(steps / steps_per_epoch) + (steps // config.eval_every if config.eval_every else 0) + 1
    eval_examples = eval_sizes.get("validation", 0) * validations + eval_sizes.get("test", 0)
    examples = steps * config.total_train_batch_size(processes)
    per_example = tokens_per_example * training_flops_per_token(model, tokens_per_example)
    return CpuEstimate(examples=examples, flops=(examples + eval_examples / 3) * per_example, peak_flops=peak_flops,
                       share=share)


def describe_cpu_cost(config: TrainConfig, processes: int, precision: Precision, model: torch.nn.Module,
                      tokens_per_example: float, train_examples: int, eval_sizes: dict[str, int]) -> str:
    """What ``distrinews launch`` prints before a CPU run in ``precision``: its estimate, and the quick run's."""
    share, dtype_name = share_of_peak(precision, cpu_bf16_units())
    peak = measure_matmul_flops(dtype=torch.bfloat16 if dtype_name == "bf16" else torch.float32)
    run = estimate_cpu_run(config, processes, model, tokens_per_example, train_examples, eval_sizes, peak, share)
    quick = estimate_cpu_run(TrainConfig(**{**config.to_dict(), **QUICK_RUN}), processes, model, tokens_per_example,
                             min(train_examples, QUICK_RUN["max_train_samples"]),
                             {name: min(size, QUICK_RUN["max_eval_samples"]) for name, size in eval_sizes.items()},
                             peak, share)
    epochs = (f"{config.max_steps} steps" if config.max_steps > 0
              else f"{config.num_train_epochs:g} epoch{'' if config.num_train_epochs == 1 else 's'}")
    return (f"estimate: {config.model_name_or_path} on {run.examples:,} training examples ({epochs}, with its "
            f"evaluations) takes about {describe_duration(run.seconds)} on this CPU ({os.cpu_count() or 1} cores: "
            f"{_flops(run.flops)} at {share:.0%} of the {peak / 1e9:.0f} GFLOP/s its {dtype_name} matmuls "
            f"reach here); a GPU takes minutes. For a quick run add {QUICK_RUN_FLAGS} (about "
            f"{describe_duration(quick.seconds)}).")


def describe_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86400:.1f} days"


def _flops(count: float) -> str:
    unit, scale = next((u, s) for u, s in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 0))
                       if count >= s)
    return f"{count / (scale or 1e6):.3g} {unit}"
