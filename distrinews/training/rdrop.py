"""R-Drop (Liang et al., 2021, "R-Drop: Regularized Dropout for Neural Networks"), as a training loss.

Each batch runs through the model twice, as one batch of twice the size, so the two copies of every example get
different dropout masks. The loss is the cross-entropy over both copies plus ``weight`` times the symmetric KL
divergence between the two predicted distributions: the model is trained to predict the same thing whichever
units dropout removed. It needs only the logits, so any sequence classifier takes it. A training step costs
about twice as much; evaluation is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rdrop_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], weight: float) -> torch.Tensor:
    """Cross-entropy over two dropout passes of ``batch`` + ``weight`` x their symmetric KL divergence."""
    # One forward over the batch stacked on itself: one launch per layer instead of two, and the model's own
    # loss (labels doubled too) is the mean cross-entropy of both passes.
    output = model(**{key: torch.cat([value, value]) for key, value in batch.items()})
    first, second = output.logits.float().log_softmax(dim=-1).chunk(2)
    symmetric_kl = 0.5 * (F.kl_div(first, second, log_target=True, reduction="batchmean")
                          + F.kl_div(second, first, log_target=True, reduction="batchmean"))
    return output.loss + weight * symmetric_kl
