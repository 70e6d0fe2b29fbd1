"""Confidence intervals over prompts, and summaries over seeds. Pure functions.

Which interval each number of `alignray evaluate` carries, and why:

- **A rate** (the share of 0/1 outcomes: refusal, over-refusal, a preference model's accuracy):
  the Wilson score interval (`wilson_interval`). Its coverage is close to the nominal level
  even for small n and rates near 0 or 1, and it never has zero width: 0 events out of 40 give
  [0, 0.088] (a percentile bootstrap gives [0, 0]: every resample of 40 zeros is 0).
- **A win rate** ((wins + ties/2) / prompts): Wilson on that fractional count. A prompt's
  outcome (1, 0.5 or 0) has mean p and a variance of at most p(1 - p), the variance of a 0/1
  outcome with the same mean (x² ≤ x on [0, 1]), so Wilson's binomial variance is an upper
  bound: exact in form without ties, conservative with them, and not zero-width when every
  prompt ties ([0.35, 0.65] on 40 prompts) or every prompt wins.
- **A paired difference of two rates** (a policy's refusal rate minus its opponent's on the
  same prompts): Newcombe's hybrid score interval for paired data (Newcombe 1998, Stat Med
  17:2635, method 10: the two Wilson intervals combined with the correlation of the pairs, φ
  corrected by n/2 when positive), `paired_proportion_difference`. Closed form, built on the
  Wilson intervals of the two rates, and never zero-width: no change on 40 prompts without
  refusals gives [-0.088, +0.088].
- **A mean of continuous values** (a classifier's probability), **or a paired difference of
  them**: the percentile bootstrap over prompts (`bootstrap_interval`; paired = the
  per-prompt differences resampled).
- **A difference of two estimates from independent samples** (the refusal gain on harmful
  prompts minus the over-refusal change on other, benign prompts): the MOVER interval
  (`independent_difference`), each side's bounds combined in quadrature on their own side.
- **A comparison across seeds** (one number per seed, e.g. each seed's refusal gain): Student t
  on the per-seed values (`across_seeds`); with one seed there is no interval.
- **A difference between two methods across seeds** (a sweep's arm against its baseline arm):
  Welch's t on the two arms' per-seed values (`difference_across_seeds`; the arms' spreads need
  not be equal), widened by both arms' prompt intervals as `across_seeds` widens.

Every interval function has a `*_method(level)` twin naming it for tables ("Wilson 95%").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


def _percent(level: float) -> str:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return f"{round(level * 100, 4):g}%"


def _z(level: float) -> float:
    _percent(level)
    return NormalDist().inv_cdf((1 + level) / 2)


def wilson_method(level: float = 0.95) -> str:
    return f"Wilson {_percent(level)}"


def newcombe_method(level: float = 0.95) -> str:
    return f"paired Newcombe {_percent(level)}"


def bootstrap_method(level: float = 0.95, paired: bool = False) -> str:
    return f"{'paired ' if paired else ''}bootstrap {_percent(level)}"


def student_t_method(level: float = 0.95) -> str:
    return f"Student t {_percent(level)} over seeds"


def welch_method(level: float = 0.95) -> str:
    return f"Welch t {_percent(level)} over the two arms' seeds"


def is_binary(values: np.ndarray) -> bool:
    """Every value is 0 or 1 (and there is at least one)."""
    values = np.asarray(values, dtype=float)
    return values.size > 0 and bool(np.isin(values, (0.0, 1.0)).all())


def wilson_interval(events: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the rate events / n. `events` may be fractional (a win rate's
    wins + ties/2); the bounds are exactly 0 at 0 events and exactly 1 at n."""
    if n <= 0:
        raise ValueError(f"a rate needs n > 0 outcomes, got n={n}")
    if not 0 <= events <= n:
        raise ValueError(f"events must be in [0, n={n}], got {events}")
    z = _z(level)
    p = events / n
    scale = 1 + z * z / n
    center = (p + z * z / (2 * n)) / scale
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
    low = 0.0 if events == 0 else max(0.0, center - half)
    high = 1.0 if events == n else min(1.0, center + half)
    return low, high


def _binary(name: str, values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or not is_binary(values):
        raise ValueError(f"{name} must be a non-empty 1-d array of 0/1 outcomes")
    return values


def paired_proportion_difference(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(diff, low, high): mean(a) - mean(b) for 0/1 outcomes paired by position (the same prompt),
    with Newcombe's hybrid score interval (1998, method 10).

    With the 2x2 counts e = both 1, f = a only, g = b only, h = neither (n pairs), p1 = (e + f)/n,
    p2 = (e + g)/n and their Wilson intervals (l1, u1), (l2, u2):
        low  = (p1 - p2) - sqrt((p1 - l1)² - 2φ(p1 - l1)(u2 - p2) + (u2 - p2)²)
        high = (p1 - p2) + sqrt((p2 - l2)² - 2φ(p2 - l2)(u1 - p1) + (u1 - p1)²)
    where φ = C / sqrt((e+f)(g+h)(e+g)(f+h)), C = max(eh - fg - n/2, 0) when eh > fg, else
    eh - fg; φ = 0 when a margin is empty. φ < 1 always, so the interval never has zero width.
    """
    a, b = _binary("a", a), _binary("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must pair up: {a.size} and {b.size} outcomes")
    n = a.size
    e = float(np.sum((a == 1) & (b == 1)))
    f = float(np.sum((a == 1) & (b == 0)))
    g = float(np.sum((a == 0) & (b == 1)))
    h = n - e - f - g
    p1, p2 = (e + f) / n, (e + g) / n
    (l1, u1), (l2, u2) = wilson_interval(e + f, n, level), wilson_interval(e + g, n, level)
    margins = (e + f) * (g + h) * (e + g) * (f + h)
    cross = e * h - f * g
    corrected = max(cross - n / 2, 0.0) if cross > 0 else cross
    phi = corrected / math.sqrt(margins) if margins > 0 else 0.0
    diff = (f - g) / n  # = p1 - p2, and exactly the mean of the per-prompt differences
    below = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    above = math.sqrt(max((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2, 0.0))
    return diff, max(-1.0, diff - below), min(1.0, diff + above)


def bootstrap_interval(values: np.ndarray, samples: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of `values`, resampled with replacement `samples` times
    (for continuous values; zero width when they are all equal)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("no values to bootstrap")
    _percent(level)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(samples, values.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def verdict(low: float | None, high: float | None, seeds: int, higher_is_better: bool = True,
            reference: float = 0.0) -> str:
    """"better" when the interval [low, high] excludes `reference` on the good side, "worse" on
    the other side, else "inconclusive" (always without an interval or with fewer than two
    seeds: one seed says nothing of the training's own randomness)."""
    if low is None or high is None or seeds < 2:
        return "inconclusive"
    if low > reference:
        return "better" if higher_is_better else "worse"
    if high < reference:
        return "worse" if higher_is_better else "better"
    return "inconclusive"


@dataclass(frozen=True)
class SeedSummary:
    """One number (a gain, a win rate, ...) summarised over the seeds of a method: the mean of
    the per-seed values, their range, and a Student t interval of the mean (None with one seed)."""

    mean: float
    low: float | None
    high: float | None
    min: float
    max: float
    n: int
    method: str

    def verdict(self, higher_is_better: bool = True, reference: float = 0.0) -> str:
        """`verdict` of this interval over `n` seeds against `reference` (no change: 0 for a
        gain, 0.5 for a win rate)."""
        return verdict(self.low, self.high, self.n, higher_is_better, reference)

    def describe(self, fmt: str = "+.3f") -> str:
        """E.g. "+0.073 [+0.033, +0.120] (Student t 95% over seeds, n=3; min +0.050, max +0.090)"."""
        interval = "" if self.low is None else f" [{self.low:{fmt}}, {self.high:{fmt}}]"
        return (f"{self.mean:{fmt}}{interval} ({self.method}, n={self.n};"
                f" min {self.min:{fmt}}, max {self.max:{fmt}})")


def _per_seed(what: str, values: Sequence[float]) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{what} needs one value per seed, at least one")
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: non-finite values {x.tolist()}")
    return x


def _prompt_half_width(what: str, within: Sequence[float], x: np.ndarray) -> float:
    """The mean of the seeds' own interval half-widths (one per value of `x`)."""
    w = np.asarray(within, dtype=float)
    if w.shape != x.shape or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"{what}: within must be one half-width >= 0 per value, got {w.tolist()}")
    return float(w.mean())


def across_seeds(values: Sequence[float], level: float = 0.95, within: Sequence[float] | None = None) -> SeedSummary:
    """Summarise one value per seed: mean ± t(level, n - 1) · s / sqrt(n), s the sample standard
    deviation. With one seed: no interval (None bounds), and the method says so.

    `within`: each seed's own interval half-width (its prompts' sampling error, e.g. a paired
    Newcombe interval over prompts). Every seed answers the same prompts, so that error does not
    shrink with more seeds: the half-width is then sqrt(t_half^2 + mean(within)^2), the seeds'
    spread and the prompts' together. Seeds that agree exactly then still get the prompts'
    interval instead of a zero-width one; one seed gets its prompts' interval alone."""
    from scipy.stats import t

    x = _per_seed("across_seeds", values)
    mean, n = float(x.mean()), int(x.size)
    prompts = None if within is None else _prompt_half_width("across_seeds", within, x)
    if n < 2:
        if prompts is None:
            return SeedSummary(mean, None, None, float(x.min()), float(x.max()), n, "one seed: no interval")
        return SeedSummary(mean, mean - prompts, mean + prompts, float(x.min()), float(x.max()), n,
                           "one seed: its prompts' interval only")
    half = float(t.ppf((1 + level) / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    if prompts is None:
        return SeedSummary(mean, mean - half, mean + half, float(x.min()), float(x.max()), n, student_t_method(level))
    half = math.hypot(half, prompts)
    return SeedSummary(mean, mean - half, mean + half, float(x.min()), float(x.max()), n,
                       f"{student_t_method(level)}, widened by the seeds' mean prompt interval (root sum of squares)")


def independent_difference(a: tuple[float, float, float], b: tuple[float, float, float]) -> tuple[float, float, float]:
    """a - b for two estimates from independent samples, each given as (value, low, high) with
    its own interval: the MOVER interval (Zou and Donner 2008; Newcombe's method 10 for two
    independent rates), which recovers each side's variance from its own (possibly asymmetric)
    bounds: low = d - sqrt((a - a_low)^2 + (b_high - b)^2), high = d + sqrt((a_high - a)^2 +
    (b - b_low)^2). Never narrower than either interval alone."""
    (x, xl, xh), (y, yl, yh) = a, b
    if not (xl <= x <= xh and yl <= y <= yh):
        raise ValueError(f"independent_difference: each estimate must lie in its interval, got {a} and {b}")
    d = x - y
    return d, d - math.hypot(x - xl, yh - y), d + math.hypot(xh - x, y - yl)


@dataclass(frozen=True)
class SeedDifference:
    """The difference of two methods' means over their seeds (a - b) and its interval (None
    bounds: no interval)."""

    diff: float
    low: float | None
    high: float | None
    n_a: int
    n_b: int
    method: str

    def verdict(self, higher_is_better: bool = True) -> str:
        """`verdict` against no difference (0): "better" means a is better than b; inconclusive
        unless both methods have two seeds or more."""
        return verdict(self.low, self.high, min(self.n_a, self.n_b), higher_is_better, 0.0)


def difference_across_seeds(a: Sequence[float], b: Sequence[float], level: float = 0.95,
                            within_a: Sequence[float] | None = None,
                            within_b: Sequence[float] | None = None) -> SeedDifference:
    """mean(a) - mean(b) of two methods' per-seed values (independent seeds), with Welch's t
    interval: half = t(level, df) * sqrt(va + vb), va = var(a) / n_a (sample variance),
    df = (va + vb)^2 / (va^2 / (n_a - 1) + vb^2 / (n_b - 1)) (Welch-Satterthwaite).

    `within_a`, `within_b` (both or neither): each seed's own interval half-width over prompts,
    as in `across_seeds`. An arm's prompt error does not shrink with seeds (mean(within)); the two
    arms' are combined as independent, and with the seeds' part as `across_seeds` does:
    half = sqrt(t_half^2 + mean(within_a)^2 + mean(within_b)^2). With fewer than two seeds in an
    arm, the prompts' part alone. An interval that would have zero width (every seed of both
    arms agrees, or a single seed each, and no prompt interval) is none: None bounds."""
    from scipy.stats import t

    x, y = _per_seed("difference_across_seeds (a)", a), _per_seed("difference_across_seeds (b)", b)
    if (within_a is None) != (within_b is None):
        raise ValueError("difference_across_seeds: give within for both arms or for neither")
    prompts = 0.0 if within_a is None else math.hypot(_prompt_half_width("difference_across_seeds (a)", within_a, x),
                                                        _prompt_half_width("difference_across_seeds (b)", within_b, y))
    diff, n_a, n_b = float(x.mean() - y.mean()), int(x.size), int(y.size)
    if min(n_a, n_b) < 2:
        seeds, method = 0.0, "fewer than two seeds in an arm: the prompts' intervals only"
    else:
        va, vb = float(x.var(ddof=1)) / n_a, float(y.var(ddof=1)) / n_b
        df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1)) if va + vb > 0 else math.inf
        seeds = float(t.ppf((1 + level) / 2, df)) * math.sqrt(va + vb)
        method = welch_method(level) + (", widened by both arms' mean prompt intervals (root sum of squares)"
                                        if within_a is not None else "")
    half = math.hypot(seeds, prompts)
    if half == 0:
        return SeedDifference(diff, None, None, n_a, n_b, "no interval: the seeds do not vary (or an arm has one)"
                              " and there is no prompt interval")
    return SeedDifference(diff, diff - half, diff + half, n_a, n_b, method)
