"""Which parts of a text pushed a prediction: leave-one-part-out occlusion over the text's first window.

The parts are what the model reads, grouped as a reader would see them: the tokenizer's words (so a word and the
punctuation after it are separate parts) in scripts that put spaces between words, and each token in scripts
written without them (Chinese, Japanese, Thai, Lao, Khmer, Myanmar, Tibetan), where a tokenizer's "word" can be a
whole sentence. Occlusion works on token ids: each variant is the first window with one part's tokens taken out,
so every variant is one window and nothing is cleaned or tokenized again. Taking out the only part of a one-word
text leaves the special tokens alone: the model on an empty input, which is the baseline such a word is measured
against (as ``predict`` classifies an empty text).

A part's weight is how much the probability of the label the explained window gets drops without it: positive
parts pushed towards that label, negative ones pulled away. Only the first window is explained (a longer text is
explained as far as that window reads, and ``Explanation.summary`` says so), and at most ``max_parts`` parts are
scored, one window each, so an explanation costs at most ``max_parts + 1`` windows whatever the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..core.predict import Prediction, encoder_for, prediction_from_windows
from ..core.tasks import Task
from ..core.texts import check_text
from ..core.windows import MAX_CHARS_PER_TOKEN, WindowPolicy

MAX_WORDS = 64  # parts scored per explanation: each costs one window; the rest are shown unscored

# Scripts written without spaces between words: there each token is a part of its own.
NO_SPACE_SCRIPT = re.compile("[\u0e00-\u0eff\u0f00-\u0fff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf"
                             "\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f]")


class ExplainUnavailable(RuntimeError):
    """The model's tokenizer gives no token offsets (a slow, Python-only tokenizer), so parts cannot be found."""


@dataclass
class Explanation:
    prediction: Prediction  # of the explained window
    pieces: list[str]  # the explained text, cut where each part begins (joined, they are that text)
    weights: list[float | None]  # one per piece; None for parts past the scored ones
    tokens_read: int  # tokens of the text in the explained window
    total_chars: int  # characters of the text as it was sent
    truncated: bool  # the text goes on past the explained window

    def highlighted(self) -> list[tuple[str, float | None]]:
        """(piece, weight scaled to [-1, 1]) pairs, the form ``gr.HighlightedText`` colours by sign and size."""
        largest = max((abs(w) for w in self.weights if w is not None), default=0.0) or 1.0
        return [(piece, None if weight is None else round(weight / largest, 4))
                for piece, weight in zip(self.pieces, self.weights)]

    def summary(self) -> str:
        """What was read and what the weights are for, in a few sentences (Markdown)."""
        if not self.tokens_read:
            return "The model reads no token of this text (its tokenizer drops every character): nothing to weigh."
        scored = sum(weight is not None for weight in self.weights)
        tokens = f"{self.tokens_read:,} token{'s' if self.tokens_read != 1 else ''}"
        if self.truncated:
            said = [f"Explained the first {tokens} ({sum(map(len, self.pieces)):,} characters) of "
                    f"{self.total_chars:,} characters; the rest was not read for this explanation."]
        else:
            said = [f"Read the whole text ({tokens})."]
        if scored < len(self.pieces):
            said.append(f"The first {scored} of {len(self.pieces)} parts were scored; the rest are shown uncoloured.")
        said.append("Each part (a word, or a token in scripts written without spaces) was left out in turn; the "
                    f"weights are how much it raised **{self.prediction.label}** ({self.prediction.score:.0%}), the "
                    "label this part of the text gets.")
        if len(self.pieces) == 1 and scored:
            said.append("Leaving out the only part leaves an empty input: the weight is measured against the "
                        "model's score for an empty text.")
        return " ".join(said)


@dataclass
class Occlusion:
    """One text's windows to score: its first window, then one per scored part with that part's tokens removed."""

    text: str  # the cleaned text as far as the first window reads it
    starts: list[int]  # where each part begins in ``text``
    windows: list[list[int]]
    tokens_read: int
    total_chars: int
    truncated: bool

    def explanation(self, task: Task, logits: Sequence[np.ndarray]) -> Explanation:
        """The weights from the logits of ``windows`` (same order)."""
        full = prediction_from_windows(task, np.stack(logits[:1]), self.truncated)
        label = task.labels.index(full.label)
        without = task.probabilities(np.stack(logits[1:]))[:, label] if len(logits) > 1 else []
        weights: list[float | None] = [full.score - float(p) for p in without]
        bounds = [0, *self.starts[1:], len(self.text)]
        pieces = [self.text[start:end] for start, end in zip(bounds, bounds[1:])] if self.starts else [self.text]
        weights += [None] * (len(pieces) - len(weights))
        return Explanation(full, pieces, weights, self.tokens_read, self.total_chars, self.truncated)


def occlusion_of(tokenizer, policy: WindowPolicy, text: str, max_parts: int = MAX_WORDS,
                 total_chars: int | None = None) -> Occlusion:
    """The windows that explain ``text`` (any string; ``TextError`` when nothing is left once cleaned), read with
    ``tokenizer`` (an ``Encoder`` or a transformers fast tokenizer) as ``policy``'s first window. ``total_chars``:
    the length of the text as sent, when ``text`` was already cut."""
    encoder = encoder_for(tokenizer, policy)
    if encoder is None:
        raise ExplainUnavailable("the model's tokenizer is a slow (Python) one, which gives no token offsets")
    cleaned = check_text(text)
    readable = cleaned[:policy.max_length * MAX_CHARS_PER_TOKEN]  # more than a window can hold: not tokenized
    encoding = encoder.rust.encode(readable, add_special_tokens=True)
    parts = part_positions(encoding, readable)
    end = encoding.offsets[parts[-1][-1]][1] if parts else len(readable)
    removed = [set(positions) for positions in parts[:max(0, max_parts)]]
    windows = [list(encoding.ids)] + [[token for position, token in enumerate(encoding.ids) if position not in gone]
                                      for gone in removed]
    total_chars = len(text) if total_chars is None else total_chars
    return Occlusion(text=readable[:end], starts=[encoding.offsets[positions[0]][0] for positions in parts],
                     windows=windows, tokens_read=sum(map(len, parts)), total_chars=total_chars,
                     truncated=bool(encoding.overflowing) or len(readable) < len(cleaned) or total_chars > len(text))


def part_positions(encoding, text: str) -> list[list[int]]:
    """The token positions of each part of ``encoding`` (a tokenizers ``Encoding`` of ``text``), in order: the
    tokens of one word together, except in scripts written without spaces, where each token is a part."""
    words: dict[tuple[bool, int], list[int]] = {}
    for position, (word, special) in enumerate(zip(encoding.word_ids, encoding.special_tokens_mask)):
        if not special:  # a token outside any word is a part of its own
            words.setdefault((word is None, position if word is None else word), []).append(position)
    parts: list[list[int]] = []
    for positions in words.values():
        start, end = encoding.offsets[positions[0]][0], encoding.offsets[positions[-1]][1]
        parts += [[p] for p in positions] if NO_SPACE_SCRIPT.search(text, start, end) else [positions]
    return parts
