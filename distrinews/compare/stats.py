"""The arithmetic of a comparison across seeds: each group's summary and the paired t-test of two groups.

numpy only (scipy is not a dependency): the t distribution's two-sided p-value has a closed form for a whole
number of degrees of freedom (Abramowitz and Stegun 26.7.3 and 26.7.4), which a paired test on n seeds always has
(n - 1), so the p-value is exact, not an approximation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1; None for one value), min, max and the number of values."""

    mean: float
    std: float | None
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Summary":
        array = np.asarray(values, dtype=float)
        std = float(array.std(ddof=1)) if len(array) > 1 else None
        return cls(float(array.mean()), std, float(array.min()), float(array.max()), len(array))


@dataclass(frozen=True)
class PairedComparison:
    """``other`` minus ``baseline`` on the seeds both have: the differences' mean and standard deviation, the
    paired t statistic, its degrees of freedom and the two-sided p-value."""

    seeds: tuple
    mean_difference: float
    std_difference: float
    t: float
    df: int
    p_value: float

    def exceeds_seed_spread(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha


def paired_comparison(baseline: Mapping, other: Mapping) -> PairedComparison | None:
    """The paired t-test of two groups' values by seed (``{seed: value}``); None with fewer than 2 shared seeds."""
    seeds = tuple(seed for seed in baseline if seed in other)
    if len(seeds) < 2:
        return None
    differences = np.array([other[seed] - baseline[seed] for seed in seeds], dtype=float)
    mean, std, df = float(differences.mean()), float(differences.std(ddof=1)), len(seeds) - 1
    if std == 0:  # every seed moved by the same amount: no spread to measure the difference against
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    else:
        t = mean / (std / math.sqrt(len(seeds)))
    return PairedComparison(seeds, mean, std, t, df, t_two_sided_p(t, df))


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` (a whole number >= 1) degrees of freedom, in closed form."""
    if df < 1 or int(df) != df:
        raise ValueError(f"df={df}: the closed form needs a whole number of degrees of freedom >= 1")
    if math.isinf(t):
        return 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    sin, cos = math.sin(theta), math.cos(theta)
    # P(|T| < |t|) as a sum over cos^(2k) terms: even df start at sin(theta), odd df at theta (26.7.3, 26.7.4)
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= cos * cos * (2 * k - 1) / (2 * k)
            total += term
        inside = sin * total
    else:
        term, total = cos, cos if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= cos * cos * (2 * k) / (2 * k + 1)
            total += term
        inside = 2 / math.pi * (theta + sin * total)
    return min(1.0, max(0.0, 1.0 - inside))
