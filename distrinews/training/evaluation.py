"""Evaluation over a data loader, in one process or many.

``collect_outputs`` runs the model over every batch and gathers the logits and labels; ``score_outputs`` turns
them into a split's metrics with the task (``distrinews.core.tasks``): the task's metrics plus the loss the run
trains on, the most-confused label pairs (``mistakes.py``) and any ``extra_metrics`` (``extra_metrics.py``).
Keeping the two apart lets the run choose a multi-label threshold on the validation outputs and score them again
without a second pass. The distributed part is a ``gather`` function passed in
(``accelerator.gather_for_metrics`` in the training loop, identity in ``distrinews evaluate``), so this module
needs no process group to test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..core.errors import EvaluationCountError
from ..core.tasks import Task
from .extra_metrics import EXTRA_METRICS, ExtraMetric, compute_extra_metrics
from .mistakes import most_confused_pairs


@dataclass
class SplitOutputs:
    logits: np.ndarray  # (examples, labels)
    references: np.ndarray  # label indices, or 0/1 rows for multi-label
    text_index: np.ndarray | None = None  # which text each row of logits belongs to; None: one row per text

    def text_probabilities(self, task: Task) -> np.ndarray:
        """(texts, labels): the task's probabilities of each text."""
        return task.probabilities(self.logits)  # one window per text until windows land


@torch.inference_mode()
def collect_outputs(model, dataloader, *, expected_count: int, gather: Callable = lambda tensors: tensors,
                    device: torch.device | None = None) -> SplitOutputs:
    """Every example's logits and label (after gathering), checked to count each once."""
    was_training = model.training
    model.eval()
    logits, references = [], []
    for batch in dataloader:
        if device is not None:
            batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        labels = batch.pop("labels")
        batch_logits, batch_labels = gather((model(**batch).logits.float(), labels))
        logits.append(batch_logits.cpu())
        references.append(batch_labels.cpu())
    model.train(was_training)
    if sum(len(r) for r in references) != expected_count:
        raise EvaluationCountError(f"evaluated {sum(len(r) for r in references)} examples, expected exactly "
                                   f"{expected_count}: some examples were dropped or counted twice")
    return SplitOutputs(torch.cat(logits).numpy(), torch.cat(references).numpy())


def score_outputs(task: Task, outputs: SplitOutputs, class_weights: torch.Tensor | None = None,
                  extra_metrics: Sequence[ExtraMetric] = ()) -> dict:
    """The task's metrics of a split, plus ``loss``: the training loss (class weights included) over it, the
    most-confused label pairs and the ``extra_metrics`` (training/extra_metrics.py), if any."""
    probabilities = outputs.text_probabilities(task)
    metrics = task.metrics(probabilities, outputs.references)
    weights = None if class_weights is None else class_weights.cpu()
    loss = task.loss(torch.from_numpy(outputs.logits), torch.from_numpy(outputs.references), weights)
    return {**metrics, "loss": float(loss), **further_metrics(task, probabilities, outputs.references, extra_metrics)}


def further_metrics(task: Task, probabilities: np.ndarray, references: np.ndarray,
                    extra_metrics: Sequence[ExtraMetric] = ()) -> dict:
    """What a split's entry in metrics.json holds beyond the task's metrics: ``most_confused`` (training/mistakes.py)
    and, when asked for, ``extra_metrics``."""
    further = {"most_confused": most_confused_pairs(task, probabilities, references)}
    if extra_metrics:
        further[EXTRA_METRICS] = compute_extra_metrics(extra_metrics, task, probabilities, references)
    return further


def evaluate_split(model, dataloader, task: Task, *, expected_count: int, gather: Callable = lambda tensors: tensors,
                   device: torch.device | None = None, class_weights: torch.Tensor | None = None) -> dict:
    """``score_outputs`` of ``collect_outputs``: a split's metrics in one call."""
    outputs = collect_outputs(model, dataloader, expected_count=expected_count, gather=gather, device=device)
    return score_outputs(task, outputs, class_weights)


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The metrics that are one number (what log.jsonl and the trackers get for each evaluation)."""
    return {name: value for name, value in metrics.items()
            if isinstance(value, float) and name != "threshold"}
