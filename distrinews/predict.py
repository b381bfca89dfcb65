"""The one prediction path: texts in, label + every class probability out.

Used by ``distrinews predict``, the notebook and the Space. Texts are tokenized once, sorted by length and
cut into batches whose padding stays small, and the original order is restored before returning. The model itself is
any ``ProbabilityFn`` (a padded batch of token ids in, class probabilities out): the torch model here, or the
ONNX Runtime session of ``distrinews.backends``; both go through ``predict_with`` so they cannot drift apart.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

# A padded batch ({"input_ids", "attention_mask"} as int64 arrays of shape (rows, length)) -> (rows, classes).
ProbabilityFn = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass
class Prediction:
    label: str
    score: float
    probabilities: dict[str, float]
    truncated: bool  # the text was longer than the model's maximum and only its start was read

    def to_dict(self) -> dict:
        return {"label": self.label, "score": self.score, "probabilities": self.probabilities,
                "truncated": self.truncated}


def model_max_length(model, tokenizer) -> int:
    candidates = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    # Tokenizers without a limit report a huge sentinel (int(1e30)); ignore it.
    return min((c for c in candidates if isinstance(c, int) and 0 < c < 100_000), default=512)


def label_names(model) -> list[str]:
    return [model.config.id2label[i] for i in range(model.config.num_labels)]


# tokenizer -> {max_length: its Rust encoder, copied, with truncation set}; weak so a dropped tokenizer is freed
_TRUNCATING_ENCODERS: "weakref.WeakKeyDictionary[Any, dict[int, Any]]" = weakref.WeakKeyDictionary()


def _truncating_encoder(tokenizer, max_length: int):
    """A fast tokenizer's own Rust encoder, copied once per ``max_length`` with truncation switched on, or None.

    Calling the transformers tokenizer re-applies its truncation settings and wraps the result in a
    ``BatchEncoding`` on every call: for one headline that took 0.8 ms after an idle spell against 0.5 ms for the
    encoder alone, here. The copy leaves the caller's tokenizer untouched."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    per_length = _TRUNCATING_ENCODERS.setdefault(tokenizer, {})
    if max_length not in per_length:
        encoder = copy.deepcopy(backend)
        encoder.no_padding()
        encoder.enable_truncation(max_length, strategy="longest_first",
                                  direction=getattr(tokenizer, "truncation_side", "right"))
        per_length[max_length] = encoder
    return per_length[max_length]


def encode_texts(tokenizer, texts: Sequence[str], max_length: int) -> tuple[list[list[int]], list[bool]]:
    """Token ids cut to ``max_length`` (special tokens kept), and whether each text had to be cut: the same ids
    as ``tokenizer(texts, truncation=True, max_length=max_length)``."""
    encoder = _truncating_encoder(tokenizer, max_length)
    if encoder is not None:  # fast tokenizers report what truncation cut off: one pass, no re-tokenizing
        encodings = encoder.encode_batch(list(texts), add_special_tokens=True)
        return [encoding.ids for encoding in encodings], [bool(encoding.overflowing) for encoding in encodings]
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)
    full = tokenizer(list(texts), truncation=False, add_special_tokens=True)["input_ids"]
    return encoded["input_ids"], [len(ids) > max_length for ids in full]


def pad_batch(token_ids: Sequence[Sequence[int]], pad_id: int, multiple_of: int = 8) -> dict[str, np.ndarray]:
    """Right-pad to the longest row (rounded up to ``multiple_of``) with the matching attention mask."""
    longest = max(len(ids) for ids in token_ids)
    width = -(-longest // multiple_of) * multiple_of
    input_ids = np.full((len(token_ids), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(token_ids), width), dtype=np.int64)
    for row, ids in enumerate(token_ids):
        input_ids[row, :len(ids)] = ids
        attention_mask[row, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def length_sorted_chunks(lengths: Sequence[int], max_rows: int, max_padding: float = 0.25) -> list[list[int]]:
    """Indices sorted by length, cut into batches of at most ``max_rows`` whose padding stays under
    ``max_padding`` of their real tokens. On a CPU every padded token costs as much as a real one, so a batch
    padded to its longest text is slower per text than single texts (../shared/docs/BASELINES.md)."""
    chunks: list[list[int]] = []
    chunk: list[int] = []
    real_tokens = 0
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        length = lengths[index]
        # Sorted ascending, so adding this text pads every row of the chunk to its length.
        if chunk and (len(chunk) == max_rows or (len(chunk) + 1) * length > (1 + max_padding) * (real_tokens + length)):
            chunks.append(chunk)
            chunk, real_tokens = [], 0
        chunk.append(index)
        real_tokens += length
    if chunk:
        chunks.append(chunk)
    return chunks


def predict_with(probabilities_of: ProbabilityFn, tokenizer, labels: Sequence[str], texts: Sequence[str], *,
                 max_length: int, batch_size: int = 64, pad_to_multiple_of: int = 8) -> list[Prediction]:
    """Classify ``texts`` with any ``ProbabilityFn``: length-sorted batches, results in the input order.

    ``pad_to_multiple_of`` 8 suits GPU tensor cores; on a CPU every padded token is wasted work, so serving
    there uses 1."""
    if isinstance(texts, str):
        raise TypeError("predict takes a sequence of texts, not one string")
    if not texts:
        return []
    token_ids, truncated = encode_texts(tokenizer, texts, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results: list[Prediction | None] = [None] * len(texts)
    for chunk in length_sorted_chunks([len(ids) for ids in token_ids], batch_size):
        probabilities = probabilities_of(pad_batch([token_ids[i] for i in chunk], pad_id, pad_to_multiple_of))
        for row, index in zip(probabilities.tolist(), chunk):
            best = max(range(len(row)), key=row.__getitem__)
            results[index] = Prediction(label=labels[best], score=row[best],
                                        probabilities=dict(zip(labels, row)), truncated=truncated[index])
    return results


def torch_probabilities(model) -> ProbabilityFn:
    """A ``ProbabilityFn`` running a torch model (put in eval mode by the caller) on its own device."""
    device = next(model.parameters()).device

    @torch.inference_mode()
    def probabilities_of(batch: dict[str, np.ndarray]) -> np.ndarray:
        inputs = {name: torch.from_numpy(array).to(device) for name, array in batch.items()}
        return model(**inputs).logits.float().softmax(dim=-1).cpu().numpy()

    return probabilities_of


def predict_texts(model, tokenizer, texts: Sequence[str], *, max_length: int | None = None,
                  batch_size: int = 64) -> list[Prediction]:
    was_training = model.training
    model.eval()
    try:
        return predict_with(torch_probabilities(model), tokenizer, label_names(model), texts,
                            max_length=max_length or model_max_length(model, tokenizer), batch_size=batch_size)
    finally:
        model.train(was_training)
