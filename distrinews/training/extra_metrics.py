"""Further metrics from the Hugging Face ``evaluate`` library (``extra_metrics``), beside the built-in ones.

    metrics = load_extra_metrics(("matthews_correlation", "metrics/my_metric.py"), task)   # before training
    compute_extra_metrics(metrics, task, probabilities, references)   # {"matthews_correlation": {...}, ...}

A metric is a name on the Hub (fetched once, then cached) or a local metric module: a ``.py`` file, or a folder
holding ``FOLDER.py``, that defines an ``evaluate.Metric``. What it is given depends on the task, as the metrics
on the Hub name their inputs:

- ``references``: the label index of each text; multi-label: its 0/1 row.
- ``predictions``: the label the model gives (the most probable); multi-label: the 0/1 row of the labels given.
- ``prediction_scores``: the probabilities; for two labels, the second label's (index 1, the positive class, as
  scikit-learn's ``pos_label=1``).

A multi-label task loads the metric's ``multilabel`` configuration and one of more than two labels its
``multiclass`` one (metrics without configurations ignore the name). Where the metric's ``_compute`` takes them,
more than two labels are averaged as the built-in macro-F1 is (``average="macro"``, over every label), and
``roc_auc`` compares each label against the rest (``multi_class="ovr"``).

``load_extra_metrics`` runs on every rank before training and computes each metric on a small made-up batch of
the task's shape, so a metric that cannot load or does not fit stops the run at once with one line (ConfigError,
exit code 2) rather than after training. ``evaluate`` is imported only here, and only when metrics are asked for:
it takes seconds to import.
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.errors import ConfigError
from ..core.tasks import MULTI_LABEL, Task

INPUTS = ("predictions", "references", "prediction_scores")  # what a metric can be given (module docstring)
EXTRA_METRICS = "extra_metrics"  # the key of their results in a split's metrics
FAILED = "error"  # the key of a metric's entry when it failed on a split's outputs


@dataclass(frozen=True)
class ExtraMetric:
    """One loaded metric, the inputs it takes and the options it is computed with for this task."""

    given_as: str  # as extra_metrics named it
    module: Any  # evaluate.EvaluationModule
    inputs: tuple[str, ...]
    options: dict

    @property
    def name(self) -> str:
        return self.module.name


def load_extra_metrics(names: Sequence[str], task: Task) -> tuple[ExtraMetric, ...]:
    """Load each metric and try it on a made-up batch of ``task``'s shape; raise ConfigError naming the first that
    cannot load or does not fit."""
    if not names:
        return ()
    metrics = tuple(_loaded(name, task) for name in names)
    probabilities, references = _made_up_batch(task)
    for metric in metrics:
        try:
            _compute(metric, task, probabilities, references)
        except Exception as err:
            raise ConfigError(f"extra_metrics: {metric.given_as} does not fit this task ({_described(task)}): "
                              f"{_one_line(err)}") from None
    seen = [metric.name for metric in metrics]
    if len(set(seen)) < len(seen):
        raise ConfigError(f"extra_metrics={','.join(names)}: two of them are both called "
                          f"{next(name for name in seen if seen.count(name) > 1)!r}; give one of each")
    return metrics


def compute_extra_metrics(metrics: Sequence[ExtraMetric], task: Task, probabilities: np.ndarray,
                          references: np.ndarray) -> dict[str, dict]:
    """Each metric's results on a split, as plain JSON values. A metric that fails on these outputs (a label absent
    from the split, say) records its error instead of ending a finished run."""
    results = {}
    for metric in metrics:
        try:
            results[metric.name] = _plain(_compute(metric, task, probabilities, references))
        except Exception as err:
            results[metric.name] = {FAILED: _one_line(err)}
    return results


def extra_scalars(results: dict[str, dict]) -> dict[str, int | float]:
    """The one-number results, named ``metric`` (a result named as its metric) or ``metric/result``."""
    return {(metric if key == metric else f"{metric}/{key}"): value
            for metric, values in results.items() for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def _loaded(name: str, task: Task) -> ExtraMetric:
    import evaluate

    evaluate.logging.set_verbosity_error()  # its cache notices would bury the one line a refusal prints
    looks_local = name.endswith(".py") or name.startswith((os.sep, ".")) or Path(name).exists()  # not user/metric
    if looks_local and not Path(name).exists():
        raise ConfigError(f"extra_metrics: {name} does not exist (a local metric is a .py file, or a folder "
                          "holding FOLDER.py)")
    try:  # in memory: every rank computes the metric, and on disk they would share one cache file
        module = evaluate.load(name, config_name=_config_name(task), keep_in_memory=True)
    except Exception as err:
        offline = " (HF_HUB_OFFLINE is set: a Hub metric must already be cached)" if _offline() and not looks_local \
            else ""
        raise ConfigError(f"extra_metrics: {name} cannot be loaded{offline}: {_one_line(err)}") from None
    if not isinstance(module, evaluate.Metric):
        raise ConfigError(f"extra_metrics: {name} is an evaluate {type(module).__name__}, not a Metric")
    return ExtraMetric(name, module, _inputs_taken(name, module), _options(module, task))


def _config_name(task: Task) -> str | None:
    if task.problem_type == MULTI_LABEL:
        return "multilabel"
    return "multiclass" if len(task.labels) > 2 else None


def _inputs_taken(name: str, module) -> tuple[str, ...]:
    """The first of the metric's input formats made only of INPUTS."""
    formats = module.features if isinstance(module.features, list) else [module.features]
    for features in formats:
        if set(features) <= set(INPUTS):
            return tuple(features)
    wanted = " or ".join(", ".join(features) for features in formats)
    raise ConfigError(f"extra_metrics: {name} takes {wanted}; a classifier's metric is given "
                      f"{', '.join(INPUTS)}")


def _options(module, task: Task) -> dict:
    """Settings for more than two labels, where the metric's ``_compute`` has them (module docstring)."""
    takes = inspect.signature(module._compute).parameters
    options = {}
    if task.problem_type == MULTI_LABEL or len(task.labels) > 2:
        if "average" in takes:
            options["average"] = "macro"
        if task.problem_type != MULTI_LABEL and "multi_class" in takes:
            options["multi_class"] = "ovr"
        if task.problem_type != MULTI_LABEL and "labels" in takes:
            options["labels"] = list(range(len(task.labels)))  # every label, present in the split or not
    return options


def _compute(metric: ExtraMetric, task: Task, probabilities: np.ndarray, references: np.ndarray) -> dict:
    given = _inputs(task, np.asarray(probabilities), np.asarray(references))
    return metric.module.compute(**{name: given[name] for name in metric.inputs}, **metric.options)


def _inputs(task: Task, probabilities: np.ndarray, references: np.ndarray) -> dict[str, np.ndarray]:
    if task.problem_type == MULTI_LABEL:
        given = task.given(probabilities).astype(np.int64)
        return {"predictions": given, "references": references.astype(np.int64).reshape(given.shape),
                "prediction_scores": probabilities}
    scores = probabilities[:, 1] if probabilities.shape[1] == 2 else probabilities
    return {"predictions": probabilities.argmax(axis=1), "references": references.astype(np.int64),
            "prediction_scores": scores}


def _made_up_batch(task: Task) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and references of the task's shape in which every label is present (and, for multi-label,
    absent too), as a metric like roc_auc needs of each label."""
    count = len(task.labels)
    rng = np.random.default_rng(0)
    if task.problem_type == MULTI_LABEL:
        references = np.vstack([np.eye(count), 1 - np.eye(count)]).astype(np.int64)
        return rng.uniform(size=references.shape), references
    logits = rng.normal(size=(2 * count, count))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probabilities, np.tile(np.arange(count), 2)


def _plain(value: Any) -> Any:
    """A metric's result as JSON values: numpy numbers and arrays become Python's; NaN and infinities None."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _described(task: Task) -> str:
    kind = "multi-label" if task.problem_type == MULTI_LABEL else "one label per text"
    return f"{kind}, {len(task.labels)} labels"


def _one_line(err: BaseException, longest: int = 300) -> str:
    """The error on one line, cut short: evaluate's own messages can quote every input."""
    text = " ".join(str(err).split()) or type(err).__name__
    text = text if len(text) <= longest else text[:longest] + " ..."
    return f"{type(err).__name__}: {text}" if not isinstance(err, ConfigError) else text


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
