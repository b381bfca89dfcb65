"""What a classifier's outputs mean: one task object per ``problem_type``, used by training, evaluation and serving.

    task = task_from_config(model.config)          # or make_task(problem_type, labels)
    task.probabilities(logits)                      # softmax (one label per text) or sigmoid (any number of labels)
    task.chosen(row)                                # the label indices a row of probabilities decides for
    task.given(probabilities), task.truth(references)   # the same for many rows, and the true labels, as booleans
    task.loss(logits, labels, weights)              # cross-entropy or binary cross-entropy, with class weights
    task.metrics(probabilities, references)         # the metrics.json entry of a split

The names are transformers' own (``config.problem_type``), so ``pipeline("text-classification")`` applies the same
softmax or sigmoid to a pushed model. A multi-label model also carries its decision thresholds in its config
(``decision_threshold``, and ``decision_thresholds``: one per label), chosen on validation by the training run.
What else a training run decided on validation travels in the config too (``distrinews.core.calibration``):
``abstain_below``, the confidence under which an answer is flagged "not sure", and ``logit_temperature``, the
calibration temperature of a model whose output layer could not take it in its weights. Probabilities, decisions and metrics are
numpy (the Space never imports torch; the score functions are ``distrinews.core.windows``', which also combines a
long text's windows by the kind of score); ``loss`` and ``divergence`` take torch tensors and import torch then.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from .windows import scores_from_logits

SINGLE_LABEL = "single_label_classification"
MULTI_LABEL = "multi_label_classification"
PROBLEM_TYPES = (SINGLE_LABEL, MULTI_LABEL)
THRESHOLD_KEY = "decision_threshold"  # in the model's config.json, multi-label models only
THRESHOLDS_KEY = "decision_thresholds"  # one per label, in label order (multi-label; chosen on validation)
FLOOR_KEY = "abstain_below"  # a confidence under this is answered "not sure" (abstained), labels still given
TEMPERATURE_KEY = "logit_temperature"  # only where the output layer could not take the temperature in its weights
DEFAULT_THRESHOLD = 0.5
# Thresholds tried on validation: a grid fine enough that the best of it is within noise of the true optimum.
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)
# A label needs this many positive validation rows to get a threshold of its own: with fewer, one row more or less
# moves its F1 by several points, and the global threshold (chosen on every label's rows) is the safer guess.
MIN_POSITIVES_FOR_OWN_THRESHOLD = 10


@dataclass(frozen=True)
class SingleLabelTask:
    """Exactly one label per text: softmax, the most probable label, cross-entropy."""

    labels: tuple[str, ...]
    temperature: float | None = None  # divides the logits before softmax (None: calibrated in the weights, or not)
    abstain_below: float | None = None  # confidence floor: a top probability under it is "not sure"
    problem_type: ClassVar[str] = SINGLE_LABEL
    score_function: ClassVar[str] = "softmax"  # as the HF pipelines name it (function_to_apply)
    threshold: ClassVar[None] = None
    thresholds: ClassVar[None] = None
    # metric_for_best_model choices; the first is the default ("auto")
    selection_metrics: ClassVar[tuple[str, ...]] = ("accuracy", "macro_f1", "loss")

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return scores_from_logits(_tempered(logits, self.temperature), self.score_function)

    def confidence(self, probabilities: np.ndarray) -> np.ndarray:
        """How likely each row's answer is right, by its own probabilities: the top label's probability."""
        return np.asarray(probabilities).max(axis=-1)

    def given(self, probabilities: np.ndarray) -> np.ndarray:
        """(rows, labels) booleans: the label each row is given, the most probable."""
        probabilities = np.asarray(probabilities)
        return np.eye(len(self.labels), dtype=bool)[probabilities.argmax(axis=-1)]

    def truth(self, references: np.ndarray) -> np.ndarray:
        """(rows, labels) booleans: each row's true label."""
        return np.eye(len(self.labels), dtype=bool)[np.asarray(references, dtype=np.int64)]

    def correct(self, probabilities: np.ndarray, references: np.ndarray) -> np.ndarray:
        """Per row: 1 when the answer is the true label (the precision of kept rows is their mean)."""
        return (np.asarray(probabilities).argmax(axis=-1) == np.asarray(references)).astype(float)

    def torch_probabilities(self, logits):
        return logits.float().softmax(dim=-1)

    def chosen(self, row: Sequence[float]) -> list[int]:
        return [max(range(len(row)), key=row.__getitem__)]

    def loss(self, logits, labels, weights=None):
        import torch.nn.functional as F

        return F.cross_entropy(logits.float().view(-1, len(self.labels)), labels.view(-1), weight=weights)

    def divergence(self, first_logits, second_logits):
        """Symmetric KL between two predictions of the same batch (R-Drop), averaged over the batch."""
        import torch.nn.functional as F

        first, second = first_logits.float().log_softmax(dim=-1), second_logits.float().log_softmax(dim=-1)
        return 0.5 * (F.kl_div(first, second, log_target=True, reduction="batchmean")
                      + F.kl_div(second, first, log_target=True, reduction="batchmean"))

    def label_counts(self, references: np.ndarray) -> np.ndarray:
        return np.bincount(np.asarray(references, dtype=np.int64), minlength=len(self.labels))

    def balanced_weights(self, references: np.ndarray) -> np.ndarray:
        """scikit-learn's "balanced": rows / (labels x rows of the label), so every label weighs the same in total."""
        counts = self.label_counts(references)
        return len(references) / (len(self.labels) * counts)

    def metrics(self, probabilities: np.ndarray, references: np.ndarray) -> dict:
        """Accuracy, macro-F1, per-label precision/recall/F1/support and the confusion matrix."""
        predictions = np.asarray(probabilities).argmax(axis=-1)
        references = np.asarray(references, dtype=np.int64)
        n = len(self.labels)
        confusion = np.zeros((n, n), dtype=np.int64)  # rows: true label, columns: predicted label
        np.add.at(confusion, (references, predictions), 1)
        scores = _precision_recall_f1(np.diag(confusion), confusion.sum(axis=0), confusion.sum(axis=1))
        return {
            "accuracy": float(np.diag(confusion).sum() / max(len(references), 1)),
            "macro_f1": float(scores["f1"].mean()),
            "num_examples": int(len(references)),
            "per_class": _per_label(self.labels, scores),
            "confusion_matrix": confusion.tolist(),
        }

    def best_threshold(self, probabilities: np.ndarray, references: np.ndarray) -> None:
        return None  # one label per text: the most probable, whatever its probability

    def with_threshold(self, threshold: float | None) -> "SingleLabelTask":
        return self

    def with_thresholds(self, thresholds: Sequence[float] | None) -> "SingleLabelTask":
        return self

    def with_temperature(self, temperature: float | Sequence[float] | None) -> "SingleLabelTask":
        if temperature is not None:
            (temperature,) = _checked_temperatures(np.atleast_1d(temperature).tolist(), 1)
        return replace(self, temperature=temperature)

    def with_floor(self, abstain_below: float | None) -> "SingleLabelTask":
        return replace(self, abstain_below=_floor(abstain_below))

    def model_config(self) -> dict[str, Any]:
        """What ``from_pretrained`` needs to size the head and name its outputs, and what training decided."""
        return {"num_labels": len(self.labels), "id2label": dict(enumerate(self.labels)),
                "label2id": {name: i for i, name in enumerate(self.labels)}, "problem_type": self.problem_type,
                FLOOR_KEY: self.abstain_below, TEMPERATURE_KEY: self.temperature}


@dataclass(frozen=True)
class MultiLabelTask:
    """Any number of labels per text, none included: a sigmoid per label and every label at or above the
    threshold; binary cross-entropy per label."""

    labels: tuple[str, ...]
    threshold: float = DEFAULT_THRESHOLD  # every label's, unless thresholds gives it its own
    thresholds: tuple[float, ...] | None = None  # one per label, in label order
    temperature: tuple[float, ...] | None = None  # one per label, dividing its logit before the sigmoid
    abstain_below: float | None = None  # confidence floor (see ``confidence``)
    problem_type: ClassVar[str] = MULTI_LABEL
    score_function: ClassVar[str] = "sigmoid"
    selection_metrics: ClassVar[tuple[str, ...]] = ("micro_f1", "macro_f1", "subset_accuracy", "loss")

    @property
    def label_thresholds(self) -> np.ndarray:
        """Each label's threshold, in label order."""
        if self.thresholds is not None:
            return np.asarray(self.thresholds, dtype=np.float64)
        return np.full(len(self.labels), self.threshold, dtype=np.float64)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return scores_from_logits(_tempered(logits, self.temperature), self.score_function)

    def confidence(self, probabilities: np.ndarray) -> np.ndarray:
        """How likely each row's answer is right, by its own probabilities: each label's yes or no is right with
        probability p (given) or 1 - p (not given); a row is as sure as its least sure label."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        return np.where(self.given(probabilities), probabilities, 1.0 - probabilities).min(axis=-1)

    def given(self, probabilities: np.ndarray) -> np.ndarray:
        """(rows, labels) booleans: every label at or above its threshold."""
        return np.asarray(probabilities) >= self.label_thresholds

    def truth(self, references: np.ndarray) -> np.ndarray:
        """(rows, labels) booleans: each row's true labels."""
        return np.asarray(references).astype(bool).reshape(-1, len(self.labels))

    def correct(self, probabilities: np.ndarray, references: np.ndarray) -> np.ndarray:
        """Per row: 1 when every label's yes or no is right (subset accuracy)."""
        return (self.given(probabilities) == self.truth(references)).all(axis=-1).astype(float)

    def torch_probabilities(self, logits):
        return logits.float().sigmoid()

    def chosen(self, row: Sequence[float]) -> list[int]:
        above = [i for i, (p, threshold) in enumerate(zip(row, self.label_thresholds)) if p >= threshold]
        return sorted(above, key=row.__getitem__, reverse=True)

    def loss(self, logits, labels, weights=None):
        import torch.nn.functional as F

        # weights are BCE's pos_weight: how much a missed label costs against a wrongly given one
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=weights)

    def divergence(self, first_logits, second_logits):
        """Symmetric KL between the two passes' Bernoulli distributions, summed over labels, averaged over rows."""
        import torch.nn.functional as F

        first, second = first_logits.float(), second_logits.float()
        p, q = first.sigmoid(), second.sigmoid()
        log_p, log_q = F.logsigmoid(first), F.logsigmoid(second)
        log_not_p, log_not_q = F.logsigmoid(-first), F.logsigmoid(-second)
        kl_pq = p * (log_p - log_q) + (1 - p) * (log_not_p - log_not_q)
        kl_qp = q * (log_q - log_p) + (1 - q) * (log_not_q - log_not_p)
        return 0.5 * (kl_pq + kl_qp).sum(dim=-1).mean()

    def label_counts(self, references: np.ndarray) -> np.ndarray:
        return np.asarray(references, dtype=np.int64).reshape(-1, len(self.labels)).sum(axis=0)

    def balanced_weights(self, references: np.ndarray) -> np.ndarray:
        """pos_weight = rows without the label / rows with it, so a label's positives weigh as much as its negatives."""
        counts = self.label_counts(references)
        return (len(references) - counts) / counts

    def metrics(self, probabilities: np.ndarray, references: np.ndarray) -> dict:
        """Micro- and macro-F1, subset accuracy (every label of a row right), per-label scores and confusion."""
        predicted, actual = self.given(probabilities), self.truth(references)
        true_positive = (predicted & actual).sum(axis=0)
        false_positive = (predicted & ~actual).sum(axis=0)
        false_negative = (~predicted & actual).sum(axis=0)
        scores = _precision_recall_f1(true_positive, predicted.sum(axis=0), actual.sum(axis=0))
        micro = _precision_recall_f1([true_positive.sum()], [predicted.sum()], [actual.sum()])
        return {
            "micro_f1": float(micro["f1"][0]),
            "macro_f1": float(scores["f1"].mean()),
            "subset_accuracy": float((predicted == actual).all(axis=1).mean()) if len(actual) else 0.0,
            "micro_precision": float(micro["precision"][0]),
            "micro_recall": float(micro["recall"][0]),
            "threshold": self.threshold,
            **({"thresholds": list(self.thresholds)} if self.thresholds is not None else {}),
            "num_examples": int(len(actual)),
            "per_class": _per_label(self.labels, scores),
            "label_confusion": {name: {"true_positive": int(tp), "false_positive": int(fp),
                                       "false_negative": int(fn), "true_negative": int(len(actual) - tp - fp - fn)}
                                for name, tp, fp, fn in zip(self.labels, true_positive, false_positive,
                                                            false_negative)},
        }

    def best_threshold(self, probabilities: np.ndarray, references: np.ndarray) -> float:
        """The threshold of THRESHOLD_GRID with the highest micro-F1 on these rows (ties: the one nearest 0.5)."""
        probabilities = np.asarray(probabilities)
        actual = np.asarray(references).astype(bool).reshape(probabilities.shape)
        predicted = probabilities[None, :, :] >= THRESHOLD_GRID[:, None, None]
        true_positive = (predicted & actual).sum(axis=(1, 2))
        denominator = predicted.sum(axis=(1, 2)) + actual.sum()
        f1 = np.divide(2 * true_positive, denominator, out=np.zeros(len(THRESHOLD_GRID)), where=denominator > 0)
        candidates = np.flatnonzero(f1 == f1.max())
        return float(THRESHOLD_GRID[candidates[np.argmin(np.abs(THRESHOLD_GRID[candidates] - 0.5))]])

    def best_thresholds(self, probabilities: np.ndarray, references: np.ndarray,
                        min_positives: int = MIN_POSITIVES_FOR_OWN_THRESHOLD) -> tuple[float, ...]:
        """Each label's threshold of THRESHOLD_GRID with the highest F1 of that label on these rows (ties: nearest
        0.5); a label with fewer than ``min_positives`` positive rows keeps the global ``threshold``, since its
        F1 over a handful of rows would pick noise."""
        probabilities = np.asarray(probabilities)
        actual = np.asarray(references).astype(bool).reshape(probabilities.shape)
        predicted = probabilities[None, :, :] >= THRESHOLD_GRID[:, None, None]  # (grid, rows, labels)
        true_positive = (predicted & actual).sum(axis=1)
        denominator = predicted.sum(axis=1) + actual.sum(axis=0)
        f1 = np.divide(2 * true_positive, denominator, out=np.zeros(denominator.shape), where=denominator > 0)
        chosen = []
        for label, positives in enumerate(actual.sum(axis=0)):
            if positives < min_positives:
                chosen.append(self.threshold)
                continue
            candidates = np.flatnonzero(f1[:, label] == f1[:, label].max())
            chosen.append(float(THRESHOLD_GRID[candidates[np.argmin(np.abs(THRESHOLD_GRID[candidates] - 0.5))]]))
        return tuple(chosen)

    def with_threshold(self, threshold: float | None) -> "MultiLabelTask":
        return self if threshold is None else replace(self, threshold=float(threshold))

    def with_thresholds(self, thresholds: Sequence[float] | None) -> "MultiLabelTask":
        if thresholds is None:
            return replace(self, thresholds=None)
        values = tuple(float(t) for t in thresholds)
        if len(values) != len(self.labels) or not all(0 <= t <= 1 for t in values):
            raise ValueError(f"{THRESHOLDS_KEY} must be {len(self.labels)} numbers in [0, 1], got {list(thresholds)!r}")
        return replace(self, thresholds=values)

    def with_temperature(self, temperature: float | Sequence[float] | None) -> "MultiLabelTask":
        if temperature is not None:
            values = np.atleast_1d(temperature).tolist()
            temperature = _checked_temperatures(values * len(self.labels) if len(values) == 1 else values,
                                                len(self.labels))
        return replace(self, temperature=temperature)

    def with_floor(self, abstain_below: float | None) -> "MultiLabelTask":
        return replace(self, abstain_below=_floor(abstain_below))

    def model_config(self) -> dict[str, Any]:
        return {"num_labels": len(self.labels), "id2label": dict(enumerate(self.labels)),
                "label2id": {name: i for i, name in enumerate(self.labels)}, "problem_type": self.problem_type,
                THRESHOLD_KEY: self.threshold,
                THRESHOLDS_KEY: None if self.thresholds is None else list(self.thresholds),
                FLOOR_KEY: self.abstain_below,
                TEMPERATURE_KEY: None if self.temperature is None else list(self.temperature)}


Task = SingleLabelTask | MultiLabelTask


def make_task(problem_type: str, labels: Sequence[str], threshold: float | None = None) -> Task:
    if problem_type == MULTI_LABEL:
        return MultiLabelTask(tuple(labels), DEFAULT_THRESHOLD if threshold is None else float(threshold))
    if problem_type == SINGLE_LABEL:
        return SingleLabelTask(tuple(labels))
    raise ValueError(f"problem_type {problem_type!r} is not one of {', '.join(PROBLEM_TYPES)}")


def _checked_temperatures(values: Sequence[float], count: int) -> tuple[float, ...]:
    """Temperatures from a config (a Hub download, so anything): ``count`` finite numbers above 0."""
    temperatures = tuple(float(t) for t in values)
    if len(temperatures) != count or not all(math.isfinite(t) and t > 0 for t in temperatures):
        raise ValueError(f"{TEMPERATURE_KEY} must be {count} finite number(s) above 0, got {list(values)!r}")
    return temperatures


def _tempered(logits: np.ndarray, temperature: float | tuple[float, ...] | None) -> np.ndarray:
    if temperature is None:
        return logits
    return np.asarray(logits, dtype=np.float64) / np.asarray(temperature, dtype=np.float64)


def _floor(value: float | None) -> float | None:
    """A confidence floor: None or 0 is none; anything else must be a probability."""
    if value is None or value == 0:
        return None
    if not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"a confidence floor must be in (0, 1], got {value!r}")
    return float(value)


def task_from_config(config: Any) -> Task:
    """The task of a saved model, from its ``config.json`` (a dict) or its loaded ``PretrainedConfig``.

    A config without ``problem_type`` is single-label, as transformers reads it for more than one label."""
    values = config if isinstance(config, Mapping) else config.to_dict()
    id2label = {int(index): name for index, name in (values.get("id2label") or {}).items()}
    count = values.get("num_labels") or len(id2label)
    labels = [id2label.get(i, f"LABEL_{i}") for i in range(count)]
    task = make_task(values.get("problem_type") or SINGLE_LABEL, labels, values.get(THRESHOLD_KEY))
    return (task.with_thresholds(values.get(THRESHOLDS_KEY)).with_temperature(values.get(TEMPERATURE_KEY))
            .with_floor(values.get(FLOOR_KEY)))


def _precision_recall_f1(true_positive, predicted, actual) -> dict[str, np.ndarray]:
    """Per-label scores; a label never predicted (or never present) scores 0, not NaN."""
    true_positive = np.asarray(true_positive, dtype=float)
    predicted, actual = np.asarray(predicted), np.asarray(actual)
    precision = np.divide(true_positive, predicted, out=np.zeros(len(true_positive)), where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros(len(true_positive)), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(len(true_positive)), where=denominator > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": actual}


def _per_label(labels: Sequence[str], scores: dict[str, np.ndarray]) -> dict[str, dict]:
    return {name: {"precision": float(scores["precision"][i]), "recall": float(scores["recall"][i]),
                   "f1": float(scores["f1"][i]), "support": int(scores["support"][i])}
            for i, name in enumerate(labels)}
