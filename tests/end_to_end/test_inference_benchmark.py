"""The inference benchmark's own smoke run: every path (the pipeline, the bare int8 session, the Space's routes
under uvicorn on loopback, the cold starts, where a request's time goes, the accuracy part) executes end to end at
a tiny size and lands in the JSON and the printed tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT, write_ag_news_folder, write_tiny_model


def test_inference_benchmark_runs_every_path_at_a_tiny_size(tmp_path):
    """bench_inference.py end to end with a tiny model: the pipeline, the bare int8 session, and both Space
    servers under uvicorn on loopback (single-text latency in rounds and 4 concurrent clients), the cold starts,
    where a request's time goes, plus the accuracy part."""
    data = write_ag_news_folder(tmp_path / "ag_news", n_train=8, n_test=48)
    model = write_tiny_model(tmp_path / "tiny")
    output = tmp_path / "inference.json"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = subprocess.run([sys.executable, "benchmarks/bench_inference.py", "--data", str(data / "test.csv"),
                           "--base-config", str(model), "--latency-texts", "12", "--latency-rounds", "2",
                           "--latency-idle-ms", "2", "--throughput-texts", "24", "--rounds", "2", "--clients", "4", "--cold-starts", "1",
                           "--peak-seconds", "0.2",
                           "--space-quantize", "int8",  # the shipped graph even on a CPU without VNNI
                           "--accuracy-model", str(model), "--output", str(output)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TMPDIR": str(scratch)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(output.read_text())
    assert results["latency_rounds"] == 2
    assert set(results["paths"]) == {"pipeline", "ort-int8", "space-fp32", "space", "space-1-lane", "space-hf"}
    for name, row in results["paths"].items():
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["texts_per_s_32_clients"] > 0, (name, row)
        for key in ("p50_ms", "p99_ms", "texts_per_s_32_clients" if "statuses" in row else "texts_per_s_batch_32"):
            low, high = row[f"{key}_spread"]  # the median over rounds lies within the rounds' [min, max]
            assert 0 < low <= row[key] <= high, (name, key, row)
    peaks = results["peak_gflops"]
    assert all(peaks[when][dtype] > 0 for when in ("start", "end") for dtype in ("fp32", "int8"))
    assert results["work"]["gflop_per_text"]["latency"] > 0
    for name, row in results["paths"].items():  # each path against the peak of its own arithmetic
        assert row["peak_gflops"] == max(peaks["start"][row_dtype(name, row)], peaks["end"][row_dtype(name, row)])
        assert 0 < row["p50_of_peak"] and 0 < row["throughput_of_peak"], (name, row)
    assert "p50 of peak" in done.stdout and "int8 (ONNX Runtime, the served recipe)" in done.stdout
    for name in ("space-fp32", "space", "space-1-lane", "space-hf"):
        assert results["paths"][name]["statuses"] == {"200": 24}  # every request answered, no errors
    assert results["paths"]["space"]["quantization"] == "int8"
    assert 0 < results["paths"]["space"]["health_round_trip_p50_ms"] < results["paths"]["space"]["p50_ms"]
    assert results["paths"]["space-fp32"]["agreement_with_fp32_pct"] == 100.0
    accuracy = results["accuracy"]["paths"]
    assert results["accuracy"]["texts"] == 48
    # The served fp32 model (last layer cut to position 0) predicts exactly what the trained one does.
    assert accuracy["fp32 (torch, as trained)"]["agreement_with_fp32_pct"] == 100
    assert accuracy["fp32 (QUANTIZE=none)"]["agreement_with_fp32_pct"] == 100
    ratios = results["ratios"]
    assert set(ratios) >= {"p50_speedup_vs_pipeline", "p50_vs_ort_int8", "throughput_vs_pipeline_batch_32"}
    assert results["paths"]["space-hf"]["quantization"] == "int8"
    for key in ("p50_speedup_vs_pipeline", "p50_vs_ort_int8", "p50_hf_route_over_api", "p50_one_lane_over_lanes",
                "throughput_lanes_over_one_lane"):
        assert ratios[f"{key}_spread"][0] <= ratios[key] <= ratios[f"{key}_spread"][1]

    cold = results["cold_start"]
    assert cold["repeats"] == 1
    for key in ("gradio_import_s", "space_ready_s", "pipeline_first_prediction_s"):
        assert cold[key] > 0 and cold[f"{key}_spread"] == [cold[key], cold[key]] and len(cold["runs_s"][key]) == 1
    assert cold["space_vs_gradio_import"] > 0 and cold["pipeline_vs_space"] > 0
    # The int8 Space starts from the graph shipped with the model: no torch in its process, nor transformers.
    assert cold["space_quantization"] == "int8"
    assert cold["space_imports_torch"] is False and cold["space_heavy_modules"] == []

    stages = results["stages"]
    assert stages["space"]["requests"] == 2 * 12
    warm, first = stages["space"]["median_ms"], stages["space"]["cold_request_ms"]
    assert set(warm) == set(first) == {"queue", "batch", "respond", "handler", "outside_handler", "total"}
    # batch and queue are timed on the event loop's clock (whole ms under uvloop): no order against the handler
    assert warm["batch"] >= 0 and 0 < warm["handler"] < warm["total"] and warm["outside_handler"] > 0
    assert first["batch"] >= 0 and 0 < first["handler"] < first["total"]
    assert stages["space-in-process"]["texts"] == stages["ort-int8"]["texts"] == 2 * 12
    assert all(v > 0 for v in stages["space-in-process"]["median_ms"].values())
    bare = stages["ort-int8"]["median_ms"]
    assert 0 < bare["tokenize"] < bare["total"] and 0 < bare["session_run_softmax"] < bare["total"]

    for table in ("| space |", "cold start", "import gradio", "where a single request's time goes",
                  "| space: HTTP round trip |"):
        assert table in done.stdout, table
    assert not list(scratch.glob("bench-inference-*"))  # the model and its ONNX exports went with the run


def row_dtype(name: str, row: dict) -> str:
    return "int8" if name == "ort-int8" or row.get("quantization") == "int8" else "fp32"
