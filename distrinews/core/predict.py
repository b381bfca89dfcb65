"""The one prediction path: texts in, the labels the model gives + every label's probability out.

Used by ``distrinews predict``, the notebook and the Space. Texts are cleaned (``distrinews.core.texts``: any string
is accepted, so one odd text cannot fail the others), tokenized once, sorted by length and cut into batches
whose padding stays small, and the original order is restored before returning. The model itself is any
``ProbabilityFn`` (a padded batch of token ids in, label probabilities out): the torch model here, or the ONNX
Runtime session of ``distrinews.serving.backends``; both go through ``predict_with`` so they cannot drift apart.
What the probabilities mean and which labels they give is the model's task (``distrinews.core.tasks``): the most
probable label, or every label at or above the decision threshold (multi-label).
This module imports torch only when a torch model is run: the Space's int8 path never loads it.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .model_files import max_input_length
from .tasks import Task, task_from_config
from .texts import clean_text, each_text

# A padded batch ({"input_ids", "attention_mask"} as int64 arrays of shape (rows, length)) -> (rows, classes).
ProbabilityFn = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass
class Prediction:
    label: str  # the most probable label
    score: float  # its probability
    probabilities: dict[str, float]
    truncated: bool  # the text was longer than the model's maximum and only its start was read
    labels: list[str] = field(default_factory=list)  # the labels given, most probable first (multi-label: any)

    def to_dict(self) -> dict:
        return {"label": self.label, "score": self.score, "labels": self.labels,
                "probabilities": self.probabilities, "truncated": self.truncated}


def model_max_length(model, tokenizer) -> int:
    return max_input_length(getattr(model.config, "max_position_embeddings", None),
                            getattr(tokenizer, "model_max_length", None))


def model_task(model) -> Task:
    """The task a loaded transformers model was trained for (its config's labels, problem type, threshold)."""
    return task_from_config(model.config)


# Longest text, in characters per token read, handed to a tokenizer. A text cut here would have been cut by
# tokenization anyway unless its words average over this many characters, and then they are [UNK] to WordPiece;
# without the cut, a megabyte of one word took 0.6-2 s to tokenize on one core here (and it is flagged truncated).
MAX_CHARS_PER_TOKEN = 32


@dataclass
class Encoder:
    """A fast tokenizer's own Rust encoder with truncation at ``max_length`` switched on, and its padding id.

    Built from a transformers tokenizer (``encoder_for``) or straight from a model's ``tokenizer.json`` (the
    Space, ``Encoder.from_files``): both give the ids of ``tokenizer(texts, truncation=True, max_length=...)``."""

    rust: Any  # tokenizers.Tokenizer
    pad_id: int
    max_length: int

    @classmethod
    def from_rust(cls, rust, pad_id: int, max_length: int, truncation_side: str = "right") -> "Encoder":
        rust = copy.deepcopy(rust)  # the caller's tokenizer keeps its own settings
        rust.no_padding()
        rust.enable_truncation(max_length, strategy="longest_first", direction=truncation_side)
        return cls(rust=rust, pad_id=pad_id, max_length=max_length)

    @classmethod
    def from_files(cls, files, max_length: int) -> "Encoder":
        """From ``distrinews.core.model_files.ServingFiles``: no transformers import."""
        return cls.from_rust(files.tokenizer, files.pad_id, max_length, files.truncation_side)

    def encode(self, texts: Sequence[str]) -> tuple[list[list[int]], list[bool]]:
        """Token ids cut to ``max_length`` (special tokens kept), and whether each text had to be cut: fast
        tokenizers report what truncation cut off, so it is one pass with no re-tokenizing."""
        texts, cut = _bounded(texts, self.max_length)
        encodings = self.rust.encode_batch(texts, add_special_tokens=True)
        return [e.ids for e in encodings], [bool(e.overflowing) or was_cut for e, was_cut in zip(encodings, cut)]


def _bounded(texts: Sequence[str], max_length: int) -> tuple[list[str], list[bool]]:
    limit = max_length * MAX_CHARS_PER_TOKEN
    return [text[:limit] for text in texts], [len(text) > limit for text in texts]


# transformers tokenizer -> {max_length: Encoder}; weak, so a dropped tokenizer is freed
_ENCODERS: "weakref.WeakKeyDictionary[Any, dict[int, Encoder]]" = weakref.WeakKeyDictionary()


def encoder_for(tokenizer, max_length: int) -> Encoder | None:
    """The ``Encoder`` of a transformers fast tokenizer (built once per ``max_length``), or None for a slow one.

    Calling the transformers tokenizer re-applies its truncation settings and wraps the result in a
    ``BatchEncoding`` on every call: for one headline that took 0.8 ms after an idle spell against 0.5 ms for the
    encoder alone, here."""
    if isinstance(tokenizer, Encoder):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    per_length = _ENCODERS.setdefault(tokenizer, {})
    if max_length not in per_length:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        per_length[max_length] = Encoder.from_rust(backend, pad_id, max_length,
                                                   getattr(tokenizer, "truncation_side", "right"))
    return per_length[max_length]


def encode_texts(tokenizer, texts: Sequence[str], max_length: int) -> tuple[list[list[int]], list[bool]]:
    """Token ids cut to ``max_length`` (special tokens kept), and whether each text had to be cut: the same ids
    as ``tokenizer(texts, truncation=True, max_length=max_length)``. ``tokenizer`` is a transformers tokenizer
    or an ``Encoder``."""
    encoder = encoder_for(tokenizer, max_length)
    if encoder is not None:
        return encoder.encode(texts)
    texts, cut = _bounded(texts, max_length)
    encoded = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)
    full = tokenizer(texts, truncation=False, add_special_tokens=True)["input_ids"]
    return encoded["input_ids"], [len(ids) > max_length or was_cut for ids, was_cut in zip(full, cut)]


def cleaned_texts(texts: Sequence[str]) -> list[str]:
    """``clean_text`` of each text; a non-string is refused, naming its position."""
    if isinstance(texts, str):
        raise TypeError("predict takes a sequence of texts, not one string")
    return each_text(clean_text, texts, where="text ")


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
    padded to its longest text can be slower per text than single texts."""
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


def predict_with(probabilities_of: ProbabilityFn, tokenizer, task: Task, texts: Sequence[str], *,
                 max_length: int, batch_size: int = 64, pad_to_multiple_of: int = 8) -> list[Prediction]:
    """Classify ``texts`` with any ``ProbabilityFn``: length-sorted batches, results in the input order; ``task``
    names the labels and decides which a row of probabilities gives.

    Any string is accepted (``distrinews.core.texts.clean_text``); an empty one is classified as the model sees it,
    from its special tokens alone. ``tokenizer`` is a transformers tokenizer or an ``Encoder``.
    ``pad_to_multiple_of`` 8 suits GPU tensor cores; on a CPU every padded token is wasted work, so serving
    there uses 1."""
    texts = cleaned_texts(texts)
    if not texts:
        return []
    encoder = encoder_for(tokenizer, max_length)
    token_ids, truncated = encode_texts(encoder or tokenizer, texts, max_length)
    pad_id = encoder.pad_id if encoder is not None else (tokenizer.pad_token_id or 0)
    results: list[Prediction | None] = [None] * len(texts)
    for chunk in length_sorted_chunks([len(ids) for ids in token_ids], batch_size):
        probabilities = probabilities_of(pad_batch([token_ids[i] for i in chunk], pad_id, pad_to_multiple_of))
        for row, index in zip(probabilities.tolist(), chunk):
            results[index] = prediction_of(task, row, truncated[index])
    return results


def prediction_of(task: Task, row: Sequence[float], truncated: bool = False) -> Prediction:
    """One text's ``Prediction`` from its row of probabilities."""
    best = max(range(len(row)), key=row.__getitem__)
    return Prediction(label=task.labels[best], score=row[best], probabilities=dict(zip(task.labels, row)),
                      truncated=truncated, labels=[task.labels[i] for i in task.chosen(row)])


def torch_probabilities(model) -> ProbabilityFn:
    """A ``ProbabilityFn`` running a torch model (put in eval mode by the caller) on its own device."""
    import torch

    device = next(model.parameters()).device
    task = model_task(model)

    @torch.inference_mode()
    def probabilities_of(batch: dict[str, np.ndarray]) -> np.ndarray:
        inputs = {name: torch.from_numpy(array).to(device) for name, array in batch.items()}
        return task.torch_probabilities(model(**inputs).logits).cpu().numpy()

    return probabilities_of


def predict_texts(model, tokenizer, texts: Sequence[str], *, max_length: int | None = None,
                  batch_size: int = 64) -> list[Prediction]:
    was_training = model.training
    model.eval()
    try:
        return predict_with(torch_probabilities(model), tokenizer, model_task(model), texts,
                            max_length=max_length or model_max_length(model, tokenizer), batch_size=batch_size)
    finally:
        model.train(was_training)
