"""Long texts read the same way everywhere: windows in training (train_windows all|first), in every evaluation (the
loop's, ``distrinews evaluate``'s) and in serving. The set's label is carried only by words past its first 200
tokens, so a model that reads only a text's first window cannot learn it."""

from __future__ import annotations

import csv
import json
import random
import shutil

import numpy as np
import pytest
from huggingface_hub import ModelCard

from conftest import CLASS_WORDS, FILLER, accelerate_launch, assert_same_weights, tiny_train_args, write_csv_rows
from distrinews.cli import main as cli_main
from distrinews.core.predict import prediction_from_windows
from distrinews.core.tasks import MultiLabelTask, SingleLabelTask
from distrinews.training.config import TrainConfig
from distrinews.training.evaluation import SplitOutputs
from distrinews.training.loop import main as train_main

LABELS = {1: "world", 2: "sports", 3: "business", 4: "tech"}
WORDS_BEFORE_LABEL = 200  # filler words, one token each in the tiny vocabulary
LABEL_WORDS = 30
TRAIN_TEXTS, TEST_TEXTS = 160, 48
# 232 tokens with [CLS] and [SEP] in windows of 128 sharing 32: three windows per text.
WINDOWS_PER_TEXT = 3
RUN = dict(max_length=128, num_train_epochs=3, per_device_train_batch_size=16, per_device_eval_batch_size=16,
           logging_steps=1, checkpoint_every=30, keep_last=4)
RESUMED_AT = 60  # a checkpoint inside the third epoch


def long_text_rows(count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = [("text", "label")]
    for i in range(count):
        class_index = i % 4 + 1
        words = [rng.choice(FILLER) for _ in range(WORDS_BEFORE_LABEL)]
        words += [rng.choice(CLASS_WORDS[class_index]) for _ in range(LABEL_WORDS)]
        rows.append((" ".join(words), LABELS[class_index]))
    return rows


@pytest.fixture(scope="module")
def long_texts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long-texts")
    write_csv_rows(folder / "train.csv", long_text_rows(TRAIN_TEXTS, seed=0))
    write_csv_rows(folder / "test.csv", long_text_rows(TEST_TEXTS, seed=1))
    return folder


@pytest.fixture(scope="module")
def runs(tiny_model, long_texts, tmp_path_factory):
    """The output_dir of a run with train_windows=all and one with first (read-only)."""
    folders = {}
    for windows in ("all", "first"):
        folders[windows] = tmp_path_factory.mktemp(f"windows-{windows}") / "out"
        assert train_main(tiny_train_args(tiny_model, long_texts, folders[windows], train_windows=windows,
                                          **RUN)) == 0
    return folders


def _metrics(output_dir) -> dict:
    return json.loads((output_dir / "metrics.json").read_text())


def test_a_label_past_the_first_window_is_learned_from_all_windows_only(runs):
    learned, start_only = _metrics(runs["all"]), _metrics(runs["first"])
    train_texts = learned["data"]["rows"]["train"]
    assert learned["train"]["train_examples"] == WINDOWS_PER_TEXT * train_texts
    assert start_only["train"]["train_examples"] == train_texts
    assert learned["test"]["accuracy"] >= 0.9, learned["test"]
    assert start_only["test"]["accuracy"] <= 0.4, start_only["test"]  # chance is 0.25


def _losses(output_dir) -> list[tuple[int, float]]:
    records = map(json.loads, (output_dir / "log.jsonl").read_text().splitlines())
    return [(r["step"], r["loss"]) for r in records if r["type"] == "train"]


def test_two_processes_train_on_windows_as_one_process_with_double_batch(runs, tiny_model, long_texts, tmp_path):
    two = tmp_path / "two"
    accelerate_launch(tiny_train_args(tiny_model, long_texts, two, train_windows="all",
                                      **{**RUN, "per_device_train_batch_size": 8}), num_processes=2)
    one_losses, two_losses = _losses(runs["all"]), _losses(two)
    assert [step for step, _ in two_losses] == [step for step, _ in one_losses]
    for (step, a), (_, b) in zip(two_losses, one_losses):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), f"step {step}: 2x8 loss {a} != 1x16 loss {b}"
    one, two = _metrics(runs["all"]), _metrics(two)  # evaluated on 2 ranks: every window gathered once
    assert two["test"]["confusion_matrix"] == one["test"]["confusion_matrix"]
    assert two["test"]["loss"] == pytest.approx(one["test"]["loss"], rel=1e-4)


def test_a_run_on_windows_resumes_exactly(runs, tiny_model, long_texts, tmp_path):
    output_dir, reference = tmp_path / "out", runs["all"]
    name = f"checkpoints/step-{RESUMED_AT:08d}"
    shutil.copytree(reference / name, output_dir / name)
    shutil.copy(reference / "log.jsonl", output_dir / "log.jsonl")
    assert train_main(tiny_train_args(tiny_model, long_texts, output_dir, train_windows="all", **RUN)) == 0
    assert _losses(output_dir) == _losses(reference)  # bitwise: the same windows at every step
    assert_same_weights(reference / "model" / "model.safetensors", output_dir / "model" / "model.safetensors")
    assert _metrics(output_dir)["test"] == _metrics(reference)["test"]


def test_metrics_json_the_card_and_distrinews_evaluate_agree_to_the_digit(runs, long_texts, tmp_path):
    output_dir = runs["all"]
    metrics = _metrics(output_dir)
    for split in ("validation", "test"):
        scores = tmp_path / f"{split}.json"
        assert cli_main(["evaluate", "--model", str(output_dir / "model"), "--dataset", str(long_texts),
                         "--split", split, "--seed", "7", "--validation_fraction", "0.1", "--max_length", "128",
                         "--per_device_eval_batch_size", "16", "--dataloader_num_workers", "0",
                         "--output", str(scores)]) == 0
        trained = metrics[split]
        # Every metric, the loss and the calibration included; the saved model is the calibrated one, so only the
        # training run knows the scores before calibration.
        without_before = {**trained, **{key: {"after": trained[key]["after"]} for key in ("calibration", "reliability")}}
        assert json.loads(scores.read_text()) == without_before
    card = ModelCard.load(output_dir / "model" / "README.md")
    assert card.data.eval_results[0].metric_value == round(metrics["test"]["accuracy"], 4)
    assert "read in overlapping windows of that many, up to 16" in card.text


def test_evaluate_on_the_corpus_path_agrees_and_shards_over_processes(runs, long_texts, tmp_path,
                                                                      monkeypatch):
    """``evaluate --backend``: the split classified as ``predict --input`` classifies a corpus. In fp32 it agrees with
    metrics.json (other batches: equal to rounding); in int8 two processes give exactly what one gives."""
    output_dir = runs["all"]
    data = ["--model", str(output_dir / "model"), "--dataset", str(long_texts), "--seed", "7",
            "--validation_fraction", "0.1", "--shard_size", "16"]
    assert cli_main(["evaluate", *data, "--backend", "torch", "--output", str(tmp_path / "torch.json")]) == 0
    scores, trained = json.loads((tmp_path / "torch.json").read_text()), _metrics(output_dir)["test"]
    assert scores["confusion_matrix"] == trained["confusion_matrix"] and scores["accuracy"] == trained["accuracy"]
    for name in ("loss", "macro_f1"):
        assert scores[name] == pytest.approx(trained[name], abs=1e-5)
    assert scores["calibration"]["after"]["nll"] == pytest.approx(trained["calibration"]["after"]["nll"], abs=1e-5)

    monkeypatch.setenv("ONNX_CACHE_DIR", str(tmp_path / "onnx"))  # the processes launched inherit it
    assert cli_main(["evaluate", *data, "--backend", "int8", "--output", str(tmp_path / "one.json")]) == 0
    accelerate_launch(["evaluate", *data, "--backend", "int8", "--output", str(tmp_path / "two.json")],
                      module="distrinews")
    assert (tmp_path / "one.json").read_text() == (tmp_path / "two.json").read_text()


def test_the_space_serves_what_metrics_json_measured(runs, long_texts, tmp_path):
    from distrinews.serving.service import ClassifierService, ServingConfig

    output_dir = runs["all"]
    service = ClassifierService.load(ServingConfig(model_id=str(output_dir / "model"), quantize="none",
                                                   onnx_cache_dir=str(tmp_path)))
    with (long_texts / "test.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    predictions = service.predict_now([row["text"] for row in rows])
    assert {prediction.windows for prediction in predictions} == {WINDOWS_PER_TEXT}
    labels = service.labels
    confusion = np.zeros((len(labels), len(labels)), dtype=int)
    for row, prediction in zip(rows, predictions):
        confusion[labels.index(row["label"]), labels.index(prediction.label)] += 1
    assert confusion.tolist() == _metrics(output_dir)["test"]["confusion_matrix"]


@pytest.mark.parametrize("windows", ["all", "first"])
def test_the_launch_estimate_counts_the_windows(windows, tiny_model, long_texts, tmp_path):
    from distrinews.launch.preflight import preflight

    config = TrainConfig(model_name_or_path=str(tiny_model), dataset=str(long_texts), output_dir=str(tmp_path),
                         max_length=128, validation_fraction=0.1, train_windows=windows)
    report = preflight(config, say=lambda line: None)
    train_texts = TRAIN_TEXTS - round(0.1 * TRAIN_TEXTS)
    assert report.train_examples == train_texts * (WINDOWS_PER_TEXT if windows == "all" else 1)
    assert report.eval_sizes == {"validation": 16 * WINDOWS_PER_TEXT, "test": TEST_TEXTS * WINDOWS_PER_TEXT}
    assert report.tokens_per_example > 100 if windows == "first" else 2 * 128 / 3 < report.tokens_per_example


@pytest.mark.parametrize("task", [SingleLabelTask(("a", "b", "c")), MultiLabelTask(("a", "b", "c"), 0.4)],
                         ids=["single_label", "multi_label"])
def test_text_probabilities_combine_windows_exactly_as_the_space_does(task):
    counts = np.random.default_rng(1).choice([1, 1, 1, 2, 3, 16], size=200)
    logits = (np.random.default_rng(0).normal(size=(counts.sum(), 3)) * 4).astype(np.float32)
    text_index = np.repeat(np.arange(len(counts)), counts)
    for outputs in (SplitOutputs(logits, np.zeros(len(counts), dtype=np.int64), text_index),
                    SplitOutputs(logits, np.zeros(len(logits), dtype=np.int64))):  # one window per text
        windows_of = outputs.text_index if outputs.text_index is not None else np.arange(len(logits))
        served = [list(prediction_from_windows(task, logits[windows_of == text], False).probabilities.values())
                  for text in range(windows_of[-1] + 1)]
        assert outputs.text_probabilities(task).tolist() == served  # bitwise
