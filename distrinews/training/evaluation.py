"""Evaluation: one path for the training loop and ``distrinews evaluate``, reading a text as the Space reads it.

A split is evaluated as windows (``data.tokenize_windows``: the predict path's cleaning and windows, up to the
serving default per text) in batches sorted by length (``loaders.evaluation_loader``). ``collect_outputs`` runs the
model over every batch and gathers each window's logits with its row, which puts them back in text order;
``SplitOutputs.text_probabilities`` combines each text's windows exactly as the Space does
(``distrinews.core.predict.text_scores``); ``score_outputs`` turns them into the split's metrics with the task
(``distrinews.core.tasks``), plus the loss the run trains on, the most-confused label pairs
(``mistakes.py``) and any ``extra_metrics`` (``extra_metrics.py``). Keeping the two apart lets the run choose a
multi-label threshold on the validation outputs and score them again without a second pass. The distributed part is
a ``gather`` function passed in (``accelerator.gather_for_metrics`` in the training loop, identity in
``distrinews evaluate``, ``evaluate_saved_model``), so this module needs no process group to test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..core.calibration import trust_report
from ..core.errors import DataError, EvaluationCountError
from ..core.predict import model_task, text_scores
from ..core.tasks import Task
from ..core.windows import DEFAULT_MAX_WINDOWS, WindowPolicy
from .config import TrainConfig
from .data import DataOptions, checked_max_length, load_labelled_data, tokenize_windows
from .loaders import evaluation_loader
from .extra_metrics import EXTRA_METRICS, ExtraMetric, compute_extra_metrics
from .mistakes import most_confused_pairs


@dataclass
class SplitOutputs:
    logits: np.ndarray  # (windows, labels): every window of every text, float32 as the model gave them
    references: np.ndarray  # one row per text: label index, or 0/1 row for multi-label
    text_index: np.ndarray | None = None  # (windows,) the text of each window, ascending; None: one window per text

    def text_probabilities(self, task: Task) -> np.ndarray:
        """(texts, labels): the task's probabilities of each window, combined per text exactly as the Space
        combines them (``text_scores``, which ``prediction_from_windows`` calls)."""
        # The task's scores are computed row by row, so scoring every window at once gives each row exactly
        # what text_scores gives it, and a text of one window is its window's row (its mean or max is itself);
        # only texts of several windows need combining, which keeps refits over many temperatures cheap.
        probabilities = task.probabilities(self.logits)
        if self.text_index is None:
            return probabilities
        starts = text_starts(self.text_index)
        ends = np.r_[starts[1:], len(self.logits)]
        combined = probabilities[starts]
        for text in np.flatnonzero(ends - starts > 1):
            combined[text] = text_scores(task, self.logits[starts[text]:ends[text]])
        return combined

    def window_references(self) -> np.ndarray:
        """Each window's label: its text's."""
        return self.references if self.text_index is None else self.references[self.text_index]


def text_starts(text_index: np.ndarray) -> np.ndarray:
    """Where each text's windows begin in ``text_index`` (ascending)."""
    text_index = np.asarray(text_index)
    return np.flatnonzero(np.r_[True, text_index[1:] != text_index[:-1]])


@torch.inference_mode()
def collect_outputs(model, dataloader, windows, *, gather: Callable = lambda tensors: tensors,
                    device: torch.device | None = None) -> SplitOutputs:
    """Every window's logits (after gathering) in text order, checked to count each window of ``windows`` (the
    split's ``tokenize_windows`` rows, in their order) once; the references are the texts' labels."""
    was_training = model.training
    model.eval()
    logits, rows = [], []
    for batch in dataloader:
        if device is not None:
            batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        batch_logits, batch_rows = gather((model(**{k: v for k, v in batch.items() if k != "row"}).logits.float(),
                                           batch["row"]))
        logits.append(batch_logits.cpu())
        rows.append(batch_rows.cpu())
    model.train(was_training)
    return _in_text_order(torch.cat(logits).numpy(), torch.cat(rows).numpy(), windows)


def _in_text_order(logits: np.ndarray, rows: np.ndarray, windows) -> SplitOutputs:
    order = np.argsort(rows, kind="stable")
    if not np.array_equal(rows[order], np.arange(len(windows))):
        raise EvaluationCountError(f"evaluated {len(rows)} windows ({len(np.unique(rows))} distinct), expected each "
                                   f"of {len(windows)} exactly once: some were dropped or counted twice")
    text_index = np.asarray(windows["text_index"], dtype=np.int64)
    labels = np.asarray(windows["labels"], dtype=np.int64)
    return SplitOutputs(logits[order], labels[text_starts(text_index)], text_index)


def score_outputs(task: Task, outputs: SplitOutputs, class_weights: torch.Tensor | None = None,
                  extra_metrics: Sequence[ExtraMetric] = ()) -> dict:
    """The task's metrics of a split, on each text's probabilities (``text_probabilities``), plus ``loss``: the
    training loss (class weights included) over every window, each carrying its text's label, as
    train_windows=all trains on them; the most-confused label pairs and the ``extra_metrics``
    (training/extra_metrics.py), if any."""
    probabilities = outputs.text_probabilities(task)
    metrics = task.metrics(probabilities, outputs.references)
    weights = None if class_weights is None else class_weights.cpu()
    loss = task.loss(torch.from_numpy(outputs.logits), torch.from_numpy(outputs.window_references()), weights)
    return {**metrics, "loss": float(loss), **further_metrics(task, probabilities, outputs.references, extra_metrics)}


def further_metrics(task: Task, probabilities: np.ndarray, references: np.ndarray,
                    extra_metrics: Sequence[ExtraMetric] = ()) -> dict:
    """What a split's entry in metrics.json holds beyond the task's metrics: ``most_confused`` (training/mistakes.py)
    and, when asked for, ``extra_metrics``."""
    further = {"most_confused": most_confused_pairs(task, probabilities, references)}
    if extra_metrics:
        further[EXTRA_METRICS] = compute_extra_metrics(extra_metrics, task, probabilities, references)
    return further


def evaluate_saved_model(model, tokenizer, config: TrainConfig, split: str,
                         max_windows: int = DEFAULT_MAX_WINDOWS, warn: Callable[[str], None] = print,
                         min_confidence: float | None = None, extra_metrics: Sequence[ExtraMetric] = ()) -> dict:
    """``distrinews evaluate``: ``split`` of the data ``config`` describes, with the model's own labels, problem
    type, thresholds and confidence floor (``min_confidence`` replaces the floor; 0 = none), read and scored as the
    training run's evaluation does (the same windows, batches and scoring; no class weights in the loss), with the
    same calibration and risk-coverage report as metrics.json."""
    task = model_task(model)
    if min_confidence is not None:
        task = task.with_floor(min_confidence)
    rows = labelled_split(config, split, task)
    max_length = checked_max_length(config.max_length, model, tokenizer, config.model_name_or_path, warn=warn)
    windows = tokenize_windows(rows, tokenizer, WindowPolicy(max_length, max_windows=max_windows))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    loader = evaluation_loader(windows, tokenizer.pad_token_id, config, device)
    outputs = collect_outputs(model, loader, windows, device=device)
    return {**score_outputs(task, outputs, extra_metrics=extra_metrics),
            **trust_report(task, outputs.text_probabilities(task), outputs.references)}


def labelled_split(config: TrainConfig, split: str, task: Task):
    """``split`` of the data ``config`` describes, read with ``task``'s labels (``distrinews evaluate``'s flags)."""
    splits = load_labelled_data(DataOptions.from_config(config), labels=task.labels).splits
    if split not in splits:
        raise DataError(f"{config.dataset} has no {split} split with --validation_fraction "
                        f"{config.validation_fraction:g} (it has: {', '.join(splits)})")
    return splits[split]


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The metrics that are one number (what log.jsonl and the trackers get for each evaluation)."""
    return {name: value for name, value in metrics.items()
            if isinstance(value, float) and name != "threshold"}
