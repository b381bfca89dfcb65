"""Per-parameter learning rate and weight decay: which AdamW group each parameter of a classifier joins.

Works for any ``AutoModelForSequenceClassification``: the pretrained body is what sits under the model's
``base_model_prefix`` (``distilbert``, ``bert``, ``roberta``, ...), the task head is everything else, plus
a pooler (BERT-style models keep the head's first layer, ``pooler``, inside the base model; in a sentence
encoder such as all-MiniLM-L6-v2, trained with mean pooling, it was never trained for this). The head
starts from random or unrelated weights, so it may take a higher rate (``head_learning_rate``); with
``layer_lr_decay`` < 1 the lower encoder layers, which hold the most general features, move less than the
top ones (layer-wise decay, as in ULMFiT and ELECTRA).
"""

from __future__ import annotations

import re
from typing import Iterator

import torch

from .config import TrainConfig

# "...layer.3.", "...layers.3.", "...h.3.", "...block.3." : the index of a transformer block in its stack.
_LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")


def _layer_index(name: str) -> int | None:
    match = _LAYER_INDEX.search(name)
    return int(match.group(1)) if match else None


def _no_decay(model: torch.nn.Module) -> set[int]:
    """Biases and normalisation weights: weight decay on them only hurts."""
    ids = set()
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm) or "norm" in type(module).__name__.lower():
            ids.update(id(p) for p in module.parameters(recurse=False))
    for name, parameter in model.named_parameters():
        if name.endswith("bias"):
            ids.add(id(parameter))
    return ids


def parameter_settings(model: torch.nn.Module, config: TrainConfig
                       ) -> Iterator[tuple[str, torch.nn.Parameter, float, float]]:
    """``(name, parameter, learning_rate, weight_decay)`` for every trainable parameter."""
    no_decay = _no_decay(model)
    prefix = getattr(model, "base_model_prefix", "") or ""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    in_body = {name: bool(prefix) and name.startswith(prefix + ".") and ".pooler." not in name for name, _ in named}
    indices = [index for name, _ in named if in_body[name] and (index := _layer_index(name)) is not None]
    depth = max(indices) + 1 if indices else 0
    for name, parameter in named:
        if not in_body[name]:
            learning_rate = config.head_learning_rate or config.learning_rate
        else:
            index = _layer_index(name)
            # Embeddings sit below layer 0; anything else in the body sits on top with the last layer.
            if index is None:
                index = -1 if "embed" in name else depth - 1
            learning_rate = config.learning_rate * config.layer_lr_decay ** (depth - 1 - index)
        yield name, parameter, learning_rate, 0.0 if id(parameter) in no_decay else config.weight_decay


def build_optimizer(model: torch.nn.Module, config: TrainConfig, fused: bool) -> torch.optim.Optimizer:
    """AdamW with one group per (learning rate, weight decay) that ``parameter_settings`` gives."""
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, parameter, learning_rate, weight_decay in parameter_settings(model, config):
        groups.setdefault((learning_rate, weight_decay), []).append(parameter)
    # Fused AdamW: one kernel per step instead of a dozen per tensor group, and it can skip a step on the
    # device (distrinews/training/stability.py). The scheduler scales every group's own peak rate.
    return torch.optim.AdamW([{"params": params, "lr": lr, "weight_decay": decay}
                              for (lr, decay), params in groups.items()], lr=config.learning_rate,
                             fused=fused or None)


def should_compile(config: TrainConfig, device: torch.device) -> bool:
    # On a GPU compilation pays back in the first minute; on a few CPU cores it costs more than it saves.
    return config.torch_compile == "true" or (config.torch_compile == "auto" and device.type == "cuda")
