"""Classification metrics as an ``evaluate`` module that lives in this package.

``evaluate.load("accuracy")`` fetches a metric script from the Hub at run time, which fails offline
(Kaggle with internet off, CI). The same ``evaluate.Metric`` API is used here with the module defined
locally, so ``compute_classification_metrics`` works anywhere and still speaks evaluate's interface.
"""

from __future__ import annotations

from typing import Sequence

import datasets
import evaluate
import numpy as np


class ClassificationReport(evaluate.Metric):
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""

    def __init__(self, label_names: Sequence[str], **kwargs) -> None:
        self.label_names = list(label_names)
        super().__init__(**kwargs)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Multi-class classification report",
            citation="",
            inputs_description="predictions and references: class indices",
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        predictions = np.asarray(predictions, dtype=np.int64)
        references = np.asarray(references, dtype=np.int64)
        n = len(self.label_names)
        confusion = np.zeros((n, n), dtype=np.int64)  # rows: true label, columns: predicted label
        np.add.at(confusion, (references, predictions), 1)
        true_positive = np.diag(confusion).astype(float)
        predicted = confusion.sum(axis=0)
        actual = confusion.sum(axis=1)
        precision = np.divide(true_positive, predicted, out=np.zeros(n), where=predicted > 0)
        recall = np.divide(true_positive, actual, out=np.zeros(n), where=actual > 0)
        denominator = precision + recall
        f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(n), where=denominator > 0)
        return {
            "accuracy": float(true_positive.sum() / max(len(references), 1)),
            "macro_f1": float(f1.mean()),
            "num_examples": int(len(references)),
            "per_class": {
                name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                       "support": int(actual[i])}
                for i, name in enumerate(self.label_names)
            },
            "confusion_matrix": confusion.tolist(),
        }


def compute_classification_metrics(predictions, references, label_names: Sequence[str]) -> dict:
    # keep_in_memory: this runs on one process after gathering, so no Arrow cache files are needed.
    metric = ClassificationReport(label_names, keep_in_memory=True)
    return metric.compute(predictions=predictions, references=references)
