"""The one prediction path: texts in, the labels the model gives + every label's probability out.

Used by ``distrinews predict``, ``distrinews evaluate``, the notebook and the Space. Texts are cleaned
(``distrinews.core.texts``: any string is accepted, so one odd text cannot fail the others), tokenized once into
windows of ``max_length`` tokens (``distrinews.core.windows``: a long article is read whole, in overlapping
windows whose scores are combined), sorted by length and cut into batches whose padding stays small, and the
original order is restored before returning. The model itself is any ``LogitsFn`` (a padded batch of token ids in,
logits out): the torch model here, or the ONNX Runtime session of ``distrinews.serving.backends``; both go
through ``predict_with`` so they cannot drift apart. What the logits mean is the model's task
(``distrinews.core.tasks``, from its config): softmax probabilities and the most probable label, or a sigmoid per
label and every label at or above the decision threshold (multi-label). This module imports torch only when a torch
model is run: the Space's int8 path never loads it.
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
from .windows import TextWindows, WindowPolicy, bounded_texts, combine_window_scores, scores_from_logits

# A padded batch ({"input_ids", "attention_mask"} as int64 arrays of shape (rows, length)) -> (rows, classes) logits.
LogitsFn = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass
class Prediction:
    label: str  # the most probable label
    score: float  # its probability
    probabilities: dict[str, float]
    truncated: bool  # part of the text was not read: it needed more than max_windows windows
    labels: list[str] = field(default_factory=list)  # the labels given, most probable first (multi-label: any)
    windows: int = 1  # windows of max_length tokens read
    score_function: str = "softmax"  # the model's own (its task's): softmax, or sigmoid for multi-label
    window_logits: np.ndarray | None = field(default=None, repr=False, compare=False)  # (windows, classes)
    confidence: float = 1.0  # how likely the answer is right, by the model's own scores (Task.confidence)
    min_confidence: float | None = None  # the floor it was held to (None: none)

    @property
    def abstained(self) -> bool:
        """The model is "not sure": its confidence is under the floor. The labels are still its best guess."""
        return self.min_confidence is not None and self.confidence < self.min_confidence

    def to_dict(self) -> dict:
        return {"label": self.label, "score": self.score, "labels": self.labels,
                "probabilities": self.probabilities, "truncated": self.truncated, "windows": self.windows,
                "abstained": self.abstained, "confidence": self.confidence, "min_confidence": self.min_confidence}

    def scores(self, function: str) -> dict[str, float]:
        """Every label's score under ``function`` (softmax, sigmoid or none), windows combined as that kind
        of score combines."""
        if function == self.score_function or self.window_logits is None:
            return self.probabilities
        combined = combine_window_scores(scores_from_logits(self.window_logits, function), function)
        return dict(zip(self.probabilities, combined.tolist()))


def text_scores(task: Task, window_logits: np.ndarray) -> np.ndarray:
    """A text's probabilities from its windows' logits (windows, labels): the task's scores of each window,
    combined as that kind of score combines (mean of softmax, max of sigmoid). Serving and every evaluation call
    this, so they score a text alike."""
    return combine_window_scores(task.probabilities(window_logits), task.score_function)


def prediction_from_windows(task: Task, window_logits: np.ndarray, truncated: bool) -> Prediction:
    """A text's prediction from its windows' logits (``text_scores``) and the labels the task gives for them."""
    scores = text_scores(task, window_logits)
    combined = scores.tolist()
    best = max(range(len(combined)), key=combined.__getitem__)
    return Prediction(label=task.labels[best], score=combined[best], probabilities=dict(zip(task.labels, combined)),
                      truncated=truncated, labels=[task.labels[i] for i in task.chosen(combined)],
                      windows=len(window_logits), score_function=task.score_function, window_logits=window_logits,
                      confidence=float(task.confidence(scores[None, :])[0]), min_confidence=task.abstain_below)


def model_max_length(model, tokenizer) -> int:
    return max_input_length(getattr(model.config, "max_position_embeddings", None),
                            getattr(tokenizer, "model_max_length", None))


def model_task(model) -> Task:
    """The task a loaded transformers model was trained for (its config's labels, problem type, threshold)."""
    return task_from_config(model.config)


@dataclass
class Encoder:
    """A fast tokenizer's own Rust encoder cutting texts into the windows of a ``WindowPolicy``, and its padding id.

    Built from a transformers tokenizer (``encoder_for``) or straight from a model's ``tokenizer.json`` (the
    Space, ``Encoder.from_files``): the first window's ids are those of
    ``tokenizer(texts, truncation=True, max_length=...)``, the others those of its ``return_overflowing_tokens``."""

    rust: Any  # tokenizers.Tokenizer
    pad_id: int
    policy: WindowPolicy

    @property
    def max_length(self) -> int:
        return self.policy.max_length

    @classmethod
    def from_rust(cls, rust, pad_id: int, policy: WindowPolicy, truncation_side: str = "right") -> "Encoder":
        rust = copy.deepcopy(rust)  # the caller's tokenizer keeps its own settings
        rust.no_padding()
        rust.enable_truncation(policy.max_length, stride=policy.stride, strategy="longest_first",
                               direction=truncation_side)
        return cls(rust=rust, pad_id=pad_id, policy=policy)

    @classmethod
    def from_files(cls, files, policy: WindowPolicy) -> "Encoder":
        """From ``distrinews.core.model_files.ServingFiles``: no transformers import."""
        return cls.from_rust(files.tokenizer, files.pad_id, policy, files.truncation_side)

    def encode(self, texts: Sequence[str]) -> list[TextWindows]:
        """Each text's windows. Fast tokenizers return the windows past the first as ``overflowing``, so it is one
        pass; a text needing more than ``max_windows`` keeps the first ones and is flagged truncated."""
        texts, cut = bounded_texts(texts, self.policy)
        encodings = self.rust.encode_batch(texts, add_special_tokens=True)
        keep = self.policy.max_windows
        return [TextWindows([e.ids, *(o.ids for o in e.overflowing[:keep - 1])],
                            truncated=was_cut or len(e.overflowing) >= keep)
                for e, was_cut in zip(encodings, cut)]


# transformers tokenizer -> {policy: Encoder}; weak, so a dropped tokenizer is freed
_ENCODERS: "weakref.WeakKeyDictionary[Any, dict[WindowPolicy, Encoder]]" = weakref.WeakKeyDictionary()


def encoder_for(tokenizer, policy: WindowPolicy) -> Encoder | None:
    """The ``Encoder`` of a transformers fast tokenizer (built once per policy), or None for a slow one.

    Calling the transformers tokenizer re-applies its truncation settings and wraps the result in a
    ``BatchEncoding`` on every call: for one headline that took 0.8 ms after an idle spell against 0.5 ms for the
    encoder alone, here."""
    if isinstance(tokenizer, Encoder):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    per_policy = _ENCODERS.setdefault(tokenizer, {})
    if policy not in per_policy:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        per_policy[policy] = Encoder.from_rust(backend, pad_id, policy, getattr(tokenizer, "truncation_side", "right"))
    return per_policy[policy]


def encode_windows(tokenizer, texts: Sequence[str], policy: WindowPolicy) -> list[TextWindows]:
    """Each text's windows; ``tokenizer`` is a transformers tokenizer or an ``Encoder``. A slow (Python)
    tokenizer reads the first window only, flagging longer texts truncated."""
    encoder = encoder_for(tokenizer, policy)
    if encoder is not None:
        return encoder.encode(texts)
    texts, cut = bounded_texts(texts, policy)
    encoded = tokenizer(texts, truncation=True, max_length=policy.max_length, add_special_tokens=True)
    full = tokenizer(texts, truncation=False, add_special_tokens=True)["input_ids"]
    return [TextWindows([ids], truncated=len(whole) > policy.max_length or was_cut)
            for ids, whole, was_cut in zip(encoded["input_ids"], full, cut)]


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_id if isinstance(tokenizer, Encoder) else (tokenizer.pad_token_id or 0)


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


def window_logits(logits_of: LogitsFn, windows: Sequence[Sequence[int]], pad_id: int, *, batch_size: int,
                  pad_to_multiple_of: int = 8) -> list[np.ndarray]:
    """The logits of each window (token ids), run in length-sorted batches; results in the input order."""
    results: list[np.ndarray | None] = [None] * len(windows)
    for chunk in length_sorted_chunks([len(ids) for ids in windows], batch_size):
        logits = np.asarray(logits_of(pad_batch([windows[i] for i in chunk], pad_id, pad_to_multiple_of)))
        for row, index in zip(logits, chunk):
            results[index] = row
    return results


def predictions_from(task: Task, texts: Sequence[TextWindows], logits: Sequence[np.ndarray]) -> list[Prediction]:
    """Each text's prediction from the logits of every window of ``texts``, flattened in order."""
    predictions, start = [], 0
    for text in texts:
        end = start + len(text.windows)
        predictions.append(prediction_from_windows(task, np.stack(logits[start:end]), text.truncated))
        start = end
    return predictions


def predict_with(logits_of: LogitsFn, tokenizer, task: Task, texts: Sequence[str], *,
                 max_length: int, batch_size: int = 64, pad_to_multiple_of: int = 8,
                 policy: WindowPolicy | None = None) -> list[Prediction]:
    """Classify ``texts`` with any ``LogitsFn``: windows in length-sorted batches, results in the input order;
    ``task`` names the labels and decides which the scores give.

    Any string is accepted (``distrinews.core.texts.clean_text``); an empty one is classified as the model sees it,
    from its special tokens alone. ``tokenizer`` is a transformers tokenizer or an ``Encoder``. ``policy`` (default:
    ``WindowPolicy(max_length)``) says how long texts are cut into windows. ``pad_to_multiple_of`` 8 suits GPU
    tensor cores; on a CPU every padded token is wasted work, so serving there uses 1."""
    texts = cleaned_texts(texts)
    if not texts:
        return []
    policy = policy or WindowPolicy(max_length)
    encoder = encoder_for(tokenizer, policy) or tokenizer
    windowed = encode_windows(encoder, texts, policy)
    flat = [ids for text in windowed for ids in text.windows]
    logits = window_logits(logits_of, flat, pad_id_of(encoder), batch_size=batch_size,
                           pad_to_multiple_of=pad_to_multiple_of)
    return predictions_from(task, windowed, logits)


def torch_logits(model) -> LogitsFn:
    """A ``LogitsFn`` running a torch model (put in eval mode by the caller) on its own device."""
    import torch

    device = next(model.parameters()).device

    @torch.inference_mode()
    def logits_of(batch: dict[str, np.ndarray]) -> np.ndarray:
        inputs = {name: torch.from_numpy(array).to(device) for name, array in batch.items()}
        return model(**inputs).logits.float().cpu().numpy()

    return logits_of


def predict_texts(model, tokenizer, texts: Sequence[str], *, max_length: int | None = None,
                  batch_size: int = 64, policy: WindowPolicy | None = None,
                  min_confidence: float | None = None) -> list[Prediction]:
    """``predict_with`` on a torch model, with its task from its config; ``min_confidence`` replaces the floor the
    model was saved with (``abstain_below``; 0 = none)."""
    task = model_task(model)
    if min_confidence is not None:
        task = task.with_floor(min_confidence)
    was_training = model.training
    model.eval()
    try:
        return predict_with(torch_logits(model), tokenizer, task, texts,
                            max_length=max_length or model_max_length(model, tokenizer), batch_size=batch_size,
                            policy=policy)
    finally:
        model.train(was_training)
