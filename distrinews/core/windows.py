"""Whole articles, not only their start: a text longer than the model's window is read as overlapping windows.

A window holds ``max_length`` tokens with the model's special tokens ([CLS] ... [SEP]) around each one, and
consecutive windows share ``stride`` tokens (the tokenizers' own ``stride``, as in ``return_overflowing_tokens``),
so a phrase cut at one window's edge is read whole by the next. The default stride is a quarter of the window
(32 tokens at 128), and at most ``max_windows`` windows are read (16 at 128 tokens: ~1,500 tokens, a long news
article); a text needing more is read up to there and flagged ``truncated``. ``max_windows=1`` is plain
truncation, as in training.

Each window is scored on its own and the text's scores combine its windows' (``combine_window_scores``): the mean
of softmax probabilities (one topic for the whole text; still a distribution), the max of sigmoid scores (a label
present in any window is present in the text: multi-label), the mean of raw logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCORE_FUNCTIONS = ("softmax", "sigmoid", "none")  # the HF pipelines' function_to_apply values
DEFAULT_MAX_WINDOWS = 16
# Longest text, in characters per token read, handed to a tokenizer. A text cut here would have been cut by
# tokenization anyway unless its words average over this many characters, and then they are [UNK] to WordPiece;
# without the cut, a megabyte of one word took 0.6-2 s to tokenize on one core here (and it is flagged truncated).
MAX_CHARS_PER_TOKEN = 32


@dataclass(frozen=True)
class WindowPolicy:
    """How a text is cut into windows: ``max_length`` tokens each, ``stride`` shared, at most ``max_windows``."""

    max_length: int
    stride: int = -1  # -1: a quarter of max_length
    max_windows: int = DEFAULT_MAX_WINDOWS

    def __post_init__(self) -> None:
        if self.stride < 0:
            object.__setattr__(self, "stride", self.max_length // 4)
        if self.max_windows < 1:
            raise ValueError(f"max_windows={self.max_windows}: must be >= 1")
        if self.max_windows > 1 and not 0 <= self.stride < self.max_length // 2:
            raise ValueError(f"stride={self.stride}: must be >= 0 and under half of max_length={self.max_length}")

    @property
    def max_characters(self) -> int:
        """The most characters worth tokenizing: every token the windows can hold, at MAX_CHARS_PER_TOKEN each."""
        tokens = self.max_length + (self.max_windows - 1) * (self.max_length - self.stride)
        return tokens * MAX_CHARS_PER_TOKEN


@dataclass
class TextWindows:
    """One text's token windows (special tokens included), and whether part of the text was left unread."""

    windows: list[list[int]]
    truncated: bool


def bounded_texts(texts, policy: WindowPolicy) -> tuple[list[str], list[bool]]:
    """Texts cut at ``policy.max_characters``, and which were cut."""
    limit = policy.max_characters
    return [text[:limit] for text in texts], [len(text) > limit for text in texts]


def scores_from_logits(logits: np.ndarray, function: str) -> np.ndarray:
    """``function`` (softmax, sigmoid or none) of each row of ``logits``, in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    if function == "softmax":
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return exp / exp.sum(axis=-1, keepdims=True)
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    if function == "none":
        return logits
    raise ValueError(f"function_to_apply must be one of {', '.join(SCORE_FUNCTIONS)}, got {function!r}")


def combine_window_scores(window_scores: np.ndarray, function: str) -> np.ndarray:
    """One text's scores from its windows' scores (windows, classes), by the kind of score they are."""
    if function == "sigmoid":
        return window_scores.max(axis=0)
    return window_scores.mean(axis=0)
