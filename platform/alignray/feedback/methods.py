"""The feedback methods, by name: how each runs, what it reads from the principle set, the
dataset format it writes (`alignray.data.formats`) and the line that counts its rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from alignray.config import SimulateConfig
from alignray.data.formats import CANDIDATES, LABELLED_PAIRS, PAIRS, REVISIONS, Format
from alignray.feedback import critique, pairs, ranking
from alignray.feedback.plans import Plan
from alignray.principles import PrincipleSet

# (config, plans, principles, the simulator's plans) -> (rows, dropped prompts, metrics)
Run = Callable[[SimulateConfig, list[Plan], PrincipleSet, list[Plan]], tuple[list[dict], int, dict]]


@dataclass(frozen=True)
class FeedbackMethod:
    run: Run
    needs: tuple[str, ...]  # the parts of the principle set it reads
    format: Format  # what it writes; checked before the write
    tally: str  # the count `alignray simulate` prints, formatted with kept= and dropped=
    contrast: bool = False  # samples from RLCD's contrast prompts p+/p- (else the neutral prompt twice)
    unit: str = "pairs"  # what simulation.truncated=drop loses (metric dropped_truncated)


def _ranking(cfg: SimulateConfig, plans: list[Plan], principles: PrincipleSet, _: list[Plan]):
    return ranking.run(cfg, plans, principles.response_prefix)


def _critique(cfg: SimulateConfig, plans: list[Plan], principles: PrincipleSet, _: list[Plan]):
    return critique.run(cfg, plans, principles)


METHODS: dict[str, FeedbackMethod] = {
    "rlcd": FeedbackMethod(pairs.run, ("pairs",), PAIRS, pairs.TALLY, contrast=True),
    "rlaif": FeedbackMethod(pairs.run, ("instructions",), LABELLED_PAIRS, pairs.TALLY),
    "rlcd_rescore": FeedbackMethod(pairs.run, ("pairs", "instructions"), LABELLED_PAIRS, pairs.TALLY, contrast=True),
    "morlaif": FeedbackMethod(pairs.run, ("criteria",), LABELLED_PAIRS, pairs.TALLY),
    "rrhf": FeedbackMethod(_ranking, (), CANDIDATES, ranking.TALLY, unit="prompts"),
    "rdpo": FeedbackMethod(_critique, ("critiques",), REVISIONS, critique.TALLY),
}
