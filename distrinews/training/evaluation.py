"""Evaluation over a data loader, in one process or many.

The distributed part is a ``gather`` function passed in (``accelerator.gather_for_metrics`` in the
training loop, identity in ``distrinews evaluate``), so this module needs no process group to test.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..core.errors import EvaluationCountError
from .metrics import compute_classification_metrics


@torch.inference_mode()
def evaluate_split(model, dataloader, *, expected_count: int, label_names: Sequence[str],
                   gather: Callable = lambda tensors: tensors, device: torch.device | None = None) -> dict:
    """Metrics over every example of ``dataloader`` (after gathering), checked to count each once."""
    was_training = model.training
    model.eval()
    predictions, references = [], []
    for batch in dataloader:
        if device is not None:
            batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        labels = batch.pop("labels")
        logits = model(**batch).logits
        batch_predictions, batch_labels = gather((logits.argmax(dim=-1), labels))
        predictions.append(batch_predictions.cpu())
        references.append(batch_labels.cpu())
    model.train(was_training)
    predictions = torch.cat(predictions).numpy() if predictions else []
    references = torch.cat(references).numpy() if references else []
    if len(references) != expected_count:
        raise EvaluationCountError(f"evaluated {len(references)} examples, expected exactly {expected_count}: "
                                   "some examples were dropped or counted twice")
    return compute_classification_metrics(predictions, references, label_names)
