"""The in-package evaluate metric against hand-computed values."""

from __future__ import annotations

import pytest

from distrinews.training.metrics import compute_classification_metrics

NAMES = ["World", "Sports", "Business", "Sci/Tech"]


def test_report_matches_hand_computation():
    references = [0, 0, 1, 1, 2, 2, 3, 3]
    predictions = [0, 1, 1, 1, 2, 3, 3, 3]
    report = compute_classification_metrics(predictions, references, NAMES)
    assert report["accuracy"] == pytest.approx(6 / 8)
    assert report["num_examples"] == 8
    assert report["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1], [0, 0, 0, 2]]
    world, sports = report["per_class"]["World"], report["per_class"]["Sports"]
    assert (world["precision"], world["recall"], world["support"]) == (1.0, 0.5, 2)
    assert sports["precision"] == pytest.approx(2 / 3) and sports["recall"] == 1.0
    f1s = [report["per_class"][n]["f1"] for n in NAMES]
    assert report["macro_f1"] == pytest.approx(sum(f1s) / 4)


def test_a_class_never_predicted_scores_zero_not_nan():
    report = compute_classification_metrics([0, 0], [0, 1], NAMES)
    assert report["per_class"]["Sports"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["per_class"]["Business"]["support"] == 0
