"""Win rates, rates and paired gains from stored judgements, with their intervals. Pure functions.

A judgement row compares the evaluated policy's response with an opponent's on one prompt.
Per judge, the policy's outcome on a prompt is 1 (win), 0.5 (tie) or 0 (loss):
- `model`: column `model_prob`, the AI judge's P(policy's response is better) (both orders
  averaged): win above 0.5, loss below;
- a classifier or `length`: columns `<judge>_policy` and `<judge>_opponent`; for `profanity` and
  `hate` the lower probability wins, for `length` the longer response "wins" (a diagnostic of
  length bias, not a quality judgement).
Values within `TIE` of each other tie.

A judge without a fixed direction (`refusal`: right on a harmful request, wrong on a harmless
one) gives no wins; `policy_rates` reports its mean per policy instead, and `gains` the paired
difference against each opponent.

Intervals (`alignray.stats` says why): win rates and rates of 0/1 judges carry Wilson
score intervals, paired differences of 0/1 judges Newcombe's paired score interval, means and
paired differences of continuous judges a (paired) percentile bootstrap. Each result names its
interval in `method`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from alignray.rewards.judges import JUDGES
from alignray.stats import (
    bootstrap_interval,
    bootstrap_method,
    is_binary,
    newcombe_method,
    paired_proportion_difference,
    wilson_interval,
    wilson_method,
)

TIE = 1e-6

def outcomes(frame: pd.DataFrame, judge: str) -> np.ndarray:
    """The policy's outcome (1, 0.5, 0) on every row, by `judge`."""
    if judge == "model":
        diff = frame["model_prob"].to_numpy(float) - 0.5
    else:
        diff = frame[f"{judge}_policy"].to_numpy(float) - frame[f"{judge}_opponent"].to_numpy(float)
        if JUDGES[judge].lower_is_better:
            diff = -diff
    return np.where(np.abs(diff) < TIE, 0.5, (diff > 0).astype(float))


@dataclass(frozen=True)
class WinRate:
    opponent: str
    judge: str
    rate: float  # wins + ties / 2, over prompts
    low: float
    high: float
    wins: int
    ties: int
    losses: int
    method: str = wilson_method()  # the interval's


def win_rates(frame: pd.DataFrame, judges: list[str], level: float = 0.95) -> list[WinRate]:
    """One WinRate per (opponent, judge), in the order they appear, with a Wilson interval on the
    fractional count wins + ties/2 (conservative with ties; never zero-width)."""
    out = []
    for opponent in dict.fromkeys(frame["opponent"]):
        rows = frame[frame["opponent"] == opponent]
        for judge in judges:
            o = outcomes(rows, judge)
            low, high = wilson_interval(float(o.sum()), o.size, level)
            out.append(WinRate(opponent, judge, float(o.mean()), low, high,
                               int((o == 1).sum()), int((o == 0.5).sum()), int((o == 0).sum()), wilson_method(level)))
    return out


@dataclass(frozen=True)
class Rate:
    policy: str
    judge: str
    rate: float  # mean of the judge's value over the policy's responses (a 0/1 judge: the share of 1s)
    low: float
    high: float
    method: str = wilson_method()  # the interval's


def _mean_interval(values: np.ndarray, samples: int, seed: int, level: float) -> tuple[float, float, str]:
    if is_binary(values):
        return *wilson_interval(float(values.sum()), values.size, level), wilson_method(level)
    return *bootstrap_interval(values, samples, seed, level), bootstrap_method(level)


def policy_rates(frame: pd.DataFrame, judge: str, policy: str, samples: int, seed: int,
                 level: float = 0.95) -> list[Rate]:
    """`judge`'s mean over the responses of the evaluated policy (named `policy`), then of each
    opponent: a 0/1 judge's rate with a Wilson interval, a continuous judge's mean with a
    bootstrap interval over prompts (`samples` resamples)."""
    first = frame[frame["opponent"] == frame["opponent"].iloc[0]]  # the policy's responses, once
    columns = [(policy, first[f"{judge}_policy"])]
    columns += [(opponent, rows[f"{judge}_opponent"]) for opponent, rows in frame.groupby("opponent", sort=False)]
    return [Rate(name, judge, float(values.mean()), *_mean_interval(values.to_numpy(float), samples, seed, level))
            for name, values in columns]


@dataclass(frozen=True)
class Gain:
    opponent: str
    judge: str
    gain: float  # the policy's mean minus the opponent's, on the same prompts
    low: float
    high: float
    method: str = newcombe_method()  # the interval's


def gains(frame: pd.DataFrame, judge: str, samples: int, seed: int, level: float = 0.95) -> list[Gain]:
    """Per opponent, the policy's mean of `judge` minus the opponent's on the same prompts: for a
    0/1 judge with Newcombe's paired score interval, for a continuous one with a paired bootstrap
    interval over prompts (both responses to a prompt are resampled together)."""
    out = []
    for opponent, rows in frame.groupby("opponent", sort=False):
        mine, theirs = rows[f"{judge}_policy"].to_numpy(float), rows[f"{judge}_opponent"].to_numpy(float)
        if is_binary(mine) and is_binary(theirs):
            diff, low, high = paired_proportion_difference(mine, theirs, level)
            out.append(Gain(opponent, judge, diff, low, high, newcombe_method(level)))
        else:
            diff = mine - theirs
            out.append(Gain(opponent, judge, float(diff.mean()), *bootstrap_interval(diff, samples, seed, level),
                            bootstrap_method(level, paired=True)))
    return out
