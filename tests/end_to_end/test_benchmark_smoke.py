"""The training benchmark's own smoke run: every case (Trainer variants, distrinews, accuracy, DDP scaling)
executes end to end at a tiny size and lands in the JSON, the chart and the printed table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT


def test_benchmark_smoke_preset_runs_every_case(tmp_path):
    output = tmp_path / "smoke.json"
    scratch = tmp_path / "tmp"  # the benchmark's TMPDIR: its work folder (models, data, checkpoints) must not outlive it
    scratch.mkdir()
    done = subprocess.run([sys.executable, "benchmarks/bench_train.py", "--preset", "smoke", "--output", str(output)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "TMPDIR": str(scratch)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(output.read_text())
    assert results["errors"] == []
    systems = {row["system"] for row in results["throughput"]}
    expected = {"trainer_tutorial", "trainer_dynamic", "distrinews"}
    # bf16 (and bf16 with torch's own dropout masks) only where the CPU has bf16 units, and then for both
    bf16 = {"trainer_dynamic_bf16", "distrinews_bf16", "distrinews_bf16_torch_dropout"}
    assert expected <= systems and systems - expected in (set(), bf16)
    assert all(row["samples_per_s"] > 0 and row["tokens_per_s"] > 0 for row in results["throughput"])
    # The machine's own limit, measured in the run, beside each case's share of it.
    peaks = results["cpu_peak"]
    assert set(peaks) == {"start", "end"} and all(value > 0 for value in peaks["start"].values())
    for row in results["throughput"]:
        assert row["achieved_gflops"] > 0 and row["fraction_of_peak"] == round(
            row["achieved_gflops"] / row["peak_gflops"], 6), row
        low, high = row["fraction_of_peak_spread"]
        assert 0 < low <= high
    assert {row["system"] for row in results["accuracy"]} == {"trainer_tutorial", "distrinews"}
    assert all(0 <= acc <= 1 for row in results["accuracy"] for acc in row["test_accuracy"])
    assert [row["mixed_precision"] for row in results["accuracy"] if row["system"] == "distrinews"][0] in {"bf16", "no"}
    scaling = results["ddp_scaling"]
    assert scaling["samples_per_s_2"] > 0 and scaling["efficiency"] > 0 and scaling["efficiency_equal_threads"] > 0
    assert output.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    table = done.stdout[done.stdout.index("hardware:"):]
    assert "speedup tiny batch 8" in table and "DDP scaling on CPU" in table and "of peak" in table
    assert "CPU matmul peak, GFLOP/s over all cores (start, end of the run): fp32 " in table
    assert not list(scratch.glob("bench_train_*"))


def test_sigterm_stops_the_running_case_and_removes_the_work_folder(tmp_path):
    import signal
    import time

    import psutil

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    parent = subprocess.Popen([sys.executable, "benchmarks/bench_train.py", "--preset", "smoke", "--output",
                               str(tmp_path / "smoke.json")], cwd=REPO_ROOT, env={**os.environ, "TMPDIR": str(scratch)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (workers := psutil.Process(parent.pid).children(recursive=True)):  # the first case has started
        assert parent.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    assert list(scratch.glob("bench_train_*"))
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 128 + signal.SIGTERM
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive
    assert not list(scratch.glob("bench_train_*"))


def test_an_unknown_recipe_is_refused_before_anything_runs():
    done = subprocess.run([sys.executable, "benchmarks/bench_train.py", "--preset", "cpu_recipes", "--recipes",
                           "baseline_all,nope"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown recipe(s): nope" in done.stderr


def test_the_step_profile_puts_every_operator_in_a_phase_and_a_kind(tmp_path, tiny_model, ag_news_dir):
    output = tmp_path / "profile.json"
    done = subprocess.run([sys.executable, "benchmarks/profile_train.py", "--model", str(tiny_model), "--data",
                           str(ag_news_dir), "--batch", "8", "--warmup", "1", "--steps", "2", "--peak_seconds", "0.2",
                           "--output", str(output)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    profile = json.loads(output.read_text())
    assert profile["steps"] == 2 and profile["step_seconds"] > 0 and profile["matmul_peak_gflops"] > 0
    for table in ("phases", "kinds"):
        assert abs(sum(profile[table].values()) - 1) < 0.01, profile[table]
    assert {"forward and the rest of the step", "backward", "optimizer"} <= set(profile["phases"])
    assert profile["kinds"]["matmul"] > 0 and profile["kinds"]["optimizer kernels"] > 0
    assert 0 < profile["matmul_share_of_peak"] and 0 < profile["step_share_of_peak"] < 1
    assert "| kinds | share of the step |" in done.stdout


def test_the_serving_profile_sets_the_int8_matmuls_against_the_one_thread_peak(tmp_path, tiny_model):
    output = tmp_path / "profile_serving.json"
    done = subprocess.run([sys.executable, "benchmarks/profile_serving.py", "--base-config", str(tiny_model),
                           "--batch", "2", "--tokens", "16", "--runs", "3", "--peak-seconds", "0.2",
                           "--output", str(output)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    profile = json.loads(output.read_text())
    assert (profile["batch"], profile["tokens"], profile["runs"], profile["threads"]) == (2, 16, 3, 1)
    operators = profile["operators_ms_per_run"]
    assert {"DynamicQuantizeMatMul", "MatMulIntegerToFloat"} & set(operators), operators  # the int8 weights
    matmuls = profile["quantized_matmuls"]
    assert 0 < matmuls["ms_per_run"] <= sum(operators.values()) <= profile["session_ms_per_run"] * 1.05
    assert 0 < matmuls["share_of_session"] < 1 and matmuls["of_peak"] > 0 and profile["session_of_peak"] > 0
    assert profile["int8_peak_gops_one_thread"] > 0 and "| operator | ms per run | share |" in done.stdout
