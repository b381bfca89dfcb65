"""Shared test fixtures: a tiny real DistilBERT with a real WordPiece tokenizer, and small AG News files.

Nothing here reads ../shared or the network: every test builds its own model and data.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import pytest
from filelock import FileLock
from hypothesis import strategies as st

REPO_ROOT = Path(__file__).resolve().parents[1]

# Importing the kaggle client creates its config folder when it is missing (an exists() check, then makedirs()):
# two xdist workers collecting tests/end_to_end/test_kaggle_bundle.py at once on a machine without that folder
# raced, and one failed collection with FileExistsError. The tests need no Kaggle credentials, so the client gets
# a folder of its own that already exists, made race-free here, before any test module is imported.
os.environ.setdefault("KAGGLE_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "distrinews-tests-kaggle-config"))
os.makedirs(os.environ["KAGGLE_CONFIG_DIR"], exist_ok=True)

# The files that take longest, in the order the workers take them up (the rest follow in their usual order):
# a worker runs one file at a time (--dist loadfile), so a long file begun last would leave the other worker idle
# at the end of the run. The fault-injection file first: the reference run it builds is shared by the Hub-checkpoint
# file, which comes a few files later. (xdist's own order, by number of tests, put these last: pyproject.toml turns
# it off with --no-loadscope-reorder.)
LONGEST_FILES_FIRST = ("training/test_fault_injection.py", "sweep/test_sweep.py", "end_to_end/test_kaggle_bundle.py",
                       "end_to_end/test_notebook.py", "hub/test_hub_checkpoints.py",
                       "end_to_end/test_inference_benchmark.py", "end_to_end/test_launch_failures.py",
                       "end_to_end/test_own_data.py", "end_to_end/test_benchmark_smoke.py",
                       "serving/test_space_server.py", "hub/test_hub_push.py", "training/test_precision.py",
                       "sweep/test_sweep_workers.py", "training/test_windows.py", "corpus/test_predict_corpus.py",
                       "corpus/test_corpus_sources.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: position for position, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0].removeprefix("tests/"), len(rank)))

# Words that mark each class, plus filler shared by all classes, so a tiny model can learn something.
CLASS_WORDS = {
    1: "minister election embassy treaty rebels parliament ceasefire diplomat refugees summit".split(),
    2: "coach league striker playoff tournament goalkeeper season medal stadium champion".split(),
    3: "shares profit investors quarterly earnings merger stocks revenue bank inflation".split(),
    4: "software internet researchers satellite chip browser genome nasa wireless linux".split(),
}
FILLER = "the a of to in on for with after report said new says will year two first over".split()
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Every code point: surrogates (Cs) are excluded unless categories are given explicitly.
ANY_CHARACTER = st.characters(codec=None, exclude_categories=())
ANY_TEXT = st.text(ANY_CHARACTER, max_size=80)
ODD_TEXTS = ["\ud800", "\udfff fine", "ok \ud83d lone high", "nul\x00inside", "\x1b[31mred\x1b[0m",
             "\u202eevil override\u202c", "zero\u200bwidth\ufeff", "\u0000", "\u200b\u200d\u2060", "\U0010ffff",
             "e\u0301\u0301\u0301", "東京 株価 上昇", "word" * 20_000, " \t\n\r\x0b\x0c "]


def _sentence(rng: random.Random, class_index: int, words: int) -> str:
    pool = CLASS_WORDS[class_index] * 2 + FILLER
    return " ".join(rng.choice(pool) for _ in range(words))


def ag_news_rows(count: int, seed: int) -> list[tuple[str, str, str]]:
    """Rows in the original AG News layout: (class_index 1..4, title, description)."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        class_index = i % 4 + 1
        rows.append((str(class_index), _sentence(rng, class_index, rng.randint(3, 8)).title(),
                     _sentence(rng, class_index, rng.randint(4, 40))))
    rng.shuffle(rows)
    return rows


def write_csv_rows(path: Path, rows) -> Path:
    """Rows as a CSV file the way the original AG News files quote them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, quoting=csv.QUOTE_ALL).writerows(rows)
    return path


def write_ag_news_folder(folder: Path, n_train: int = 240, n_test: int = 61, seed: int = 0) -> Path:
    for name, count, split_seed in (("train.csv", n_train, seed), ("test.csv", n_test, seed + 1)):
        write_csv_rows(folder / name, ag_news_rows(count, split_seed))
    return folder


def load_splits(source, **options):
    """The labelled splits ``distrinews.training.data`` makes of ``source`` (a folder or a Hub id)."""
    from distrinews.training.data import DataOptions, load_labelled_data

    return load_labelled_data(DataOptions(str(source), **options)).splits


def write_tiny_model(folder: Path) -> Path:
    """A 2-layer DistilBERT (random init, no dropout so runs are comparable) with a WordPiece vocab."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = sorted({w for ws in CLASS_WORDS.values() for w in ws} | set(FILLER))
    pieces = ["##s", "##ed", "##ing", "##er"] + list("abcdefghijklmnopqrstuvwxyz0123456789") + \
        [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    vocab = SPECIAL_TOKENS + list(".,;:'\"!?-()$%&/") + words + pieces
    tokenizer = DistilBertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True,
                                        model_max_length=128)
    config = DistilBertConfig(vocab_size=len(vocab), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              max_position_embeddings=128, dropout=0.0, attention_dropout=0.0,
                              seq_classif_dropout=0.0, num_labels=4)
    import torch

    torch.manual_seed(0)
    DistilBertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def shared_folder(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """A read-only folder built once per test session, however many pytest-xdist workers ask for it: the first
    builds it under a file lock, the others wait for it and read the same files (the same paths, too, which
    checkpoint signatures record). A failed build leaves nothing, so the next asker tries again."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # each worker's own base folder sits in the session's
    folder = root / "shared" / name
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not (folder.parent / f"{name}.done").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            try:
                build(folder)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            (folder.parent / f"{name}.done").touch()
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return shared_folder(tmp_path_factory, "tiny-distilbert", write_tiny_model)


@pytest.fixture(scope="session")
def ag_news_dir(tmp_path_factory) -> Path:
    return shared_folder(tmp_path_factory, "ag_news", write_ag_news_folder)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A real PostgreSQL server on 127.0.0.1 for this test process (tests/postgres_server.py), stopped at the end
    of the session; skipped without Debian's postgresql, except under CI, where it fails."""
    from postgres_server import PostgresServer

    with PostgresServer(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """``postgresql://USER@127.0.0.1:PORT/DB``: a new empty database on that server for this test alone."""
    return postgres_server.create_database(f"test_{os.getpid()}_{next(_DATABASE_NUMBERS)}")


_DATABASE_NUMBERS = itertools.count()


@pytest.fixture(scope="session")
def metric_modules(tmp_path_factory) -> dict[str, str]:
    """Local evaluate metric modules (tests/metric_modules.py), by metric name: their paths (read-only)."""
    from metric_modules import metric_paths, write_metric_modules

    return metric_paths(shared_folder(tmp_path_factory, "metric-modules", write_metric_modules))


@pytest.fixture(scope="session")
def space_model(tmp_path_factory) -> Path:
    """The tiny model with AG News label names and a model card holding a test accuracy (read-only)."""
    from space_support import write_space_model

    return write_space_model(tmp_path_factory.mktemp("space-model"))


@pytest.fixture(scope="session")
def shipped_space_model(tmp_path_factory) -> Path:
    """The same with its int8 graph shipped beside the weights, as ``distrinews push`` uploads it (read-only)."""
    from space_support import write_space_model

    from distrinews.core.modeling import load_classifier
    from distrinews.serving.export import write_shipped_graph

    folder = write_space_model(tmp_path_factory.mktemp("shipped-space-model"))
    model, tokenizer = load_classifier(str(folder))
    write_shipped_graph(model, folder, tokenizer)
    return folder


@pytest.fixture(autouse=True, scope="session")
def _offline_and_isolated(tmp_path_factory):
    """No network, a private datasets cache, one thread per process on these small machines, and fp32.

    Training in one process defaults to the machine's fastest precision (bf16 on a CPU with bf16 units), and CI's
    machine changes CPU class between runs: the suite pins fp32, as accelerate_configs/cpu.yaml does, so a tiny
    run's numbers do not depend on the CPU drawn. tests/training/test_precision.py lifts the pin to test the
    default, and trains in bf16 on every CPU."""
    cache = tmp_path_factory.mktemp("hf-cache")
    os.environ.update({
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache / "datasets"),
        "HF_HOME": str(cache / "home"), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1", "MPLBACKEND": "Agg", "ACCELERATE_MIXED_PRECISION": "no",
    })
    import torch

    # torch reads OMP_NUM_THREADS when it is imported, and a test module may import it before this fixture runs:
    # in-process runs would then sum in another order than the subprocess runs they are compared with bitwise.
    torch.set_num_threads(1)
    yield


def assert_same_weights(a: Path, b: Path) -> None:
    """The two safetensors files hold bitwise the same tensors."""
    import torch
    from safetensors.torch import load_file

    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    different = [name for name in wa if not torch.equal(wa[name], wb[name])]
    assert not different, f"{a} and {b} differ in {different}"


def assert_published_weights_are(chosen: Path, run_dir: Path) -> None:
    """The run's published ``model/`` holds the ``chosen`` weights (a safetensors file), with the calibration
    temperature of its metrics.json folded into the classifier (distrinews/training/decisions.py), and only there."""
    import torch
    from safetensors.torch import load_file

    weights, published = load_file(chosen), load_file(run_dir / "model" / "model.safetensors")
    (temperature,) = json.loads((run_dir / "metrics.json").read_text())["calibration"]["temperature"]
    folded = {"classifier.weight", "classifier.bias"}
    assert weights.keys() == published.keys()
    different = [name for name in weights.keys() - folded if not torch.equal(weights[name], published[name])]
    assert not different, f"{chosen} and the published weights differ in {different}"
    for name in folded:
        assert torch.allclose(published[name], weights[name] / temperature, rtol=1e-6, atol=0), name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_train_args(model: Path, data: Path, output_dir: Path, **overrides) -> list[str]:
    """Flags for a fast tiny run; overrides replace defaults (use str values)."""
    flags = {
        "model_name_or_path": str(model), "dataset": str(data), "output_dir": str(output_dir),
        "num_train_epochs": "2", "per_device_train_batch_size": "8", "per_device_eval_batch_size": "7",
        "learning_rate": "5e-3", "max_length": "64", "logging_steps": "5", "dataloader_num_workers": "0",
        "validation_fraction": "0.1", "seed": "7",
    }
    flags.update({key: str(value) for key, value in overrides.items()})
    return [part for key, value in flags.items() for part in (f"--{key}", value)]


def accelerate_launch(train_args: list[str], num_processes: int = 2, timeout: float = 300,
                      extra_env: dict | None = None, check: bool = True,
                      mixed_precision: str = "no", module: str = "distrinews.train") -> subprocess.CompletedProcess:
    """Run ``module`` (distrinews.train) through a real `accelerate launch` with the repository's CPU config."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO_ROOT / "accelerate_configs" / "cpu.yaml"), "--num_processes", str(num_processes),
               "--mixed_precision", mixed_precision,
               "--main_process_port", str(free_port()), "-m", module, *train_args]
    env = {**os.environ, **(extra_env or {})}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"accelerate launch failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-6000:]}")
    return result


# The uninterrupted 2-process run that the fault-injection and Hub-checkpoint tests' interrupted runs must equal:
# 2 epochs of 13 steps (216 examples, 2 processes x 8), a checkpoint every 4 steps, the best weights kept.
REFERENCE_RUN = dict(model_selection="best_validation", logging_steps=1, checkpoint_every=4)
REFERENCE_STEPS = 26


@pytest.fixture(scope="session")
def reference_run(tiny_model, ag_news_dir, tmp_path_factory) -> Path:
    """The output_dir of that run (read-only: tests copy from it, never into it)."""
    def train(folder: Path) -> None:
        accelerate_launch(tiny_train_args(tiny_model, ag_news_dir, folder / "out", **REFERENCE_RUN), timeout=420)

    return shared_folder(tmp_path_factory, "reference-run", train) / "out"


# One 2-process run read by the end-to-end and the tracking tests: TensorBoard, a log line every 3 steps and a
# validation every 4 (2 epochs of 13 steps, as the reference run's); what the launch printed is kept beside it.
TWO_PROCESS_RUN = dict(report_to="tensorboard", run_name="tiny-run", logging_steps=3, eval_every=4)
TWO_PROCESS_STEPS = REFERENCE_STEPS


@pytest.fixture(scope="session")
def two_process_run(tiny_model, ag_news_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """(output_dir, what the launch printed) of that run (read-only)."""
    def train(folder: Path) -> None:
        result = accelerate_launch(tiny_train_args(tiny_model, ag_news_dir, folder / "out", **TWO_PROCESS_RUN))
        (folder / "stdout.txt").write_text(result.stdout)
        (folder / "stderr.txt").write_text(result.stderr)

    folder = shared_folder(tmp_path_factory, "two-process-run", train)
    printed = subprocess.CompletedProcess(args=["accelerate", "launch"], returncode=0,
                                          stdout=(folder / "stdout.txt").read_text(),
                                          stderr=(folder / "stderr.txt").read_text())
    return folder / "out", printed

