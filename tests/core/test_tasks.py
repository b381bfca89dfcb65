"""The task objects against hand-computed values: probabilities, decisions, losses, metrics, the threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distrinews.core.tasks import MultiLabelTask, SingleLabelTask, make_task, task_from_config

NAMES = ("World", "Sports", "Business", "Sci/Tech")


def _one_hot_probabilities(predictions, n=4):
    return np.eye(n)[predictions]


def test_single_label_report_matches_hand_computation():
    references = [0, 0, 1, 1, 2, 2, 3, 3]
    predictions = [0, 1, 1, 1, 2, 3, 3, 3]
    report = SingleLabelTask(NAMES).metrics(_one_hot_probabilities(predictions), np.array(references))
    assert report["accuracy"] == pytest.approx(6 / 8)
    assert report["num_examples"] == 8
    assert report["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1], [0, 0, 0, 2]]
    world, sports = report["per_class"]["World"], report["per_class"]["Sports"]
    assert (world["precision"], world["recall"], world["support"]) == (1.0, 0.5, 2)
    assert sports["precision"] == pytest.approx(2 / 3) and sports["recall"] == 1.0
    f1s = [report["per_class"][n]["f1"] for n in NAMES]
    assert report["macro_f1"] == pytest.approx(sum(f1s) / 4)


def test_a_class_never_predicted_scores_zero_not_nan():
    report = SingleLabelTask(NAMES).metrics(_one_hot_probabilities([0, 0]), np.array([0, 1]))
    assert report["per_class"]["Sports"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["per_class"]["Business"]["support"] == 0


def test_multi_label_report_matches_hand_computation():
    task = MultiLabelTask(("a", "b", "c"), threshold=0.5)
    probabilities = np.array([[0.9, 0.6, 0.1],   # gives a, b; true a, b: exact
                              [0.2, 0.7, 0.5],   # gives b, c (0.5 reaches the threshold); true b
                              [0.1, 0.2, 0.3],   # gives nothing; true c
                              [0.4, 0.1, 0.2]])  # gives nothing; true nothing: exact
    references = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]])
    report = task.metrics(probabilities, references)
    # 3 true positives, 1 false positive (c in row 2), 1 false negative (c in row 3)
    assert report["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert report["subset_accuracy"] == pytest.approx(2 / 4)
    assert report["per_class"]["a"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert report["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["macro_f1"] == pytest.approx((1 + 1 + 0) / 3)
    assert report["label_confusion"]["c"] == {"true_positive": 0, "false_positive": 1, "false_negative": 1,
                                              "true_negative": 2}
    assert task.chosen([0.2, 0.7, 0.5]) == [1, 2] and task.chosen([0.1, 0.2, 0.3]) == []


def test_the_best_threshold_is_the_one_with_the_highest_micro_f1():
    task = MultiLabelTask(("a", "b"))
    probabilities = np.array([[0.35, 0.1], [0.3, 0.8], [0.2, 0.25], [0.05, 0.9]])
    references = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
    # Everything true scores >= 0.3 and everything false <= 0.25: any threshold in (0.25, 0.3] is perfect;
    # the grid's candidates there are 0.26..0.30, and the one nearest 0.5 is kept.
    assert task.best_threshold(probabilities, references) == pytest.approx(0.30)
    assert task.with_threshold(0.3).metrics(probabilities, references)["micro_f1"] == 1.0


def test_losses_are_torchs_own_with_class_weights():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, -0.3]])
    weights = torch.tensor([1.0, 3.0, 0.5])
    single = make_task("single_label_classification", "abc")
    labels = torch.tensor([1, 2])
    assert torch.allclose(single.loss(logits, labels, weights),
                          torch.nn.CrossEntropyLoss(weight=weights)(logits, labels))
    multi = make_task("multi_label_classification", "abc")
    targets = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert torch.allclose(multi.loss(logits, targets, weights),
                          torch.nn.BCEWithLogitsLoss(pos_weight=weights)(logits, targets))


def test_balanced_weights_give_every_label_the_same_total_weight():
    references = np.array([0] * 6 + [1] * 3 + [2])
    weights = SingleLabelTask(("a", "b", "c")).balanced_weights(references)
    assert np.allclose(weights * np.bincount(references), len(references) / 3)
    rows = np.array([[1, 0], [1, 0], [1, 1], [0, 0]])
    assert np.allclose(MultiLabelTask(("a", "b")).balanced_weights(rows), [1 / 3, 3 / 1])


def test_multi_label_divergence_is_zero_for_equal_predictions_and_symmetric():
    task = MultiLabelTask(("a", "b"))
    first, second = torch.tensor([[1.0, -2.0]]), torch.tensor([[-0.5, 0.3]])
    assert float(task.divergence(first, first)) == pytest.approx(0.0, abs=1e-7)
    assert float(task.divergence(first, second)) == pytest.approx(float(task.divergence(second, first)))
    p, q = torch.sigmoid(first), torch.sigmoid(second)
    kl = lambda x, y: (x * (x / y).log() + (1 - x) * ((1 - x) / (1 - y)).log()).sum()  # noqa: E731
    assert float(task.divergence(first, second)) == pytest.approx(float(0.5 * (kl(p, q) + kl(q, p))), rel=1e-5)


def test_the_task_of_a_saved_config():
    assert task_from_config({"id2label": {"0": "spam", "1": "ham"}, "num_labels": 2}) == \
        SingleLabelTask(("spam", "ham"))
    multi = task_from_config({"id2label": {"0": "a", "1": "b"}, "problem_type": "multi_label_classification",
                              "decision_threshold": 0.35})
    assert multi == MultiLabelTask(("a", "b"), 0.35)
    assert multi.model_config()["decision_threshold"] == 0.35
