"""PROVISIONAL (replaced by the issue24-stats branch)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Sequence


@dataclass(frozen=True)
class SeedSummary:
    mean: float
    low: float | None
    high: float | None
    min: float
    max: float
    n: int
    method: str

    def verdict(self, higher_is_better: bool = True) -> str:
        if self.low is None:
            return "inconclusive"
        if self.low > 0:
            return "better" if higher_is_better else "worse"
        if self.high < 0:
            return "worse" if higher_is_better else "better"
        return "inconclusive"


def across_seeds(values: Sequence[float], level: float = 0.95) -> SeedSummary:
    from scipy import stats
    v = [float(x) for x in values]
    n = len(v)
    mean = sum(v) / n
    if n < 2:
        return SeedSummary(mean, None, None, min(v), max(v), n, "Student t over seeds")
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    h = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return SeedSummary(mean, mean - h, mean + h, min(v), max(v), n, "Student t over seeds")
