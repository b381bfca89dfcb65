"""Which words pushed a prediction: leave-one-word-out occlusion, scored in one batch.

For a text of n words the model sees the text plus the n texts with one word removed (all in one call to
the predict function, so the micro-batcher serves them as one length-sorted batch). A word's weight is how
much the predicted class's probability drops without it: positive words pushed towards the prediction,
negative ones pulled away. It is model-agnostic and exact for what it measures, at the cost of n+1 texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..core.predict import Prediction

MAX_WORDS = 64  # occlusion costs one forward pass per word; beyond this the rest of the text is shown unscored


@dataclass
class Explanation:
    prediction: Prediction
    words: list[str]
    weights: list[float | None]  # None for words past MAX_WORDS (not scored)

    def highlighted(self) -> list[tuple[str, float | None]]:
        """(word, weight scaled to [-1, 1]) pairs, the form ``gr.HighlightedText`` colours by sign and size."""
        largest = max((abs(w) for w in self.weights if w is not None), default=0.0) or 1.0
        return [(word + " ", None if weight is None else round(weight / largest, 4))
                for word, weight in zip(self.words, self.weights)]


def occlusion_texts(text: str, max_words: int = MAX_WORDS) -> tuple[list[str], list[str]]:
    """The words of ``text`` and the variants to score: the text itself, then one per left-out word."""
    words = text.split()
    if not words:
        raise ValueError("cannot explain an empty text")
    scored = words[:max_words]
    variants = [" ".join(words)]
    variants += [" ".join(words[:i] + words[i + 1:]) for i in range(len(scored))]
    return words, variants


def explanation_from(words: list[str], predictions: Sequence[Prediction]) -> Explanation:
    """Turn the predictions for ``occlusion_texts(...)[1]`` into per-word weights."""
    full, *without = predictions
    weights: list[float | None] = [full.score - p.probabilities[full.label] for p in without]
    weights += [None] * (len(words) - len(weights))
    return Explanation(prediction=full, words=words, weights=weights)
