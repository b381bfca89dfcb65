"""Labelled text of any shape for the tests, as pandas users write it (``to_csv``, ``to_json``, ``to_parquet``).

Each label has its own words from the conftest vocabulary (which the tiny tokenizer holds whole), mixed with
filler shared by all labels, so a tiny model learns any label set in a few epochs. Multi-label rows carry the
words of each of their labels.
"""

from __future__ import annotations

import random
from typing import Sequence

import pandas as pd

from conftest import CLASS_WORDS, FILLER

# 40 words, 10 per AG News class: dealt out round-robin, so that label i's words mix the classes' vocabularies.
WORDS = [word for group in zip(*CLASS_WORDS.values()) for word in group]


def label_words(count: int) -> list[list[str]]:
    """``count`` disjoint word groups (up to 40 labels)."""
    if count > len(WORDS):
        raise ValueError(f"the tiny vocabulary distinguishes at most {len(WORDS)} labels")
    return [WORDS[i::count] for i in range(count)]


def text_of(rng: random.Random, groups: Sequence[Sequence[str]], words_per_label: int = 4) -> str:
    words = [rng.choice(group) for group in groups for _ in range(words_per_label)]
    words += [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
    rng.shuffle(words)
    return " ".join(words)


def single_label_rows(labels: Sequence, counts: Sequence[int], seed: int) -> pd.DataFrame:
    """``counts[i]`` rows of ``labels[i]`` (any value a label column holds: names or integers), shuffled."""
    rng = random.Random(seed)
    groups = label_words(len(labels))
    rows = [(text_of(rng, [groups[i]]), label) for i, label in enumerate(labels) for _ in range(counts[i])]
    rng.shuffle(rows)
    return pd.DataFrame(rows, columns=["text", "label"])


def multi_label_rows(labels: Sequence[str], count: int, seed: int, column: str = "labels") -> pd.DataFrame:
    """Rows with none, one or two of ``labels`` (a list per row), each text made of its labels' words."""
    rng = random.Random(seed)
    groups = dict(zip(labels, label_words(len(labels))))
    rows = []
    for _ in range(count):
        chosen = rng.sample(list(labels), rng.choice([0, 1, 1, 2]))
        text = text_of(rng, [groups[name] for name in chosen]) if chosen else \
            " ".join(rng.choice(FILLER) for _ in range(5))
        rows.append((text, sorted(chosen)))
    return pd.DataFrame(rows, columns=["text", column])


def words_of(label_index: int, label_count: int, count: int = 4) -> str:
    """Some words that mark one label, for texts a test classifies."""
    return " ".join(label_words(label_count)[label_index][:count])
