"""Local ``evaluate`` metric modules for the extra_metrics tests, written as a user writes one (a folder holding
FOLDER.py, or a lone .py file) and shaped as the Hub's metrics are: a ``multilabel`` or ``multiclass``
configuration changes the inputs' features. Each computes something the tests can check against the built-in
metrics, so they show what the metric was given."""

from __future__ import annotations

from pathlib import Path

HEADER = '''import datasets
import evaluate
import numpy as np


def _features(config_name, scalar, row):
    return datasets.Features(row if config_name == "multilabel" else scalar)
'''

# The share of texts with any label wrong: 1 - accuracy, or 1 - subset accuracy for multi-label.
ERROR_RATE = HEADER + '''

class ErrorRate(evaluate.Metric):
    def _info(self):
        scalar = {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
        row = {"predictions": datasets.Sequence(datasets.Value("int64")),
               "references": datasets.Sequence(datasets.Value("int64"))}
        return evaluate.MetricInfo(description="share of texts with a wrong label", citation="",
                                   inputs_description="", features=_features(self.config_name, scalar, row))

    def _compute(self, predictions, references):
        wrong = np.asarray(predictions) != np.asarray(references)
        return {"error_rate": float(wrong.reshape(len(wrong), -1).any(axis=1).mean()), "texts": len(wrong)}
'''

# Accuracy from the scores: the positive class's probability at 0.5 (binary), or the most probable (multiclass).
# No multilabel configuration: a multi-label task does not fit it.
SCORE_ACCURACY = HEADER + '''

class ScoreAccuracy(evaluate.Metric):
    def _info(self):
        scores = datasets.Sequence(datasets.Value("float64")) if self.config_name == "multiclass" \\
            else datasets.Value("float64")
        return evaluate.MetricInfo(description="accuracy from the scores", citation="", inputs_description="",
                                   features=datasets.Features({"prediction_scores": scores,
                                                               "references": datasets.Value("int64")}))

    def _compute(self, prediction_scores, references, average="binary", multi_class="raise"):
        scores = np.asarray(prediction_scores)
        given = scores.argmax(axis=1) if scores.ndim == 2 else (scores >= 0.5).astype(int)
        return {"score_accuracy": float((given == np.asarray(references)).mean()),
                "options": [average, multi_class]}
'''

# The share of texts whose positive (second) label reaches 0.5: two labels only, so nothing else fits it.
POSITIVE_SHARE = HEADER + '''

class PositiveShare(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description="share given the positive label", citation="", inputs_description="",
                                   features=datasets.Features({"prediction_scores": datasets.Value("float64")}))

    def _compute(self, prediction_scores):
        return {"positive_share": float((np.asarray(prediction_scores) >= 0.5).mean())}
'''


def write_metric_modules(folder: Path) -> None:
    """Every module here, at the paths ``metric_paths`` names."""
    write_error_rate(folder), write_score_accuracy(folder), write_positive_share(folder)


def metric_paths(folder: Path) -> dict[str, str]:
    """The modules ``write_metric_modules`` wrote into ``folder``, by metric name."""
    return {"error_rate": str(folder / "error_rate"), "score_accuracy": str(folder / "score_accuracy.py"),
            "positive_share": str(folder / "positive_share.py")}


def write_error_rate(folder: Path) -> Path:
    """The error-rate metric as a folder holding error_rate.py; returns the folder."""
    (folder / "error_rate").mkdir(parents=True, exist_ok=True)
    (folder / "error_rate" / "error_rate.py").write_text(ERROR_RATE)
    return folder / "error_rate"


def write_score_accuracy(folder: Path) -> Path:
    """The score-accuracy metric as a lone .py file; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "score_accuracy.py").write_text(SCORE_ACCURACY)
    return folder / "score_accuracy.py"


def write_positive_share(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "positive_share.py").write_text(POSITIVE_SHARE)
    return folder / "positive_share.py"
