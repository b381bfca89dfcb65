"""Whether a model's probabilities can be taken at their word, and what to do when they cannot.

    calibration_scores(task, probabilities, references)   # NLL, Brier score, expected calibration error
    fit_temperature(nll_at)                                # the temperature(s) with the lowest validation NLL
    reliability(task, probabilities, references)           # the reliability diagram's bins
    risk_coverage(task, probabilities, references)         # accuracy of the most confident rows, by coverage
    floor_for_precision(task, probabilities, references, 0.97)   # the lowest confidence floor reaching 97%

Fine-tuned transformers are usually over-confident: a "97%" that is right 90% of the time. Temperature scaling
(Guo et al., 2017) divides the logits by one number T fitted on validation (one per label for multi-label, whose
labels are separate yes/no questions), which leaves every single-label argmax as it was. The training run folds T
into the output layer (distrinews/training/decisions.py), so every client of the saved model reads calibrated
scores. "Confidence" is the task's (``Task.confidence``): the top probability for single-label; for multi-label the
probability that the least sure label's yes or no is right. All numpy, on the rows' combined probabilities.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

from .tasks import MULTI_LABEL, Task

ECE_BINS = 15  # equal-width confidence bins, as Guo et al.
COVERAGES = (1.0, 0.95, 0.9, 0.8)  # the risk-coverage points metrics.json and the card report
CURVE_COVERAGES = tuple(round(0.05 * k, 2) for k in range(1, 21))  # the risk-coverage plot's points
# Temperatures tried: log-spaced over a range wide enough for any fine-tuned classifier, then refined around the
# best, so the fit is deterministic and needs no optimizer package.
TEMPERATURE_RANGE = (0.05, 20.0)
COARSE_STEPS = 121
FINE_STEPS = 41
_TINY = 1e-12


def negative_log_likelihood(task: Task, probabilities: np.ndarray, references: np.ndarray) -> float:
    """Mean negative log-probability of the truth: of the true label (single-label), or of each label's true yes or
    no, averaged over rows and labels (multi-label)."""
    return float(_log_loss_per_label(task, probabilities, references).mean())


def brier_score(task: Task, probabilities: np.ndarray, references: np.ndarray) -> float:
    """Mean squared distance to the one-hot truth: summed over labels (single-label, as Brier defined it), or per
    label (multi-label: each label is its own binary forecast)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    squared = (probabilities - task.truth(references)) ** 2
    return float(squared.sum(axis=-1).mean() if task.problem_type != MULTI_LABEL else squared.mean())


@dataclass
class ReliabilityBin:
    low: float
    high: float
    count: int
    confidence: float  # mean predicted probability of the bin's forecasts
    accuracy: float  # how often they were right


def reliability(task: Task, probabilities: np.ndarray, references: np.ndarray, bins: int = ECE_BINS) \
        -> list[ReliabilityBin]:
    """The forecasts in equal-width probability bins: for single-label each row's top label (right or not), for
    multi-label every label of every row (present or not, with its own probability)."""
    return _binned(*_forecasts(task, probabilities, references), bins)


def expected_calibration_error(task: Task, probabilities: np.ndarray, references: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """The bins' |accuracy - confidence|, weighted by how many forecasts each holds (top-label for single-label;
    every label's forecast for multi-label)."""
    return _gap(reliability(task, probabilities, references, bins))


def _binned(forecast: np.ndarray, outcome: np.ndarray, bins: int = ECE_BINS) -> list[ReliabilityBin]:
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, forecast, side="left") - 1, 0, bins - 1)  # (low, high]; 0 in the first
    result = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        result.append(ReliabilityBin(float(edges[b]), float(edges[b + 1]), count,
                                     float(forecast[members].mean()) if count else 0.0,
                                     float(outcome[members].mean()) if count else 0.0))
    return result


def _gap(table: list[ReliabilityBin]) -> float:
    total = sum(b.count for b in table)
    return float(sum(b.count * abs(b.accuracy - b.confidence) for b in table) / max(total, 1))


def calibration_scores(task: Task, probabilities: np.ndarray, references: np.ndarray) -> dict:
    """NLL, Brier score and ECE of a split (metrics.json's ``calibration`` entries). For multi-label, ``ece`` is
    the mean of each label's own ECE (``ece_per_label``)."""
    scores = {"nll": negative_log_likelihood(task, probabilities, references),
              "brier": brier_score(task, probabilities, references)}
    if task.problem_type != MULTI_LABEL:
        return {**scores, "ece": expected_calibration_error(task, probabilities, references)}
    probabilities = np.asarray(probabilities, dtype=np.float64)
    truth = task.truth(references)
    per_label = {name: _gap(_binned(probabilities[:, i], truth[:, i])) for i, name in enumerate(task.labels)}
    return {**scores, "ece": float(np.mean(list(per_label.values()))), "ece_per_label": per_label}


def trust_report(task: Task, probabilities: np.ndarray, references: np.ndarray) -> dict:
    """What metrics.json and ``distrinews evaluate`` say of a split's probabilities: risk-coverage (the points and
    the plot's curve), the coverage and accuracy at the task's floor, and the calibration scores and reliability
    bins (under "after": the scores as the model gives them)."""
    return {"risk_coverage": risk_coverage(task, probabilities, references),
            "risk_coverage_curve": risk_coverage(task, probabilities, references, CURVE_COVERAGES),
            "at_floor": at_floor(task, probabilities, references, task.abstain_below),
            "calibration": {"after": calibration_scores(task, probabilities, references)},
            "reliability": {"after": [asdict(b) for b in reliability(task, probabilities, references)]}}


def fit_temperature(nll_at: Callable[[np.ndarray], np.ndarray], count: int) -> np.ndarray:
    """The temperatures (``count`` of them: 1, or one per label) with the lowest NLL.

    ``nll_at(temperatures)`` returns each temperature's own NLL (``count`` numbers): the labels of a multi-label
    model are independent yes/no questions, so all of them are fitted in the same sweep. A coarse log-spaced grid,
    then a fine one around each best point."""
    low, high = np.log(TEMPERATURE_RANGE)
    coarse = np.exp(np.linspace(low, high, COARSE_STEPS))
    losses = np.stack([nll_at(np.full(count, t)) for t in coarse])  # (steps, count)
    best = coarse[np.nanargmin(losses, axis=0)]
    ratio = coarse[1] / coarse[0]
    fine = np.exp(np.linspace(np.log(best / ratio), np.log(best * ratio), FINE_STEPS))  # (steps, count)
    fine = np.clip(fine, *TEMPERATURE_RANGE)
    losses = np.stack([nll_at(row) for row in fine])
    return fine[np.nanargmin(losses, axis=0), np.arange(count)]


def label_nll(task: Task, probabilities: np.ndarray, references: np.ndarray) -> np.ndarray:
    """The NLL ``fit_temperature`` minimizes: one number (single-label) or one per label (multi-label)."""
    per_label = _log_loss_per_label(task, probabilities, references)
    return per_label.mean(axis=0) if task.problem_type == MULTI_LABEL else per_label.mean(keepdims=True)


def risk_coverage(task: Task, probabilities: np.ndarray, references: np.ndarray,
                  coverages: Sequence[float] = COVERAGES) -> list[dict[str, float]]:
    """The accuracy (multi-label: every label right) of the most confident rows, keeping each share of rows."""
    confidence, correct = _by_confidence(task, probabilities, references)
    points = []
    for coverage in coverages:
        kept = max(1, int(np.ceil(coverage * len(correct)))) if len(correct) else 0
        points.append({"coverage": float(coverage), "accuracy": float(correct[:kept].mean()) if kept else 0.0,
                       "floor": float(confidence[kept - 1]) if kept else 0.0})
    return points


def risk_coverage_curve(task: Task, probabilities: np.ndarray, references: np.ndarray) \
        -> tuple[np.ndarray, np.ndarray]:
    """Coverage and accuracy of the kept rows at every cut of the rows sorted by confidence (for the plot)."""
    _, correct = _by_confidence(task, probabilities, references)
    kept = np.arange(1, len(correct) + 1)
    return kept / max(len(correct), 1), np.cumsum(correct) / kept


def at_floor(task: Task, probabilities: np.ndarray, references: np.ndarray, floor: float | None) -> dict:
    """Coverage and accuracy of the rows whose confidence reaches ``floor``."""
    confidence = task.confidence(probabilities)
    kept = confidence >= (floor or 0.0)
    correct = task.correct(probabilities, references)
    return {"floor": floor, "coverage": float(kept.mean()) if len(kept) else 0.0,
            "accuracy": float(correct[kept].mean()) if kept.any() else None, "kept": int(kept.sum()),
            "rows": int(len(kept))}


def floor_for_precision(task: Task, probabilities: np.ndarray, references: np.ndarray, target: float) \
        -> float | None:
    """The lowest confidence floor at which the rows kept (confidence >= floor) are right at least ``target`` of
    the time; None when no floor reaches it on these rows."""
    confidence, correct = _by_confidence(task, probabilities, references)
    if not len(correct):
        return None
    precision = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    # A floor keeps every row of its confidence, so only the last row of a run of equal confidences is a cut.
    cuts = np.append(confidence[1:] != confidence[:-1], True)
    reaching = np.flatnonzero(cuts & (precision >= target))
    return float(confidence[reaching[-1]]) if len(reaching) else None


def _by_confidence(task: Task, probabilities: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence and correctness of every row, most confident first (stable, so ties keep the rows' order)."""
    confidence = task.confidence(probabilities)
    order = np.argsort(-confidence, kind="stable")
    return confidence[order], task.correct(probabilities, references)[order]


def _log_loss_per_label(task: Task, probabilities: np.ndarray, references: np.ndarray) -> np.ndarray:
    """(rows, labels) binary log losses (multi-label) or (rows,) log losses of the true label (single-label)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    truth = task.truth(references)
    if task.problem_type == MULTI_LABEL:
        right = np.where(truth > 0, probabilities, 1.0 - probabilities)
        return -np.log(np.clip(right, _TINY, 1.0))
    return -np.log(np.clip((probabilities * truth).sum(axis=-1), _TINY, 1.0))


def _forecasts(task: Task, probabilities: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the reliability diagram bins: (forecast probability, 1 if it came true else 0)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if task.problem_type == MULTI_LABEL:
        return probabilities.ravel(), task.truth(references).ravel()
    top = probabilities.argmax(axis=-1)
    return probabilities.max(axis=-1), (top == np.asarray(references)).astype(float)
