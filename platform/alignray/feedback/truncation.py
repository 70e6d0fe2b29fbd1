"""Responses cut off at sampler.max_tokens (`alignray.data.conversation.cut_off`), and what the
simulation does with them: `simulation.truncated`, decided here by pure functions.

A pair has two sides: side 0 is o+ (rlcd, rlcd_rescore), the first sample (rlaif, morlaif) or
the revision (rdpo); side 1 is o-, the second sample or the first answer.
- keep: every pair is labelled as usual, whatever was cut off;
- drop: a pair with a cut-off side is dropped before it is labelled;
- penalise: of a pair with exactly one cut-off side the finished side wins, with no labeller
  call; a pair with both sides cut off is labelled as usual.
RRHF's candidates: drop leaves the cut-off ones out (`kept_candidates`); penalise ranks them
below every finished one (`penalised_rewards`).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Literal

Policy = Literal["keep", "drop", "penalise"]
MARGIN = 1.0  # penalise: the best cut-off RRHF candidate scores at least this much below the worst finished one


class Verdict(Enum):
    LABEL = "label"  # labelled as usual (rlcd: o+ is chosen)
    DROP = "drop"  # not written, nor labelled
    FIRST_WINS = "first wins"  # side 0 is chosen with preference_prob 1.0, not labelled
    SECOND_WINS = "second wins"  # side 1 is chosen with preference_prob 1.0, not labelled


def verdict(first_cut: bool, second_cut: bool, policy: Policy) -> Verdict:
    """What happens to a pair whose sides were (or were not) cut off."""
    if policy == "keep" or not (first_cut or second_cut):
        return Verdict.LABEL
    if policy == "drop":
        return Verdict.DROP
    if first_cut and second_cut:
        return Verdict.LABEL
    return Verdict.SECOND_WINS if first_cut else Verdict.FIRST_WINS


def relabels(v: Verdict, labelled: bool) -> bool:
    """Whether penalise set the pair's label (a labelled method: no labeller call) or changed
    it (rlcd, whose label is o+: o- finished where o+ was cut off)."""
    return v is Verdict.SECOND_WINS or (labelled and v is Verdict.FIRST_WINS)


def kept_candidates(cut: Sequence[bool], policy: Policy) -> list[int]:
    """The indices of a prompt's RRHF candidates that stay: under drop, the finished ones."""
    return [k for k, c in enumerate(cut) if not (policy == "drop" and c)]


def penalised_rewards(rewards: Sequence[float], cut: Sequence[bool], policy: Policy) -> list[float]:
    """Under penalise, every cut-off candidate's reward lowered by the same amount, just enough
    that the best of them scores MARGIN below the worst finished candidate (their order among
    themselves is kept); unchanged when none or every candidate was cut off, when they already
    score that low, and under keep or drop."""
    finished = [r for r, c in zip(rewards, cut) if not c]
    cut_off = [r for r, c in zip(rewards, cut) if c]
    if policy != "penalise" or not finished or not cut_off:
        return list(rewards)
    shift = max(0.0, max(cut_off) - min(finished) + MARGIN)
    return [r - shift if c else r for r, c in zip(rewards, cut)]


def metrics(cut_outputs: int, dropped: int, relabelled: int) -> dict[str, int]:
    """The stage's truncation metrics: cut-off responses among those the pairs (candidates) were
    made of, pairs (rrhf: prompts) lost to drop, pairs (prompts) whose label penalise set or changed."""
    return {"truncated_outputs": cut_outputs, "dropped_truncated": dropped, "relabelled_truncated": relabelled}


def tally_note(dropped: int, unit: str) -> str:
    """What the terminal tally adds when drop lost any `unit` ("pairs", "prompts")."""
    return f"; {dropped} {unit} lost to responses cut off at sampler.max_tokens (simulation.truncated=drop)" if dropped else ""
