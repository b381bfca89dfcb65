"""How long a training run takes on this machine's CPU, said before it starts (``distrinews launch`` without a GPU).

The estimate counts the model's arithmetic at the data's real token count (6 FLOPs per parameter and token for
the forward and backward matmuls, plus attention) and divides it by this CPU's own fp32 matmul rate, measured on
the spot, times the share of that rate a distrinews training step reaches here (``CPU_SHARE_OF_PEAK``, from the
training benchmark, ``benchmarks/bench_train.py --preset cpu``). It is an estimate, not a promise: it says so.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

# MiniLM-L6, fp32, batch 32, 2 CPU processes: 22.3 samples/s at 3.4 GFLOP per example (README, Performance)
# against the 197 GFLOP/s the 2-core EPYC development machine measures for a large fp32 matmul.
CPU_SHARE_OF_PEAK = 0.38


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


def measure_matmul_flops(seconds: float = 0.4, size: int = 1024) -> float:
    """This CPU's fp32 matmul rate over all of torch's threads, in FLOP/s (a square matmul large enough to run at
    the kernels' peak, repeated for about ``seconds``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up: thread pool start, first-touch of the output
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or done < 3:
        torch.mm(a, b)
        done += 1
    return done * 2 * size**3 / elapsed


@dataclass(frozen=True)
class CpuEstimate:
    examples: int  # training examples processed over the whole run (steps x global batch)
    flops: float
    peak_flops: float

    @property
    def seconds(self) -> float:
        return self.flops / (self.peak_flops * CPU_SHARE_OF_PEAK)


def estimate_cpu_run(model: torch.nn.Module, examples: int, tokens_per_example: float,
                     peak_flops: float | None = None) -> CpuEstimate:
    flops = examples * tokens_per_example * training_flops_per_token(model, tokens_per_example)
    return CpuEstimate(examples=examples, flops=flops, peak_flops=peak_flops or measure_matmul_flops())


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


def cpu_estimate_message(model_name: str, run: CpuEstimate, quick: CpuEstimate, epochs: str) -> str:
    cores = os.cpu_count() or 1
    return (f"estimate: {model_name} on {run.examples:,} training examples ({epochs}) takes about "
            f"{describe_duration(run.seconds)} on this CPU ({cores} cores: {_flops(run.flops)} at "
            f"{CPU_SHARE_OF_PEAK:.0%} of the {run.peak_flops / 1e9:.0f} GFLOP/s its fp32 matmuls reach here). "
            f"A GPU is far faster (README, Training: the cost of a run). For a quick run add "
            f"--max_train_samples 2000 --num_train_epochs 1 (about {describe_duration(quick.seconds)}).")
