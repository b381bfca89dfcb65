"""Training on one's own labelled text, end to end with a tiny model: each kind of data the README shows, written
as pandas and spreadsheet users write it, trained by the real entry point, then read back as a user would: the
saved config's labels, metrics.json, the model card, ``pipeline()`` on the saved folder, and the Space serving it.

One run per case, shared by the tests that only read its outputs: in-process where distribution does not matter,
one 2-process ``accelerate launch`` for multi-label (DDP equivalence with one process, early stopping on both ranks
at the same step), and one ``python -m distrinews.train`` against a Hub dataset on a local Hub mirror.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from huggingface_hub import ModelCard

from conftest import REPO_ROOT, accelerate_launch, assert_same_weights, shared_folder, tiny_train_args
from distrinews.training.loop import main as train_main
from labelled_data import multi_label_rows, single_label_rows, words_of

MULTI = "multi_label_classification"
TOPICS = ("business", "sport", "tech", "world")
BBC = ("politics", "sport", "tech", "business", "entertainment")
TAIL = tuple(f"topic-{i:02d}" for i in range(30))
# Every optimizer step of the 2-process run is 2 x 4 = 8 examples, as the 1-process run's 8. Micro-F1 lies in
# [0, 1], so it never improves by more than 1.0: evaluation 1 (step 5) sets the best, 5 more use up the patience.
MULTI_LABEL_RUN = dict(problem_type=MULTI, label_column_name="topics", num_train_epochs=3, validation_fraction=0.2,
                       logging_steps=1, eval_every=5, early_stopping_patience=5, early_stopping_threshold=1.0,
                       class_weights="balanced", checkpoint_every=10, keep_last=10)
MULTI_LABEL_STOP = 30


def _run_in_process(tiny_model, data, output_dir, **flags):
    assert train_main(tiny_train_args(tiny_model, data, output_dir, **flags)) == 0
    return output_dir


def _json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _trained(tmp_path_factory, name: str, write_data, tiny_model, **flags) -> Path:
    """The run folder of one in-process run on the files ``write_data(folder)`` writes, built once per session
    (however many xdist workers ask: conftest.shared_folder)."""
    def build(folder: Path) -> None:
        (folder / "data").mkdir(parents=True)
        write_data(folder / "data")
        _run_in_process(tiny_model, folder / "data", folder / "run", **flags)

    return shared_folder(tmp_path_factory, f"own-data-{name}", build) / "run"


@pytest.fixture(scope="session")
def two_string_labels(tiny_model, tmp_path_factory, metric_modules):
    """spam/ham in CSV files as Excel saves them (byte-order mark, CRLF); two local extra metrics (one given the
    predictions, one the scores) and a TensorBoard log."""
    def write(data):
        for split, count, seed in (("train", 60, 1), ("test", 20, 2)):
            single_label_rows(["spam", "ham"], [count, count], seed).to_csv(
                data / f"{split}.csv", index=False, encoding="utf-8-sig", lineterminator="\r\n")

    extra = f"{metric_modules['error_rate']},{metric_modules['score_accuracy']}"
    return _trained(tmp_path_factory, "spam", write, tiny_model, num_train_epochs=2, extra_metrics=extra,
                    report_to="tensorboard", target_precision=0.8), ("ham", "spam")


@pytest.fixture(scope="session")
def five_integer_labels(tiny_model, tmp_path_factory):
    """BBC News' five topics as integers 0-4 in Parquet, named by --label_names."""
    def write(data):
        for split, count, seed in (("train", 24, 3), ("test", 6, 4)):
            single_label_rows(range(5), [count] * 5, seed).to_parquet(data / f"{split}.parquet")

    return _trained(tmp_path_factory, "bbc", write, tiny_model, num_train_epochs=1, label_names=",".join(BBC)), BBC


TAIL_COUNTS = [max(2, 40 // (i + 1)) for i in range(30)]


@pytest.fixture(scope="session")
def thirty_labels_long_tail(tiny_model, tmp_path_factory):
    """30 topics from 40 rows down to 2 (JSONL), with balanced class weights."""
    def write(data):
        single_label_rows(TAIL, TAIL_COUNTS, seed=5).to_json(data / "train.jsonl", orient="records", lines=True)
        single_label_rows(TAIL, [1] * 30, seed=6).to_json(data / "test.jsonl", orient="records", lines=True)

    return _trained(tmp_path_factory, "tail", write, tiny_model, num_train_epochs=1, validation_fraction=0,
                    class_weights="balanced"), TAIL


@pytest.fixture(scope="session")
def multi_label_csv(tiny_model, tmp_path_factory, metric_modules):
    """Several topics per row in one CSV cell, separated by '|' (an empty cell: no topic); a local extra metric."""
    def write(data):
        for split, count, seed in (("train", 150, 7), ("test", 40, 8)):
            frame = multi_label_rows(TOPICS, count, seed, column="topics")
            frame.assign(topics=frame["topics"].map("|".join)).to_csv(data / f"{split}.csv", index=False)

    return _trained(tmp_path_factory, "multi-csv", write, tiny_model, problem_type=MULTI, label_column_name="topics",
                    label_separator="|", num_train_epochs=4, validation_fraction=0.2,
                    extra_metrics=metric_modules["error_rate"]), TOPICS


@pytest.fixture(scope="session")
def multi_label_data(tmp_path_factory):
    def write(data):
        data.mkdir(parents=True)
        for split, count, seed in (("train", 300, 9), ("test", 60, 10)):
            multi_label_rows(TOPICS, count, seed, column="topics").to_json(data / f"{split}.jsonl",
                                                                           orient="records", lines=True)

    return shared_folder(tmp_path_factory, "own-data-multi-jsonl-data", write)


@pytest.fixture(scope="session")
def multi_label_jsonl(tiny_model, multi_label_data, tmp_path_factory, metric_modules):
    """Lists of topics in JSONL (rows with none too): a real 2-process run, where each rank loads an extra metric."""
    def train(folder):
        accelerate_launch(tiny_train_args(tiny_model, multi_label_data, folder / "run", per_device_train_batch_size=4,
                                          extra_metrics=metric_modules["error_rate"], **MULTI_LABEL_RUN))

    return shared_folder(tmp_path_factory, "own-data-multi-jsonl-2-processes", train) / "run", TOPICS


@pytest.fixture(scope="session")
def multi_label_one_process(tiny_model, multi_label_data, tmp_path_factory):
    """The same run on one process with the whole global batch each step."""
    def train(folder):
        _run_in_process(tiny_model, multi_label_data, folder / "run", per_device_train_batch_size=8,
                        **MULTI_LABEL_RUN)

    return shared_folder(tmp_path_factory, "own-data-multi-jsonl-1-process", train) / "run"


# The card of a Hub dataset whose files sit in a named configuration (as `datasets` reads its YAML header).
HUB_DATASET_CARD = """---
configs:
- config_name: topics
  data_files:
  - split: train
    path: topics/train-*.parquet
---
# News topics
"""


@pytest.fixture(scope="session")
def train_only_hub_dataset(tiny_model, tmp_path_factory):
    """A Hub dataset with only a train split and its own column names (title + content, category), in a named
    configuration, pinned to a commit, served by a local Hub mirror; trained in a fresh process (huggingface_hub
    reads HF_ENDPOINT once)."""
    from hub_mirror import HubMirror

    def train(root):
        repo = root / "repo"
        (repo / "topics").mkdir(parents=True)
        frame = single_label_rows(["sport", "business", "tech"], [40, 40, 40], seed=11)
        halves = frame["text"].str.split(" ", n=2)
        pd.DataFrame({"title": halves.str[:2].str.join(" "), "content": halves.str[2],
                      "category": frame["label"]}).to_parquet(repo / "topics" / "train-00000-of-00001.parquet")
        (repo / "README.md").write_text(HUB_DATASET_CARD)
        with HubMirror(root / "mirror") as mirror:
            sha = mirror.commit("someone/news-topics", repo, "Add the train split", repo_type="dataset")
            env = {**os.environ, **mirror.client_env(root / "hf-home"), "HF_DATASETS_OFFLINE": "0",
                   "PYTHONPATH": str(REPO_ROOT)}
            args = tiny_train_args(tiny_model, "someone/news-topics", root / "run", dataset_revision=sha,
                                   dataset_config_name="topics", text_column_names="title,content",
                                   label_column_name="category", num_train_epochs=1)
            result = subprocess.run([sys.executable, "-m", "distrinews.train", *args], cwd=REPO_ROOT, env=env,
                                    capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-4000:]

    return shared_folder(tmp_path_factory, "own-data-hub-dataset", train) / "run", ("business", "sport", "tech")


CASES = ["two_string_labels", "five_integer_labels", "thirty_labels_long_tail", "multi_label_csv",
         "multi_label_jsonl", "train_only_hub_dataset"]


@pytest.fixture(params=CASES)
def case(request):
    output_dir, labels = request.getfixturevalue(request.param)
    return request.param, output_dir, labels


def test_the_saved_model_metrics_and_card_carry_the_labels_of_the_data(case):
    name, output_dir, labels = case
    multi_label = name.startswith("multi_label")
    config = _json(output_dir / "model" / "config.json")
    assert config["id2label"] == {str(i): label for i, label in enumerate(labels)}
    assert config["label2id"] == {label: i for i, label in enumerate(labels)}
    assert config["problem_type"] == (MULTI if multi_label else "single_label_classification")
    metrics = _json(output_dir / "metrics.json")
    assert metrics["data"]["labels"] == list(labels)
    assert set(metrics["test"]["per_class"]) == set(labels)
    supports = [metrics["test"]["per_class"][label]["support"] for label in labels]
    card = ModelCard.load(output_dir / "model" / "README.md")
    assert all(f"| {i} | {label} |" in card.text for i, label in enumerate(labels))
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    if multi_label:
        threshold = config["decision_threshold"]
        assert 0 < threshold < 1 and metrics["decision_threshold"]["value"] == threshold
        assert metrics["test"]["threshold"] == threshold and f"Decision threshold: {threshold:g}" in card.text
        assert results == {"Micro F1": round(metrics["test"]["micro_f1"], 4),
                           "Macro F1": round(metrics["test"]["macro_f1"], 4),
                           "Subset accuracy": round(metrics["test"]["subset_accuracy"], 4)}
        for label, counts in metrics["test"]["label_confusion"].items():  # each label decided on its own
            assert counts["true_positive"] + counts["false_negative"] == metrics["test"]["per_class"][label]["support"]
            assert sum(counts.values()) == metrics["test"]["num_examples"]
        assert "![Test confusion per label](confusion_matrix.png)" in card.text
    else:
        assert "decision_threshold" not in config and metrics["decision_threshold"] is None
        assert results == {"Accuracy": round(metrics["test"]["accuracy"], 4),
                           "Macro F1": round(metrics["test"]["macro_f1"], 4)}
        assert sum(supports) == metrics["test"]["num_examples"]
    assert (output_dir / "plots" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert "Character-level Convolutional Networks" not in card.text  # AG News' citation is AG News' only


def test_pipeline_on_the_saved_folder_answers_with_those_names(case):
    from transformers import pipeline

    name, output_dir, labels = case
    classifier = pipeline("text-classification", model=str(output_dir / "model"))
    scores = classifier(f"{words_of(0, len(labels))} {words_of(1, len(labels))}", top_k=None)
    assert sorted(score["label"] for score in scores) == sorted(labels)
    total = sum(score["score"] for score in scores)
    if name.startswith("multi_label"):
        assert abs(total - 1) > 0.05  # one sigmoid per label: they need not sum to 1
    else:
        assert total == pytest.approx(1, abs=1e-5)


def _errors(output_dir):
    return [json.loads(line) for line in (output_dir / "errors.jsonl").read_text(encoding="utf-8").splitlines()]


def _test_split(output_dir):
    """The run's test split, read again from its data with its saved settings."""
    from distrinews.training.config import TrainConfig
    from distrinews.training.data import DataOptions, load_labelled_data

    config = TrainConfig(**_json(output_dir / "train_config.json"))
    return load_labelled_data(DataOptions.from_config(config)).splits["test"]


def test_errors_file_holds_the_most_confident_mistakes(case):
    name, output_dir, labels = case
    test, mistakes = _json(output_dir / "metrics.json")["test"], _errors(output_dir)
    multi_label = name.startswith("multi_label")
    right = test["subset_accuracy"] if multi_label else test["accuracy"]
    assert len(mistakes) == min(50, round((1 - right) * test["num_examples"]))
    assert [m["confidence"] for m in mistakes] == sorted((m["confidence"] for m in mistakes), reverse=True)
    split = None if name == "train_only_hub_dataset" else _test_split(output_dir)  # that one's Hub is gone
    for mistake in mistakes:
        p = mistake["probabilities"]
        assert list(p) == list(labels) and mistake["true"] != mistake["predicted"]
        if multi_label:
            thresholds = dict(zip(labels, test["thresholds"]))  # each label's own (training/decisions.py)
            assert mistake["predicted"] == [label for label in labels if p[label] >= thresholds[label]]
            wrong = [p[label] for label in mistake["predicted"] if label not in mistake["true"]] + \
                [1 - p[label] for label in mistake["true"] if label not in mistake["predicted"]]
            assert mistake["confidence"] == max(wrong)
        else:
            assert mistake["predicted"] == max(p, key=p.get) and mistake["confidence"] == max(p.values())
        if split is not None:  # the text of that row of the test split, with that label
            row = split[mistake["row"]]
            true = [labels[i] for i, on in enumerate(row["label"]) if on] if multi_label else labels[row["label"]]
            assert (row["text"], true) == (mistake["text"], mistake["true"])


def test_the_most_confused_pairs_are_in_metrics_and_the_card(case):
    name, output_dir, labels = case
    test = _json(output_dir / "metrics.json")["test"]
    pairs, card = test["most_confused"], (output_dir / "model" / "README.md").read_text(encoding="utf-8")
    assert [pair["count"] for pair in pairs] == sorted((pair["count"] for pair in pairs), reverse=True)
    if name.startswith("multi_label"):  # a missed label and a wrongly given one, in the same texts
        counts = test["label_confusion"]
        for pair in pairs:
            missed, given = counts[pair["true"]]["false_negative"], counts[pair["predicted"]]["false_positive"]
            assert pair["count"] <= min(missed, given)
    else:  # the largest cells of the confusion matrix off its diagonal
        confusion = test["confusion_matrix"]
        cells = sorted((confusion[i][j] for i in range(len(labels)) for j in range(len(labels)) if i != j and
                        confusion[i][j]), reverse=True)
        assert [pair["count"] for pair in pairs] == cells[:10]
        assert all(confusion[labels.index(pair["true"])][labels.index(pair["predicted"])] == pair["count"]
                   for pair in pairs)
    for pair in pairs:
        assert f"| {pair['true']} | {pair['predicted']} | {pair['count']} | {pair['share_of_true']:.1%} |" in card
    assert "test texts it got wrong most confidently (up to 50), with every probability, are in `errors.jsonl`" in card


def _tensorboard_scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [event.value for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_extra_metrics_are_in_metrics_the_tracker_and_the_card(two_string_labels, multi_label_csv,
                                                                multi_label_jsonl):
    output_dir, _ = two_string_labels
    metrics = _json(output_dir / "metrics.json")
    for split in ("validation", "test"):  # given the labels, and the positive label's probability
        scores, extra = metrics[split], metrics[split]["extra_metrics"]
        assert extra["error_rate"] == {"error_rate": pytest.approx(1 - scores["accuracy"]),
                                       "texts": scores["num_examples"]}
        assert extra["score_accuracy"] == {"score_accuracy": pytest.approx(scores["accuracy"]),
                                           "options": ["binary", "raise"]}
    test = metrics["test"]["extra_metrics"]
    logged = _tensorboard_scalars(output_dir / "runs" / "run")
    assert logged["test/extra/error_rate"] == [pytest.approx(test["error_rate"]["error_rate"])]
    assert logged["test/extra/error_rate/texts"] == [metrics["test"]["num_examples"]]
    assert logged["test/extra/score_accuracy"] == [pytest.approx(test["score_accuracy"]["score_accuracy"])]
    card = (output_dir / "model" / "README.md").read_text(encoding="utf-8")
    validation = metrics["validation"]["extra_metrics"]
    assert "Further metrics, computed with the 🤗 evaluate library (`error_rate`, `score_accuracy`):" in card
    assert (f"| error_rate | {validation['error_rate']['error_rate']:.4f} | {test['error_rate']['error_rate']:.4f} |"
            in card)
    assert f"| error_rate/texts | {metrics['validation']['num_examples']} | {metrics['test']['num_examples']} |" in card
    for run_dir in (multi_label_csv[0], multi_label_jsonl[0]):  # the labels given, as rows; on 2 processes too
        for split in ("validation", "test"):
            scores = _json(run_dir / "metrics.json")[split]
            assert scores["extra_metrics"]["error_rate"]["error_rate"] == pytest.approx(1 - scores["subset_accuracy"])


def test_a_carved_test_split_is_reported_as_such(train_only_hub_dataset):
    output_dir, _ = train_only_hub_dataset
    metrics = _json(output_dir / "metrics.json")
    assert metrics["data"]["carved_splits"] == {"test": "10% of train, stratified, seed 7",
                                                "validation": "10% of what train kept, stratified, seed 7"}
    assert metrics["test"]["num_examples"] == 12 and metrics["train"]["train_examples"] == 97
    assert [metrics["test"]["per_class"][label]["support"] for label in ("business", "sport", "tech")] == [4, 4, 4]
    card = (output_dir / "model" / "README.md").read_text()
    assert "Test: carved from the training data (10% of train, stratified, seed 7), not an official test set" in card
    assert ModelCard.load(output_dir / "model" / "README.md").data.datasets == ["someone/news-topics"]


def test_balanced_class_weights_follow_the_long_tail(thirty_labels_long_tail):
    output_dir, labels = thirty_labels_long_tail
    metrics = _json(output_dir / "metrics.json")
    weights = metrics["class_weights"]
    assert list(weights) == list(labels)
    counts = dict(zip(labels, TAIL_COUNTS))
    total = sum(counts.values())
    for label, count in counts.items():  # rows / (labels x rows of the label)
        assert weights[label] == pytest.approx(total / (30 * count), rel=1e-5)
    card = (output_dir / "model" / "README.md").read_text()
    assert f"| class weights | balanced: topic-00 {weights['topic-00']:.4g}, topic-01" in card


def test_evaluate_and_predict_use_the_models_labels_and_threshold(multi_label_csv, tmp_path, capsys):
    from distrinews.cli import main as cli_main

    output_dir, labels = multi_label_csv
    scores = tmp_path / "test.json"
    extra_metrics = _json(output_dir / "train_config.json")["extra_metrics"]
    assert cli_main(["evaluate", "--model", str(output_dir / "model"), "--dataset", str(output_dir.parent / "data"),
                     "--label_column_name", "topics", "--label_separator", "|", "--max_length", "64",
                     "--extra_metrics", extra_metrics, "--output", str(scores)]) == 0
    trained = _json(output_dir / "metrics.json")["test"]
    evaluated = _json(scores)
    assert (evaluated["micro_f1"], evaluated["threshold"], evaluated["label_confusion"]) == \
        (trained["micro_f1"], trained["threshold"], trained["label_confusion"])
    assert evaluated["extra_metrics"] == trained["extra_metrics"] and "error_rate" in trained["extra_metrics"]
    assert evaluated["most_confused"] == trained["most_confused"]
    assert f"test: micro_f1 {trained['micro_f1']:.4f}" in capsys.readouterr().out
    assert cli_main(["predict", "--model", str(output_dir / "model"), "--json", words_of(1, 4, 6)]) == 0
    answer = json.loads(capsys.readouterr().out)
    thresholds = dict(zip(labels, trained["thresholds"]))  # one per label (distrinews/training/decisions.py)
    assert answer["labels"] == [name for name in sorted(labels, key=lambda name: -answer["probabilities"][name])
                                if answer["probabilities"][name] >= thresholds[name]]


def _losses(output_dir):
    records = map(json.loads, (output_dir / "log.jsonl").read_text().splitlines())
    return [(r["step"], r["loss"]) for r in records if r["type"] == "train"]


def test_multi_label_two_processes_match_one_and_stop_at_the_same_step(multi_label_jsonl, multi_label_one_process):
    two, _ = multi_label_jsonl
    two_losses, one_losses = _losses(two), _losses(multi_label_one_process)
    assert [s for s, _ in two_losses] == [s for s, _ in one_losses] == list(range(1, MULTI_LABEL_STOP + 1))
    for (step, a), (_, b) in zip(two_losses, one_losses):  # the same sums in another order
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), f"step {step}: 2x4 loss {a} != 1x8 loss {b}"
    assert abs(two_losses[0][1] - two_losses[-1][1]) > 0.05  # it learned: the agreement is not trivial
    for output_dir in (two, multi_label_one_process):
        metrics = _json(output_dir / "metrics.json")
        assert metrics["global_step"] == MULTI_LABEL_STOP and metrics["training_ended"].startswith("early stopping")
    assert _json(two / "metrics.json")["train"]["num_processes"] == 2


def test_multi_label_resumes_exactly(multi_label_one_process, tiny_model, multi_label_data, tmp_path):
    output_dir = tmp_path / "out"
    name = "step-00000020"
    shutil.copytree(multi_label_one_process / "checkpoints" / name, output_dir / "checkpoints" / name)
    shutil.copy(multi_label_one_process / "log.jsonl", output_dir / "log.jsonl")
    _run_in_process(tiny_model, multi_label_data, output_dir, per_device_train_batch_size=8, **MULTI_LABEL_RUN)
    assert _losses(output_dir) == _losses(multi_label_one_process)
    assert_same_weights(multi_label_one_process / "model" / "model.safetensors",
                        output_dir / "model" / "model.safetensors")
    assert _json(output_dir / "metrics.json")["test"] == _json(multi_label_one_process / "metrics.json")["test"]


@pytest.fixture(scope="session")
def two_topics_model(multi_label_csv, tmp_path_factory):
    """A copy of the multi-label model whose decision threshold lies between its second and third score for a text
    of two topics, so exactly two labels are given (whatever a tiny model learned); that text, its scores and those
    two labels. The gap is wide enough for int8 rounding not to cross it."""
    from distrinews.core.modeling import load_classifier
    from distrinews.core.predict import predict_texts

    run_dir, folder = multi_label_csv[0], tmp_path_factory.mktemp("two-topics") / "model"
    model, tokenizer = load_classifier(str(run_dir / "model"))
    texts = [f"{words_of(a, 4, 6)} {words_of(b, 4, 6)}" for a in range(4) for b in range(a + 1, 4)]

    def gap(scores):
        ranked = sorted(scores.values(), reverse=True)
        return ranked[1] - ranked[2], (ranked[1] + ranked[2]) / 2

    probabilities = {text: p.probabilities for text, p in zip(texts, predict_texts(model, tokenizer, texts))}
    text = max(texts, key=lambda t: gap(probabilities[t])[0])
    width, threshold = gap(probabilities[text])
    assert width > 0.04, f"no text of two topics separates two labels from the rest: {probabilities}"
    shutil.copytree(run_dir / "model", folder)
    config = _json(folder / "config.json")
    (folder / "config.json").write_text(json.dumps({**config, "decision_threshold": round(threshold, 4)}))
    top_two = sorted(probabilities[text], key=lambda name: -probabilities[text][name])[:2]
    return folder, text, probabilities[text], top_two


def test_the_space_serves_several_labels_over_http(multi_label_csv, two_topics_model, tmp_path):
    """The pushed graph (int8, sigmoid scores) under a real uvicorn: every label at or above the model's threshold."""
    import httpx
    from space_support import uvicorn_server

    from distrinews.cli import main as cli_main

    output_dir, labels = multi_label_csv
    model, text, reference, top_two = two_topics_model
    model = shutil.copytree(model, tmp_path / "model")  # the graph goes into the copy
    assert cli_main(["export-onnx", str(model)]) == 0
    threshold = _json(model / "config.json")["decision_threshold"]
    with uvicorn_server(str(model), tmp_path / "onnx", tmp_path / "uvicorn.log", QUANTIZE="int8") as url:
        info = httpx.get(f"{url}/api/info", timeout=30).json()
        answer = httpx.post(f"{url}/api/predict", json={"texts": [text, "the a of to in"]}, timeout=30).json()
    assert (info["labels"], info["problem_type"], info["threshold"]) == (list(labels), MULTI, threshold)
    assert info["quantization"] == "int8"
    for prediction in answer["predictions"]:  # given: exactly the labels at or above the threshold, best first
        probabilities = prediction["probabilities"]
        assert prediction["labels"] == sorted((name for name, p in probabilities.items() if p >= threshold),
                                              key=lambda name: -probabilities[name])
    both = answer["predictions"][0]
    assert both["labels"] == top_two and abs(sum(both["probabilities"].values()) - 1) > 0.05
    # The int8 graph's sigmoid scores are the trained model's, within int8 rounding.
    assert all(abs(both["probabilities"][name] - reference[name]) < 0.02 for name in labels)


def test_the_space_serves_named_labels_and_the_ui_says_which_it_gives(two_string_labels, multi_label_csv,
                                                                      two_topics_model, tmp_path):
    """The app in-process (its lifespan loads the model): the API and the Classify tab's given labels."""
    from fastapi.testclient import TestClient
    from space_support import space_env

    from distrinews.serving.service import ServingConfig
    from distrinews.serving.web import create_app
    from distrinews.serving.web.demo import Demo

    multi_label_model, text, _, top_two = two_topics_model
    for model, labels, text, expected in ((two_string_labels[0] / "model", two_string_labels[1],
                                           words_of(0, 2, 6), ["spam"]),
                                          (multi_label_model, multi_label_csv[1], text, top_two)):
        app = create_app(ServingConfig.from_env(space_env(str(model), tmp_path / "onnx", QUANTIZE="none")))
        with TestClient(app) as client:
            _ready(client)
            info = client.get("/api/info").json()
            (prediction,) = client.post("/api/predict", json={"text": text}).json()["predictions"]
            _, shown = client.portal.call(Demo(app.state.serving).classify, text)  # the Classify tab's two outputs
        assert info["labels"] == list(labels) and prediction["labels"] == expected
        assert shown == f"**Given:** {', '.join(expected)}"
        if info["problem_type"] != MULTI:
            assert math.isclose(sum(prediction["probabilities"].values()), 1, abs_tol=1e-5)


def _ready(client, timeout=120):
    import time

    deadline = time.monotonic() + timeout
    while client.get("/api/ready").status_code != 200:
        assert time.monotonic() < deadline, "the model did not load"
        time.sleep(0.05)
