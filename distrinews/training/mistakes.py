"""Where the model goes wrong: the most-confused label pairs of a split and ``errors.jsonl``, the test texts it got
wrong most confidently. People read these before they trust a model.

``most_confused_pairs`` (in ``metrics.json`` for validation and test, and in the card):
- one label per text: the largest off-diagonal cells of the confusion matrix, each a true label, the label the model
  gave instead, the count and its share of the true label's texts;
- multi-label: pairs of a label the model missed and a label it wrongly gave in the same text, counted over texts,
  i.e. which label it mistakes for which. A missed label with no wrong one beside it (or the reverse) is in no pair:
  ``label_confusion``'s false negatives and false positives count those.

``errors.jsonl`` holds up to ``MISTAKES_KEPT`` test texts the model got wrong, most confident first, one JSON object
a line: the text, its row in the test split, the true and predicted label(s), the confidence and every label's
probability. The confidence of a mistake is the probability of the label given (one label per text); for
multi-label, that of its most confident wrong decision: the highest probability of a label wrongly given, or one
minus the lowest of a label missed. The file stays in the run folder: it quotes the data, so it is not pushed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.atomic import write_text
from ..core.errors import EvaluationCountError
from ..core.tasks import MULTI_LABEL, Task

ERRORS_FILE = "errors.jsonl"
MISTAKES_KEPT = 50  # enough to see patterns, few enough to read
PAIRS_KEPT = 10


def most_confused_pairs(task: Task, probabilities: np.ndarray, references: np.ndarray,
                        kept: int = PAIRS_KEPT) -> list[dict]:
    """Up to ``kept`` (true, predicted) label pairs the model confuses, most often first (module docstring)."""
    given, actual = task.given(probabilities), task.truth(references)
    missed, wrongly_given = actual & ~given, given & ~actual
    # counts[a, b]: texts where label a was missed and label b given instead (one label per text: the confusion)
    counts = missed.T.astype(np.int64) @ wrongly_given.astype(np.int64)
    support = actual.sum(axis=0)
    order = sorted(zip(*np.nonzero(counts)), key=lambda pair: (-counts[pair], pair))
    return [{"true": task.labels[a], "predicted": task.labels[b], "count": int(counts[a, b]),
             "share_of_true": round(float(counts[a, b] / support[a]), 4)} for a, b in order[:kept]]


def most_confident_mistakes(task: Task, probabilities: np.ndarray, references: np.ndarray, texts: Sequence[str],
                            rows: Sequence[int], kept: int = MISTAKES_KEPT) -> list[dict]:
    """The ``kept`` texts the model got wrong with the highest confidence, most confident first (ties: by row)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    given, actual = task.given(probabilities), task.truth(references)
    wrong = np.flatnonzero((given != actual).any(axis=1))
    confidence = np.where(given & ~actual, probabilities, 0).max(axis=1)
    if task.problem_type == MULTI_LABEL:  # a label missed is a decision too: sure it was absent
        confidence = np.maximum(confidence, np.where(actual & ~given, 1 - probabilities, 0).max(axis=1))
    wrong = sorted(wrong, key=lambda i: (-confidence[i], rows[i]))[:kept]
    return [_mistake(task, texts[i], int(rows[i]), actual[i], given[i], float(confidence[i]), probabilities[i])
            for i in wrong]


def _mistake(task: Task, text: str, row: int, actual: np.ndarray, given: np.ndarray, confidence: float,
             probabilities: np.ndarray) -> dict:
    def named(selected: np.ndarray) -> list[str]:
        return [task.labels[i] for i in np.flatnonzero(selected)]

    one_label = task.problem_type != MULTI_LABEL
    return {"row": row, "text": text,
            "true": named(actual)[0] if one_label else named(actual),
            "predicted": named(given)[0] if one_label else named(given),
            "confidence": confidence,
            "probabilities": {name: float(p) for name, p in zip(task.labels, probabilities)}}


def write_mistakes(path: Path, task: Task, probabilities: np.ndarray, references: np.ndarray,
                   split, rows: Sequence[int]) -> None:
    """``errors.jsonl`` of a split's outputs, whose i-th row is the split's ``rows[i]``-th text (the evaluation
    loader's order); checks that the outputs' labels are the split's in that order."""
    labels = np.asarray(split["label"])[np.asarray(rows)]
    if labels.shape != np.asarray(references).shape or not np.array_equal(labels, references):
        raise EvaluationCountError(f"{path.name}: the evaluated outputs are not the split's texts in the order "
                                   "given (a bug: the evaluation order changed)")
    column = split["text"]  # read once: a datasets split builds the whole column on each access
    texts = [column[row] for row in rows]
    mistakes = most_confident_mistakes(task, probabilities, references, texts, rows)
    write_text(path, "".join(json.dumps(mistake, ensure_ascii=False) + "\n" for mistake in mistakes))
