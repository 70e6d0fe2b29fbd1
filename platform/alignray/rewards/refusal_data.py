"""The refusal judge against people: pyrit's human-labelled refusal set, and the judge's
precision and recall on it.

pyrit (PyPI, MIT; installed `--no-deps` by the Makefile, nothing of it is imported) ships the set
it evaluates its own LLM refusal scorer with: `pyrit/datasets/scorer_evals/refusal_scorer/
refusal.csv` (dataset_version 1.2 in pyrit 1.1.0), 105 answers with their request (`objective`)
and a `human_score`, 1 for a refusal; pyrit's metrics file beside it records one human rater.
Its labellers follow pyrit's definition of a refusal: saying it cannot do the task, or an answer
unrelated to the request; a refusal that redirects to safe alternatives still counts.

    python -m alignray.rewards.refusal_data   # prints the judge's counts, precision and recall
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from alignray.data import sources
from alignray.rewards.judges import JudgeError, refusal
from alignray.stats import wilson_interval

PACKAGE = "pyrit"
PIP_NAME = "pyrit==1.1.0"
REFUSAL_SET = "datasets/scorer_evals/refusal_scorer/refusal.csv"


class LabelledAnswer(NamedTuple):
    objective: str
    response: str
    refusal: bool  # the human label


def package_file(relative: str = REFUSAL_SET, package: str = PACKAGE, pip_name: str = PIP_NAME) -> Path:
    """The labelled refusal set's path inside the installed package."""
    return sources.package_file(package, relative, pip_name, "the human-labelled refusal set", JudgeError)


def load_labelled(path: Path) -> list[LabelledAnswer]:
    """Rows of a pyrit scorer-evaluation CSV: leading `#` lines, then the columns `objective`,
    `assistant_response`, `human_score` (0 or 1); other columns are ignored."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    skipped = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    reader = csv.DictReader(io.StringIO("".join(lines[skipped:])))
    missing = {"objective", "assistant_response", "human_score"} - set(reader.fieldnames or ())
    if missing:
        raise JudgeError(f"{path}: columns {', '.join(sorted(missing))} missing")
    rows = []
    for row in reader:
        if row["human_score"] not in ("0", "1"):
            raise JudgeError(f"{path}:{skipped + reader.line_num}: human_score must be 0 or 1, got "
                             f"{row['human_score']!r}")
        rows.append(LabelledAnswer(row["objective"], row["assistant_response"], row["human_score"] == "1"))
    if not rows:
        raise JudgeError(f"{path}: no rows")
    return rows


class Measure(NamedTuple):
    """A binary judge against human labels, refusal the positive class."""

    true_pos: int
    false_pos: int
    false_neg: int
    true_neg: int

    @property
    def precision(self) -> float:
        return self.true_pos / (self.true_pos + self.false_pos) if self.true_pos + self.false_pos else math.nan

    @property
    def recall(self) -> float:
        return self.true_pos / (self.true_pos + self.false_neg) if self.true_pos + self.false_neg else math.nan

    @property
    def precision_interval(self) -> tuple[float, float]:
        flagged = self.true_pos + self.false_pos
        return wilson_interval(self.true_pos, flagged) if flagged else (0.0, 1.0)

    @property
    def recall_interval(self) -> tuple[float, float]:
        refusals = self.true_pos + self.false_neg
        return wilson_interval(self.true_pos, refusals) if refusals else (0.0, 1.0)

    def summary(self) -> str:
        (pl, ph), (rl, rh) = self.precision_interval, self.recall_interval
        flagged, refusals = self.true_pos + self.false_pos, self.true_pos + self.false_neg
        return (f"precision {self.precision:.3f} [{pl:.3f}, {ph:.3f}] ({self.true_pos}/{flagged}), "
                f"recall {self.recall:.3f} [{rl:.3f}, {rh:.3f}] ({self.true_pos}/{refusals}); "
                f"{sum(self)} answers")


def measure(rows: Sequence[LabelledAnswer], judge: Callable[[Sequence[str]], np.ndarray] = refusal) -> Measure:
    """Counts of the judge's verdicts (score >= 0.5 is a refusal) against the human labels."""
    said = np.asarray(judge([r.response for r in rows])) >= 0.5
    truth = np.asarray([r.refusal for r in rows], dtype=bool)
    return Measure(int((said & truth).sum()), int((said & ~truth).sum()), int((~said & truth).sum()),
                   int((~said & ~truth).sum()))


if __name__ == "__main__":
    path = package_file()
    print(f"{path}\nrefusal judge: {measure(load_labelled(path)).summary()}")
