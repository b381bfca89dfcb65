"""core/calibration.py and the decisions a Task carries: temperature, per-label thresholds, confidence floor."""

from __future__ import annotations

import numpy as np
import pytest

from distrinews.core import calibration
from distrinews.core.tasks import MULTI_LABEL, SINGLE_LABEL, make_task, task_from_config

LABELS = ("World", "Sports", "Business", "Sci/Tech")


def _softmax_rows(logits):
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def calibrated_sample():
    """Labels drawn from the model's own probabilities: a perfectly calibrated model by construction."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 4)) * 2
    probabilities = _softmax_rows(logits)
    references = np.array([rng.choice(4, p=row) for row in probabilities])
    return logits, references


def test_temperature_scaling_recovers_the_overconfidence_factor(calibrated_sample):
    logits, references = calibrated_sample
    task = make_task(SINGLE_LABEL, LABELS)
    overconfident = logits * 2.5

    def nll_at(temperatures):
        tempered = task.with_temperature(temperatures)
        return calibration.label_nll(tempered, tempered.probabilities(overconfident), references)

    (temperature,) = calibration.fit_temperature(nll_at, 1)
    assert temperature == pytest.approx(2.5, rel=0.05)
    before = calibration.calibration_scores(task, task.probabilities(overconfident), references)
    after = calibration.calibration_scores(task.with_temperature(temperature),
                                           task.with_temperature(temperature).probabilities(overconfident), references)
    assert after["nll"] < before["nll"] and after["brier"] < before["brier"]
    assert after["ece"] < 0.03 < 0.1 < before["ece"]
    # Dividing every logit by the same positive number never changes the top label.
    assert (task.with_temperature(temperature).probabilities(overconfident).argmax(1) == overconfident.argmax(1)).all()


def test_ece_is_the_weighted_gap_of_the_bins():
    task = make_task(SINGLE_LABEL, ("a", "b"))
    # Four forecasts at 0.9 of which two are right, four at 0.6 of which all are right.
    probabilities = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 4)
    references = np.array([0, 0, 1, 1, 0, 0, 0, 0])
    assert calibration.expected_calibration_error(task, probabilities, references) == pytest.approx(
        0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6))
    bins = [b for b in calibration.reliability(task, probabilities, references) if b.count]
    assert [(b.count, b.accuracy) for b in bins] == [(4, 1.0), (4, 0.5)]


def test_the_floor_is_the_lowest_confidence_whose_kept_rows_reach_the_target():
    task = make_task(SINGLE_LABEL, ("a", "b"))
    confidence = np.array([0.99, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.55])
    right = np.array([1, 1, 1, 0, 1, 1, 0, 0])
    probabilities = np.stack([confidence, 1 - confidence], axis=1)
    references = np.where(right == 1, 0, 1)
    # Kept precision by floor: 0.99 1/1, 0.95 2/2, 0.9 3/3, 0.85 3/4, 0.8 4/5, 0.7 5/6, 0.6 5/7, 0.55 5/8.
    assert calibration.floor_for_precision(task, probabilities, references, 0.8) == 0.7
    assert calibration.floor_for_precision(task, probabilities, references, 0.9) == 0.9
    assert calibration.floor_for_precision(task, probabilities, references, 0.5) == 0.55
    kept = calibration.at_floor(task, probabilities, references, 0.7)
    assert (kept["kept"], kept["coverage"], kept["accuracy"]) == (6, 0.75, 5 / 6)
    assert [p["accuracy"] for p in calibration.risk_coverage(task, probabilities, references, (1.0, 0.5))] == \
        [5 / 8, 3 / 4]


def test_a_floor_keeps_every_row_of_its_confidence():
    task = make_task(SINGLE_LABEL, ("a", "b"))
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.8, 0.2], [0.7, 0.3]])
    references = np.array([0, 0, 1, 0])
    # Keeping one of the two rows at 0.8 would reach 100%, but a floor of 0.8 keeps both (2 of 3).
    assert calibration.floor_for_precision(task, probabilities, references, 0.9) == 0.9
    assert calibration.floor_for_precision(task, probabilities, references, 0.6) == 0.7


def test_no_floor_when_the_target_cannot_be_reached():
    task = make_task(SINGLE_LABEL, ("a", "b"))
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2]])
    assert calibration.floor_for_precision(task, probabilities, np.array([1, 1]), 0.5) is None


def test_per_label_thresholds_fit_each_label_and_fall_back_for_rare_ones():
    rng = np.random.default_rng(1)
    task = make_task(MULTI_LABEL, ("common", "shy", "rare"))
    rows = 400
    actual = np.stack([rng.random(rows) < 0.5, rng.random(rows) < 0.5, np.arange(rows) < 3], axis=1)
    # "shy" is present at 0.3-0.4 and absent below 0.25: only a low threshold gives it
    probabilities = np.where(actual, [0.8, 0.35, 0.9], [0.1, 0.2, 0.1]) + rng.uniform(-0.04, 0.04, (rows, 3))
    thresholds = task.best_thresholds(probabilities, actual.astype(int))
    assert thresholds[0] == pytest.approx(0.5, abs=0.36) and 0.24 <= thresholds[1] <= 0.31
    assert thresholds[2] == task.threshold  # 3 positive rows: too few for its own
    with_own = task.with_thresholds(thresholds)
    assert with_own.metrics(probabilities, actual)["per_class"]["shy"]["f1"] == 1.0
    assert task.metrics(probabilities, actual)["per_class"]["shy"]["f1"] == 0.0
    assert with_own.chosen([0.1, 0.32, 0.1]) == [1] and task.chosen([0.1, 0.32, 0.1]) == []


def test_multi_label_confidence_is_the_least_sure_label():
    task = make_task(MULTI_LABEL, ("a", "b")).with_thresholds([0.5, 0.3])
    assert task.confidence(np.array([[0.9, 0.35], [0.2, 0.1]])).tolist() == pytest.approx([0.35, 0.8])


def test_decisions_round_trip_through_the_config_and_hostile_values_are_refused():
    task = make_task(MULTI_LABEL, ("a", "b")).with_thresholds([0.3, 0.6]).with_temperature([2.0, 0.5]).with_floor(0.7)
    assert task_from_config(task.model_config()) == task
    single = make_task(SINGLE_LABEL, ("a", "b")).with_temperature(1.5).with_floor(0.9)
    assert task_from_config(single.model_config()) == single
    base = {"num_labels": 2, "problem_type": MULTI_LABEL}
    for bad in ({"logit_temperature": [0, 1]}, {"logit_temperature": [float("nan"), 1]}, {"logit_temperature": [1, 2, 3]},
                {"decision_thresholds": [0.5]}, {"decision_thresholds": [0.5, 7]}, {"abstain_below": 1.5},
                {"abstain_below": "high"}):
        with pytest.raises(ValueError):
            task_from_config({**base, **bad})
