"""The training benchmark's own smoke run: every case (Trainer variants, distrinews, accuracy, DDP scaling)
executes end to end at a tiny size and lands in the JSON, the chart and the printed table."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO_ROOT


def test_benchmark_smoke_preset_runs_every_case(tmp_path):
    output = tmp_path / "smoke.json"
    done = subprocess.run([sys.executable, "benchmarks/bench_train.py", "--preset", "smoke", "--output", str(output)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(output.read_text())
    assert results["errors"] == []
    systems = {row["system"] for row in results["throughput"]}
    expected = {"trainer_tutorial", "trainer_dynamic", "distrinews"}
    assert expected <= systems and systems - expected <= {"distrinews_bf16"}  # bf16 only where the CPU has units
    assert all(row["samples_per_s"] > 0 and row["tokens_per_s"] > 0 for row in results["throughput"])
    assert {row["system"] for row in results["accuracy"]} == {"trainer_tutorial", "distrinews"}
    assert all(0 <= acc <= 1 for row in results["accuracy"] for acc in row["test_accuracy"])
    assert results["ddp_scaling"]["samples_per_s_2"] > 0 and results["ddp_scaling"]["efficiency"] > 0
    assert output.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    table = done.stdout[done.stdout.index("hardware:"):]
    assert "speedup tiny batch 8" in table and "DDP scaling on CPU" in table
