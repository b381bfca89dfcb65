"""extra_metrics and where the model goes wrong, on outputs made here: what each kind of task gives a metric of
the evaluate library (local modules, no network), the one-line refusals of a metric that cannot load or does not
fit, and the most-confused pairs and most confident mistakes of single- and multi-label outputs."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from distrinews.core.errors import ConfigError
from distrinews.core.tasks import make_task
from distrinews.training.extra_metrics import compute_extra_metrics, load_extra_metrics
from distrinews.training.mistakes import most_confident_mistakes, most_confused_pairs, write_mistakes

SINGLE, MULTI = "single_label_classification", "multi_label_classification"


def _softmax(logits):
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def modules(metric_modules):
    return metric_modules["error_rate"], metric_modules["score_accuracy"]


@pytest.mark.parametrize("labels", [("ham", "spam"), ("a", "b", "c", "d")])
def test_one_label_per_text_gives_the_label_and_the_scores(modules, labels):
    task = make_task(SINGLE, labels)
    rng = np.random.default_rng(3)
    probabilities, references = _softmax(rng.normal(size=(40, len(labels)))), rng.integers(0, len(labels), 40)
    accuracy = task.metrics(probabilities, references)["accuracy"]
    results = compute_extra_metrics(load_extra_metrics(modules, task), task, probabilities, references)
    assert results["error_rate"] == {"error_rate": pytest.approx(1 - accuracy), "texts": 40}
    # The scores: the positive (second) label's probability, or every probability; averaged as macro-F1 is.
    assert results["score_accuracy"]["score_accuracy"] == pytest.approx(accuracy)
    assert results["score_accuracy"]["options"] == (["binary", "raise"] if len(labels) == 2 else ["macro", "ovr"])


def test_multi_label_gives_the_rows_of_labels_the_task_gives(modules):
    task = make_task(MULTI, ("sport", "tech", "world"), threshold=0.3)
    rng = np.random.default_rng(4)
    probabilities, references = rng.uniform(size=(30, 3)), (rng.uniform(size=(30, 3)) > 0.6).astype(np.float32)
    subset_accuracy = task.metrics(probabilities, references)["subset_accuracy"]
    results = compute_extra_metrics(load_extra_metrics(modules[:1], task), task, probabilities, references)
    assert results["error_rate"]["error_rate"] == pytest.approx(1 - subset_accuracy)


def test_a_metric_that_cannot_load_or_does_not_fit_is_refused_in_one_line(modules, tmp_path):
    multi = make_task(MULTI, ("sport", "tech"))
    refusals = {
        "no_such_metric": (make_task(SINGLE, ("a", "b")), "extra_metrics: no_such_metric cannot be loaded "
                           "(HF_HUB_OFFLINE is set: a Hub metric must already be cached): FileNotFoundError: "),
        "someone/their_metric": (multi, "extra_metrics: someone/their_metric cannot be loaded (HF_HUB_OFFLINE is set"),
        str(tmp_path / "missing.py"): (multi, f"extra_metrics: {tmp_path / 'missing.py'} does not exist"),
        modules[1]: (multi, f"extra_metrics: {modules[1]} does not fit this task (multi-label, 2 labels): "
                            "ValueError: Module inputs don't match the expected format."),
    }
    for name, (task, message) in refusals.items():
        with pytest.raises(ConfigError) as raised:
            load_extra_metrics([name], task)
        assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


NEEDS_EVERY_LABEL = '''import datasets
import evaluate


class NeedsEveryLabel(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description="", citation="", inputs_description="", features=datasets.Features(
            {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}))

    def _compute(self, predictions, references):
        if len(set(references)) < 3:
            raise ValueError("only some labels are present")
        return {"needs_every_label": 1.0}
'''


def test_a_metric_that_fails_on_a_split_records_its_error(tmp_path):
    (tmp_path / "needs_every_label.py").write_text(NEEDS_EVERY_LABEL)
    task = make_task(SINGLE, ("a", "b", "c"))
    metrics = load_extra_metrics([str(tmp_path / "needs_every_label.py")], task)  # the made-up batch has them all
    results = compute_extra_metrics(metrics, task, np.eye(3)[[0, 1, 1]], np.array([0, 1, 1]))
    assert results == {"needs_every_label": {"error": "ValueError: only some labels are present"}}


def test_most_confused_pairs_of_one_label_per_text_are_the_confusion_matrix():
    task = make_task(SINGLE, ("a", "b", "c"))
    references = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    given = np.array([1, 1, 0, 0, 1, 0, 1, 2, 1])
    pairs = most_confused_pairs(task, np.eye(3)[given] * 0.8 + 0.05, references)
    assert pairs == [{"true": "a", "predicted": "b", "count": 2, "share_of_true": round(2 / 3, 4)},
                     {"true": "c", "predicted": "b", "count": 2, "share_of_true": 0.5},
                     {"true": "b", "predicted": "a", "count": 1, "share_of_true": 0.5},
                     {"true": "c", "predicted": "a", "count": 1, "share_of_true": 0.25}]
    confusion = np.array(task.metrics(np.eye(3)[given], references)["confusion_matrix"])
    assert sum(pair["count"] for pair in pairs) == confusion.sum() - np.trace(confusion)


def test_most_confused_pairs_of_multi_label_pair_a_missed_label_with_a_wrong_one():
    task = make_task(MULTI, ("sport", "tech", "world"), threshold=0.5)
    references = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 1], [1, 0, 0]])
    probabilities = np.array([[0.2, 0.9, 0.1],  # sport missed, tech given instead
                              [0.3, 0.8, 0.7],  # sport missed, tech and world given instead
                              [0.1, 0.2, 0.9],  # tech missed, nothing wrong given: no pair
                              [0.9, 0.1, 0.1]])
    assert most_confused_pairs(task, probabilities, references) == [
        {"true": "sport", "predicted": "tech", "count": 2, "share_of_true": round(2 / 3, 4)},
        {"true": "sport", "predicted": "world", "count": 1, "share_of_true": round(1 / 3, 4)}]


def test_the_most_confident_mistakes_come_first():
    task = make_task(SINGLE, ("a", "b"))
    probabilities = np.array([[0.4, 0.6], [0.9, 0.1], [0.05, 0.95], [0.2, 0.8], [0.45, 0.55]])
    references = np.array([0, 0, 0, 1, 0])
    mistakes = most_confident_mistakes(task, probabilities, references, ["t0", "t1", "t2", "t3", "t4"],
                                       rows=[10, 11, 12, 13, 14], kept=2)
    assert [(m["row"], m["text"], m["true"], m["predicted"]) for m in mistakes] == [(12, "t2", "a", "b"),
                                                                                  (10, "t0", "a", "b")]
    assert mistakes[0]["confidence"] == 0.95 and mistakes[0]["probabilities"] == {"a": 0.05, "b": 0.95}


def test_a_multi_label_mistake_is_as_confident_as_its_surest_wrong_decision(tmp_path):
    task = make_task(MULTI, ("sport", "tech"), threshold=0.5)
    probabilities = np.array([[0.02, 0.6],  # sport missed at 0.02 (confidence 0.98), tech wrongly given at 0.6
                              [0.7, 0.9],  # right
                              [0.4, 0.3]])  # sport missed at 0.4 (confidence 0.6)
    references = np.array([[1, 0], [1, 1], [1, 0]], dtype=np.float32)
    split = {"text": ["right", "unsure", "sure and wrong"], "label": [[1, 1], [1, 0], [1, 0]]}
    # The outputs come in the evaluation's order: the split's rows 2, 0, 1.
    write_mistakes(tmp_path / "errors.jsonl", task, probabilities, references, split, rows=[2, 0, 1])
    lines = [json.loads(line) for line in (tmp_path / "errors.jsonl").read_text().splitlines()]
    assert [(m["row"], m["text"], m["true"], m["predicted"]) for m in lines] == [
        (2, "sure and wrong", ["sport"], ["tech"]), (1, "unsure", ["sport"], [])]
    assert [m["confidence"] for m in lines] == pytest.approx([0.98, 0.6])


def test_outputs_out_of_step_with_the_split_are_a_bug_not_a_wrong_file(tmp_path):
    from distrinews.core.errors import EvaluationCountError

    task = make_task(SINGLE, ("a", "b"))
    split = {"text": ["x", "y"], "label": [0, 1]}
    with pytest.raises(EvaluationCountError):
        write_mistakes(tmp_path / "errors.jsonl", task, np.eye(2), np.array([0, 1]), split, rows=[1, 0])
    assert not (tmp_path / "errors.jsonl").exists()


@pytest.mark.parametrize("given", ["no_such_metric", "positive_share"])
def test_training_refuses_the_metric_on_every_rank_before_anything_is_written(given, tiny_model, ag_news_dir,
                                                                              metric_modules, tmp_path, capsys):
    from conftest import tiny_train_args
    from distrinews.cli import main as cli_main

    name = metric_modules.get(given, given)
    started = time.monotonic()
    code = cli_main(["train", *tiny_train_args(tiny_model, ag_news_dir, tmp_path / "out", extra_metrics=name)])
    stderr = capsys.readouterr().err  # the data's progress bars, then the one line
    lines = [line for line in stderr.splitlines() if line.startswith("error")]
    assert code == 2 and len(lines) == 1 and stderr.rstrip().endswith(lines[0]) and "Traceback" not in stderr
    assert lines[0].startswith(f"error: extra_metrics: {name} " + ("cannot be loaded" if given == "no_such_metric"
                                                                   else "does not fit this task"))
    assert not (tmp_path / "out").exists() and time.monotonic() - started < 30


def test_a_run_without_extra_metrics_never_imports_evaluate():
    """evaluate takes seconds to import: the loop, launch's preflight and the card import it only when asked."""
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    code = ("import sys\n"
            "from distrinews.training import loop, model_card\n"
            "from distrinews.launch import preflight\n"
            "from distrinews.core.tasks import make_task\n"
            "assert loop.load_extra_metrics((), make_task('single_label_classification', ('a', 'b'))) == ()\n"
            "assert 'evaluate' not in sys.modules, 'evaluate was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
