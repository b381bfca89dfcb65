"""Dropout on the CPU with masks from 16-bit random numbers instead of one Bernoulli draw per element.

torch's CPU dropout draws every element's mask bit separately from the Mersenne-Twister generator. On this
project's 2-core benchmark CPU that costs a quarter of a bf16 MiniLM-L6 training step (``bench_train.py --preset
cpu``: 48.0 samples/s with torch's masks, 63.8 with these; a one-off profile put the draws at 230 of 838 ms). Here each 64-bit draw from the same generator gives four
16-bit numbers, and an element is dropped when its number falls below ``round(p * 65536)``:

- the drop rate is ``p`` to within 1/65536 (0.1 becomes 0.100006), and the kept elements are scaled by the
  exact inverse of the real keep rate, so every activation keeps its expected value;
- the masks come from torch's default CPU generator, so ``set_seed`` and the RNG state saved in checkpoints
  decide them exactly as they decided torch's own masks, and a resumed run repeats them;
- on any other device, in eval mode, and for ``p`` 0 or 1 the module is ``nn.Dropout`` unchanged.

The attention probabilities are dropped inside transformers' attention function, not by a module, so
:func:`use_cpu_dropout` also registers an attention function that is ``sdpa`` except for that mask.
``distrinews.train`` applies it on the CPU only (``cpu_dropout_masks``); GPUs draw their masks fast already.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

_CHUNKS = 65536  # values of one 16-bit number
_WORD = 2**63
ATTENTION_NAME = "distrinews_cpu_dropout_sdpa"  # registered with transformers' attention functions


def keep_mask(shape: torch.Size, p: float) -> tuple[torch.Tensor, float]:
    """A boolean keep-mask of ``shape`` with drop rate ``p`` (to 1/65536), and the scale for kept elements."""
    numel = math.prod(shape)
    dropped_values = round(p * _CHUNKS)
    # random_(from, to) over the whole int64 range: every 16-bit quarter of a word is uniform (random_()
    # without bounds stops at 2**63 - 1 and would leave the top quarter's sign bit always clear).
    words = torch.empty((numel + 3) // 4, dtype=torch.int64).random_(-_WORD, _WORD - 1)
    quarters = words.view(torch.int16)[:numel].view(shape)
    return quarters >= dropped_values - _CHUNKS // 2, _CHUNKS / (_CHUNKS - dropped_values)


class CPUDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU training masks come from :func:`keep_mask`; same ``p``, same state dict."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and input.device.type == "cpu" and input.is_floating_point() and _representable(self.p)):
            return super().forward(input)
        return _drop(input, self.p)


def _drop(x: torch.Tensor, p: float) -> torch.Tensor:
    keep, scale = keep_mask(x.shape, p)
    return torch.where(keep, x, 0) * scale


def _representable(p: float) -> bool:
    """Whether 16-bit numbers express ``p`` (0 and 1 exactly, and rates within 1/131072 of them, do not)."""
    return 0 < round(p * _CHUNKS) < _CHUNKS


def _attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
               is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa`` attention, with the probabilities' dropout masks from :func:`keep_mask` on the CPU.

    Only a training call with dropout, on the CPU, without grouped keys/values or extra inputs (position bias,
    soft-capping, ...) takes the explicit path: the reference computation of
    ``torch.nn.functional.scaled_dot_product_attention`` (scaled scores, boolean or additive mask, causal mask,
    softmax, dropout, times values). Every other call is the ``sdpa`` implementation itself.
    """
    plain = (kwargs.get("position_bias") is None and kwargs.get("softcap") is None
             and getattr(module, "num_key_value_groups", 1) == 1)
    if not (module.training and query.device.type == "cpu" and plain and _representable(dropout)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    q_length, kv_length = query.shape[2], key.shape[2]
    # transformers' sdpa rule: causal only without a mask, for a causal module, over more than one query.
    is_causal = q_length > 1 and attention_mask is None and (
        is_causal if is_causal is not None else getattr(module, "is_causal", True))
    scores = torch.matmul(query, key.transpose(-1, -2)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    # The dtype's lowest value rather than -inf, as transformers' eager attention does: a query that may see
    # no key at all (a padding row) gets finite weights instead of NaN; its output is discarded anyway.
    masked = torch.finfo(scores.dtype).min
    if is_causal:
        allowed = torch.ones(q_length, kv_length, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~allowed, masked)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, masked)
        else:
            scores = scores + attention_mask
    probabilities = _drop(torch.softmax(scores, dim=-1), dropout)
    output = torch.matmul(probabilities, value)
    return output.transpose(1, 2).contiguous(), None


def use_cpu_dropout(model: nn.Module) -> str:
    """Give ``model`` this module's dropout masks in place, for training on the CPU; returns what changed.

    - Every plain ``nn.Dropout`` becomes a :class:`CPUDropout` (a class swap: parameters, buffers and ``p`` stay).
      Subclasses of ``nn.Dropout`` are left alone: they may change what dropout means.
    - A transformers model on ``sdpa`` attention gets the same attention with cheap masks for its attention
      probabilities (:func:`_attention`). The setting is not saved with the model: ``save_pretrained`` writes
      the same config either way, and evaluation calls are the ``sdpa`` implementation itself.
    """
    swapped = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = CPUDropout
            swapped += 1
    changed = [f"{swapped} dropout module(s)"] if swapped else []
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) == "sdpa" and model._can_set_attn_implementation():
        AttentionInterface.register(ATTENTION_NAME, _attention)
        AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)  # the masks sdpa gets
        model.set_attn_implementation(ATTENTION_NAME)
        changed.append("attention probabilities")
    return ", ".join(changed) or "nothing"
