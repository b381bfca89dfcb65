"""Serving shortcut: the encoder's last layer computes only the position the classification head reads.

Encoder classifiers (BERT, DistilBERT, RoBERTa, ELECTRA and their kin) read one position of the last layer, the
first ([CLS] / <s>). That layer still computes every position, and all but one are thrown away: their query
projection, attention output projection, feed-forward block and LayerNorms, 10 of the layer's 12 d x d matmuls per
token, about 14% of a 6-layer model's work. ``read_first_position_only`` replaces the last layer with one that
computes position 0 alone; keys and values still come from every position, so the result is the same math on fewer
rows. It reuses the layer's own submodules and is checked before it is kept: the rewritten model must reproduce
the original logits on a padded probe batch, or the original layer is put back. Layers it does not recognise are
left alone, so any ``AutoModelForSequenceClassification`` still serves, just without the shortcut.

Serving only: the rewritten model returns a last hidden state of length 1, which training and feature extraction
must not see.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

PROBE_TOLERANCE = 1e-4  # largest logit difference accepted between the rewritten and the original model


def _split_heads(states: torch.Tensor, head_size: int) -> torch.Tensor:
    batch, length, _ = states.shape
    return states.view(batch, length, -1, head_size).transpose(1, 2)


def _first_position_attention(query: nn.Module, key: nn.Module, value: nn.Module, head_size: int, scaling: float,
                              hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of position 0 over every position, as (batch, 1, hidden), with the layer's own projections."""
    scores = torch.matmul(_split_heads(query(hidden_states[:, :1]), head_size),
                          _split_heads(key(hidden_states), head_size).transpose(-1, -2)) * scaling
    if attention_mask is not None:
        if attention_mask.dim() == 4 and attention_mask.shape[-2] != 1:
            attention_mask = attention_mask[:, :, :1]  # the mask rows of the other queries are not needed
        # transformers builds a bool "attend here" mask for SDPA and an additive float one for eager attention.
        scores = (scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
                  if attention_mask.dtype == torch.bool else scores + attention_mask)
    # Plain matmul + softmax rather than SDPA: one query row is cheap either way, and SDPA's ONNX export adds
    # NaN guards and mask conversions.
    context = torch.matmul(scores.softmax(dim=-1), _split_heads(value(hidden_states), head_size))
    batch, heads, _, _ = context.shape
    return context.transpose(1, 2).reshape(batch, 1, heads * head_size)


class _FirstPositionBertLayer(nn.Module):
    """``BertLayer`` (and its copies: RoBERTa, ELECTRA, XLM-R, ...) for position 0 only."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        attention = self.layer.attention.self
        context = _first_position_attention(attention.query, attention.key, attention.value,
                                            attention.attention_head_size, attention.scaling, hidden_states,
                                            attention_mask)
        attention_output = self.layer.attention.output(context, hidden_states[:, :1])
        return self.layer.feed_forward_chunk(attention_output)


class _FirstPositionDistilBertLayer(nn.Module):
    """DistilBERT's ``TransformerBlock`` for position 0 only."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        attention = self.layer.attention
        context = _first_position_attention(attention.q_lin, attention.k_lin, attention.v_lin,
                                            attention.attention_head_size, attention.scaling, hidden_states,
                                            attention_mask)
        attended = self.layer.sa_layer_norm(attention.out_lin(context) + hidden_states[:, :1])
        return self.layer.output_layer_norm(self.layer.ffn(attended) + attended)


def _attribute(module: nn.Module, path: str):
    """``module.a.b.c`` for the path ``"a.b.c"``, or None where a link is missing."""
    for name in path.split("."):
        module = getattr(module, name, None)
    return module


def _has(module: nn.Module, *paths: str) -> bool:
    return all(_attribute(module, path) is not None for path in paths)


def _first_position_layer_for(layer: nn.Module) -> Callable[[nn.Module], nn.Module] | None:
    if getattr(layer, "is_decoder", False) or hasattr(layer, "crossattention"):
        return None  # causal or cross-attending layers are not encoder classifiers
    if _has(layer, "attention.self.query", "attention.self.key", "attention.self.value", "attention.self.scaling",
            "attention.self.attention_head_size", "attention.output", "feed_forward_chunk"):
        return _FirstPositionBertLayer
    if _has(layer, "attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "attention.scaling",
            "attention.attention_head_size", "sa_layer_norm", "ffn", "output_layer_norm"):
        return _FirstPositionDistilBertLayer
    return None


def _encoder_layers(model: nn.Module) -> nn.ModuleList | None:
    base = getattr(model, "base_model", model)
    for path in ("encoder.layer", "transformer.layer"):  # BERT-style, DistilBERT
        layers = _attribute(base, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    return None


def _probe_batch(model: nn.Module) -> dict[str, torch.Tensor]:
    """Two rows of varied token ids, the second padded, within the model's vocabulary."""
    vocab = int(getattr(model.config, "vocab_size", 100))
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(min(5, vocab - 1), vocab, (2, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@torch.inference_mode()
def read_first_position_only(model: nn.Module) -> bool:
    """Rewrite ``model`` (in eval mode, in place) so its last layer computes position 0 only; True if kept."""
    layers = _encoder_layers(model)
    rewrite = _first_position_layer_for(layers[-1]) if layers is not None else None
    if rewrite is None:
        log.info("%s: last layer not recognised; served without the first-position shortcut",
                 type(model).__name__)
        return False
    model.eval()
    probe = {name: tensor.to(next(model.parameters()).device) for name, tensor in _probe_batch(model).items()}
    original = layers[-1]
    try:
        expected = model(**probe).logits
        layers[-1] = rewrite(original)
        difference = (model(**probe).logits - expected).abs().max().item()
        problem = None if difference <= PROBE_TOLERANCE * max(1.0, expected.abs().max().item()) \
            else f"max logit difference {difference:.2e}"
    except Exception as err:  # noqa: BLE001 - an optional speed-up must never stop a model from serving
        problem = f"{type(err).__name__}: {err}"
    if problem is not None:
        layers[-1] = original
        log.warning("%s: served without the first-position shortcut (%s)", type(model).__name__, problem)
        return False
    return True
