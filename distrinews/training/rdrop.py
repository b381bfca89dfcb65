"""R-Drop (Liang et al., 2021, "R-Drop: Regularized Dropout for Neural Networks"), as a training loss.

Each batch runs through the model twice, as one batch of twice the size, so the two copies of every example get
different dropout masks. The loss is the task's loss over both copies plus ``weight`` times the symmetric KL
divergence between the two predictions (``task.divergence``: of the softmax distributions, or for multi-label of
each label's Bernoulli): the model is trained to predict the same thing whichever units dropout removed. It needs
only the logits, so any sequence classifier takes it. A training step costs about twice as much; evaluation is
unchanged.
"""

from __future__ import annotations

import torch


def rdrop_loss(model: torch.nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor, weight: float, task,
               class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The task's loss over two dropout passes of ``inputs`` + ``weight`` x their symmetric divergence."""
    # One forward over the batch stacked on itself: one launch per layer instead of two.
    logits = model(**{key: torch.cat([value, value]) for key, value in inputs.items()}).logits
    first, second = logits.chunk(2)
    return task.loss(logits, torch.cat([labels, labels]), class_weights) + weight * task.divergence(first, second)
