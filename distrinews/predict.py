"""The one prediction path: texts in, label + every class probability out.

Used by ``distrinews predict``, the notebook and the Space. Texts are sorted by length and batched, so
padding stays small, and the original order is restored before returning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


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


@torch.inference_mode()
def predict_texts(model, tokenizer, texts: Sequence[str], *, max_length: int | None = None,
                  batch_size: int = 64) -> list[Prediction]:
    if isinstance(texts, str):
        raise TypeError("predict_texts takes a sequence of texts, not one string")
    if not texts:
        return []
    max_length = max_length or model_max_length(model, tokenizer)
    encoded = tokenizer(list(texts), truncation=False, add_special_tokens=True)["input_ids"]
    truncated = [len(ids) > max_length for ids in encoded]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[Prediction | None] = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in chunk], truncation=True, max_length=max_length, padding=True,
                          pad_to_multiple_of=8, return_tensors="pt").to(device)
        probabilities = model(**batch).logits.float().softmax(dim=-1).cpu()
        for row, index in zip(probabilities.tolist(), chunk):
            best = max(range(len(row)), key=row.__getitem__)
            results[index] = Prediction(label=labels[best], score=row[best],
                                        probabilities=dict(zip(labels, row)), truncated=truncated[index])
    model.train(was_training)
    return results
