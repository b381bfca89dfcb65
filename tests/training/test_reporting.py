"""The metrics table the notebook shows (and a model card can reuse)."""

from __future__ import annotations

import pytest

from distrinews.training.reporting import metrics_markdown_table


def split_metrics(accuracy: float, count: int) -> dict:
    per_class = {name: {"precision": 0.5, "recall": 0.5, "f1": f1}
                 for name, f1 in (("World", 0.9), ("Sports", 0.98765), ("Business", 0.8), ("Sci/Tech", 0.85))}
    return {"accuracy": accuracy, "macro_f1": 0.884, "num_examples": count, "per_class": per_class}


def test_one_row_per_split_with_per_class_f1():
    table = metrics_markdown_table({"validation": split_metrics(0.93333, 6000), "test": split_metrics(0.9412, 7600)})
    lines = table.splitlines()
    assert lines[0] == ("| split | examples | accuracy | macro-F1 | F1 World | F1 Sports | F1 Business | F1 Sci/Tech |")
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    assert lines[2] == "| validation | 6000 | 0.9333 | 0.8840 | 0.9000 | 0.9877 | 0.8000 | 0.8500 |"
    assert lines[3].startswith("| test | 7600 | 0.9412 |")
    assert len(lines) == 4


def test_missing_split_is_named():
    with pytest.raises(KeyError, match="no test section"):
        metrics_markdown_table({"validation": split_metrics(0.9, 10)})
