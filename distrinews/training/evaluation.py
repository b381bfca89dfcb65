"""Evaluation over a data loader, in one process or many.

``collect_outputs`` runs the model over every batch and gathers the logits and labels; ``score_outputs`` turns
them into a split's metrics with the task (``distrinews.core.tasks``): the task's metrics plus the loss the run
trains on. Keeping the two apart lets the run choose a multi-label threshold on the validation outputs and score
them again without a second pass. The distributed part is a ``gather`` function passed in
(``accelerator.gather_for_metrics`` in the training loop, identity in ``distrinews evaluate``), so this module
needs no process group to test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..core.errors import EvaluationCountError
from ..core.tasks import Task


@dataclass
class SplitOutputs:
    logits: np.ndarray  # (windows, labels)
    references: np.ndarray  # one per text: label indices, or 0/1 rows for multi-label
    text_index: np.ndarray | None = None  # (windows,) the text of each window; None: one window per text

    def text_probabilities(self, task: Task) -> np.ndarray:
        """(texts, labels): the task's probabilities of each text."""
        return task.probabilities(self.logits)


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


def score_outputs(task: Task, outputs: SplitOutputs, class_weights: torch.Tensor | None = None) -> dict:
    """The task's metrics of a split, plus ``loss``: the training loss (class weights included) over it."""
    metrics = task.metrics(task.probabilities(outputs.logits), outputs.references)
    weights = None if class_weights is None else class_weights.cpu()
    loss = task.loss(torch.from_numpy(outputs.logits), torch.from_numpy(outputs.references), weights)
    return {**metrics, "loss": float(loss)}


def evaluate_split(model, dataloader, task: Task, *, expected_count: int, gather: Callable = lambda tensors: tensors,
                   device: torch.device | None = None, class_weights: torch.Tensor | None = None) -> dict:
    """``score_outputs`` of ``collect_outputs``: a split's metrics in one call."""
    outputs = collect_outputs(model, dataloader, expected_count=expected_count, gather=gather, device=device)
    return score_outputs(task, outputs, class_weights)


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The metrics that are one number (what log.jsonl and the trackers get for each evaluation)."""
    return {name: value for name, value in metrics.items()
            if isinstance(value, float) and name != "threshold"}
