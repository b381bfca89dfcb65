"""Where one serving lane's time goes, per ONNX Runtime operator, against this CPU's int8 peak.

    python benchmarks/profile_serving.py                     # DistilBERT's architecture, batches of 4 x 52 tokens
    python benchmarks/profile_serving.py --base-config MINILM_DIR --batch 1

It builds the classifier as ``bench_inference.py`` does (the architecture of ``--base-config``, random weights, its
real tokenizer), ships its int8 graph as ``distrinews push`` does, and runs ``--runs`` batches of ``--batch`` texts
of ``--tokens`` tokens through one single-thread session over it, the session a Space lane runs, with ONNX
Runtime's profiler on. Each operator's time is summed by its type; the quantized matmuls' work (the weights'
multiply-adds, counted from the config) over their time is set against the single-thread int8 peak measured in the
same run with the served recipe (``bench_inference.measure_peaks``, before and after the profile). The session's
time outside those matmuls is what keeps a lane below the peak. Writes
benchmarks/results/profile_serving_<model>.json and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from bench_inference import SHARED, build_classifier, measure_peaks, served_flops  # noqa: E402 - run as a script

# ONNX Runtime's kernels for the int8 weight matmuls of a quantize_dynamic graph, after its graph optimizations.
QUANTIZED_MATMULS = ("DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-config", type=Path, default=SHARED / "distilbert-base-uncased")
    parser.add_argument("--batch", type=int, default=4, help="Texts per session run.")
    parser.add_argument("--tokens", type=int, default=52, help="Tokens per text (52: an AG News headline's mean).")
    parser.add_argument("--runs", type=int, default=30, help="Profiled session runs, after 5 unprofiled ones.")
    parser.add_argument("--peak-seconds", type=float, default=2.0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    for name in ("batch", "tokens", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    with tempfile.TemporaryDirectory(prefix="profile-serving-") as work:
        results = profile(args, Path(work))
    output = args.output or REPO_ROOT / "benchmarks" / "results" / f"profile_serving_{results['model']}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nwritten: {output}")
    return 0


def profile(args, work: Path) -> dict:
    from distrinews.core.modeling import load_classifier
    from distrinews.serving.export import write_shipped_graph

    model_dir = build_classifier(work / "model", args.base_config)
    model, tokenizer = load_classifier(str(model_dir))
    graph = write_shipped_graph(copy.deepcopy(model), model_dir, tokenizer)
    # A real token sequence of the asked length (ids within any vocabulary), the same for every text.
    ids = tokenizer(" ".join(["markets rally as the bank holds rates"] * args.tokens))["input_ids"][:args.tokens]
    # The peak before and after the profile, the better of the two: one measurement moves by ~5% on a shared host.
    peaks = [measure_peaks(1, work, args.peak_seconds)["int8"]]
    op_ms, run_ms = _profile_session(graph, [ids] * args.batch, args.runs, work)
    peaks.append(measure_peaks(1, work, args.peak_seconds)["int8"])
    peak = max(peaks)
    config = model.config
    texts_work = args.batch * served_flops(config, args.tokens)
    weights_work = args.batch * served_flops(config, args.tokens, attention=False)
    matmul_ms = sum(op_ms.get(op, 0.0) for op in QUANTIZED_MATMULS)
    return {
        "model": args.base_config.name.replace("-", "_").lower(), "base_config": str(args.base_config),
        "batch": args.batch, "tokens": args.tokens, "runs": args.runs, "threads": 1,
        "int8_peak_gops_one_thread": peak, "int8_peak_gops_before_after": peaks, "session_ms_per_run": round(run_ms, 3),
        "work_gflop_per_run": round(texts_work / 1e9, 3),
        "session_of_peak": round(texts_work / (run_ms / 1000) / (peak * 1e9), 4),
        "quantized_matmuls": {"ms_per_run": round(matmul_ms, 3), "share_of_session": round(matmul_ms / run_ms, 4),
                              "gops": round(weights_work / (matmul_ms / 1000) / 1e9, 1),
                              "of_peak": round(weights_work / (matmul_ms / 1000) / (peak * 1e9), 4)},
        "operators_ms_per_run": {op: round(ms, 3) for op, ms in sorted(op_ms.items(), key=lambda kv: -kv[1])},
    }


def _profile_session(graph: Path, batch: list[list[int]], runs: int, work: Path) -> tuple[dict[str, float], float]:
    """Milliseconds per run of ``batch`` (token ids of one length) by operator type, and the whole run's, of a
    single-thread session over ``graph``."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    options.profile_file_prefix = str(work / "ort-profile")
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    inputs = {"input_ids": np.array(batch, dtype=np.int64), "attention_mask": np.ones((len(batch), len(batch[0])),
                                                                                    dtype=np.int64)}
    warm_up = 5  # the first runs allocate and pick kernels; profiled too, but not counted
    for _ in range(warm_up + runs):
        session.run(None, inputs)
    events = json.loads(Path(session.end_profiling()).read_text())
    measured = sorted((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"),
                      key=lambda e: e["ts"])[warm_up:]
    by_op: Counter = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= measured[0]["ts"]:
            by_op[event["args"]["op_name"]] += event["dur"]
    return ({op: us / len(measured) / 1000 for op, us in by_op.items()},
            sum(e["dur"] for e in measured) / len(measured) / 1000)


def print_table(results: dict) -> None:
    matmuls = results["quantized_matmuls"]
    print(f"one single-thread session, {results['batch']} texts x {results['tokens']} tokens, {results['runs']} runs: "
          f"{results['session_ms_per_run']} ms a run for {results['work_gflop_per_run']} GFLOP = "
          f"{results['session_of_peak']:.1%} of the one-thread int8 peak ({results['int8_peak_gops_one_thread']} "
          f"GOP/s); the int8 weight matmuls {matmuls['gops']} GOP/s = {matmuls['of_peak']:.1%} of it, "
          f"{matmuls['share_of_session']:.1%} of the session")
    print("| operator | ms per run | share |\n| --- | ---: | ---: |")
    total = sum(results["operators_ms_per_run"].values())
    for op, ms in results["operators_ms_per_run"].items():
        if ms / total >= 0.002:
            print(f"| {op} | {ms} | {ms / total:.1%} |")


if __name__ == "__main__":
    sys.exit(main())
