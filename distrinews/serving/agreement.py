"""Does an int8 graph decide as its fp32 model does? Checked on fixed probe texts whenever a graph is exported for
serving, before ``QUANTIZE=auto`` serves it.

Dynamic int8 stays close to fp32 for the encoders measured here (DistilBERT on the AG News test split: 98.64% of
labels the same, -0.10 points of accuracy; docs/experiments.md), but a model with outlier weights or activations
can lose far more. ``auto`` then serves fp32 torch and logs these figures; ``QUANTIZE=int8`` serves the graph anyway
and logs them as a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.predict import LogitsFn

# Headlines of every AG News topic and of none, short and long, plus text no tokenizer has seen whole.
PROBE_TEXTS = (
    "Stocks rally as the central bank holds interest rates steady",
    "Oil prices climb to a record on supply worries",
    "Quarterly profit beats forecasts and shares jump in late trading",
    "The merger creates the largest retailer in the country",
    "Striker scores twice as the champions win the cup final",
    "Olympic swimmer sets a world record in the 200 metres",
    "Coach fired after a losing season",
    "Tennis star withdraws from the open with a knee injury",
    "Ceasefire talks resume as troops leave the border town",
    "Prime minister calls an early election after the vote fails",
    "Earthquake kills dozens and leaves thousands homeless",
    "Leaders meet at the summit to discuss trade and security",
    "New chip doubles battery life of laptops",
    "Scientists find water ice near the moon's south pole",
    "Software update fixes a security flaw in millions of phones",
    "Researchers train a neural network to predict protein shapes",
    "weather", "ok", "!!! ??? ...", "12345 67890",
    "The company said on Tuesday that it would cut 2,000 jobs, close three plants and move production abroad "
    "within two years, sending its shares down sharply as analysts questioned the plan.",
    "Überraschung: Börse schließt höher – 株価が上昇 – الأسهم ترتفع",
    "emoji 🚀📈 and symbols ∑ ∞ ≠",
    "AAPL GOOG MSFT NVDA earnings week",
)
# A probe counts where fp32 decides clearly: its two most probable labels (single-label), or every label and its
# decision threshold (multi-label), at least this far apart.
CLEAR_MARGIN = 0.1
MIN_SAME_DECISIONS = 0.9
MAX_MEAN_DIFFERENCE = 0.05


@dataclass(frozen=True)
class Agreement:
    probes: int
    clear: int  # probes where fp32's decision is clear
    same: int  # of those, where int8 decides the same
    mean_difference: float  # of the probabilities, over every probe and label

    @property
    def holds(self) -> bool:
        decisions_hold = self.clear == 0 or self.same >= MIN_SAME_DECISIONS * self.clear
        return decisions_hold and self.mean_difference <= MAX_MEAN_DIFFERENCE

    def __str__(self) -> str:
        return (f"int8 decides as fp32 on {self.same} of the {self.clear} probe texts fp32 decides clearly "
                f"(needs {MIN_SAME_DECISIONS:.0%}); probabilities differ by {self.mean_difference:.3f} on average over "
                f"{self.probes} probes (needs at most {MAX_MEAN_DIFFERENCE})")


def probe_batch(tokenizer: Any, max_length: int, input_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    encoded = tokenizer(list(PROBE_TEXTS), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {name: np.asarray(encoded[name], dtype=np.int64) for name in input_names}


def measure_agreement(fp32: LogitsFn, int8: LogitsFn, batch: dict[str, np.ndarray], task: Any) -> Agreement:
    reference, candidate = task.probabilities(fp32(batch)), task.probabilities(int8(batch))
    # Multi-label: each label is decided against its own threshold, so each label's margin is from that one.
    thresholds = None if task.threshold is None else task.label_thresholds
    clear = [i for i, row in enumerate(reference) if _margin(row, thresholds) >= CLEAR_MARGIN]
    same = sum(task.chosen(list(reference[i])) == task.chosen(list(candidate[i])) for i in clear)
    return Agreement(len(reference), len(clear), same, float(np.abs(reference - candidate).mean()))


def _margin(row: np.ndarray, thresholds: np.ndarray | None) -> float:
    if thresholds is not None:
        return float(np.min(np.abs(row - thresholds)))
    if len(row) < 2:
        return float("inf")
    second, first = np.sort(row)[-2:]
    return float(first - second)
