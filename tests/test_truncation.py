"""simulation.truncated: what becomes of responses cut off at sampler.max_tokens. The decisions
are pure functions, checked here without Ray; tests/test_simulate_e2e.py runs them on real samples."""

import math

import pytest
from alignray.config import SimulateConfig, load_config
from alignray.data.conversation import Conversation, cut_off
from alignray.feedback import rlcd
from alignray.feedback.critique import preference_prob
from alignray.feedback.pairs import Labels, decided, pair_row
from alignray.feedback.plans import Sample, neutral_plans
from alignray.feedback.truncation import (
    MARGIN,
    Verdict,
    kept_candidates,
    penalised_rewards,
    relabels,
    tally_note,
    verdict,
)
from alignray.principles import load_principles

L, D, FIRST, SECOND = Verdict.LABEL, Verdict.DROP, Verdict.FIRST_WINS, Verdict.SECOND_WINS


@pytest.mark.parametrize("policy,expected", [
    #            (first cut, second cut): neither,  second,  first,  both
    ("keep", [L, L, L, L]),
    ("drop", [L, D, D, D]),
    ("penalise", [L, FIRST, SECOND, L]),
])
def test_a_pairs_verdict_by_which_side_was_cut_off(policy, expected):
    sides = [(False, False), (False, True), (True, False), (True, True)]
    assert [verdict(first, second, policy) for first, second in sides] == expected


def test_relabelled_means_the_label_was_set_or_changed():
    # a labelled method's pair decided either way skipped the labeller; rlcd's label (o+) changes only when o- wins
    assert [relabels(v, labelled=True) for v in (L, FIRST, SECOND)] == [False, True, True]
    assert [relabels(v, labelled=False) for v in (L, FIRST, SECOND)] == [False, False, True]


def test_the_policy_is_a_typed_config_field_named_in_errors():
    assert SimulateConfig().simulation.truncated == "keep"
    assert load_config(None, ["simulation.truncated=penalise"], SimulateConfig).simulation.truncated == "penalise"
    with pytest.raises(ValueError, match="simulation.truncated.*'keep', 'drop' or 'penalise'"):
        load_config(None, ["simulation.truncated=cut"], SimulateConfig)


@pytest.mark.parametrize("text,reason,expected", [
    ("It is", "length", True),  # the engine stopped at max_tokens
    ("It is done.", "stop", False),  # EOS or a stop string
    ("It is done.\n\nHuman: and then", "length", False),  # ended at the next turn (clean_output cuts there)
    ("It is", None, False),
])
def test_cut_off_is_the_token_limit_inside_the_reply(text, reason, expected):
    assert cut_off(text, reason) is expected


def test_rrhf_drop_keeps_only_finished_candidates():
    cut = [False, True, False, True]
    assert kept_candidates(cut, "drop") == [0, 2]
    assert kept_candidates(cut, "keep") == kept_candidates(cut, "penalise") == [0, 1, 2, 3]


def test_rrhf_penalise_ranks_every_cut_off_candidate_below_every_finished_one():
    rewards, cut = [0.2, 3.0, -1.0, 0.5, 1.0], [False, True, False, True, False]
    ranked = penalised_rewards(rewards, cut, "penalise")
    finished = [r for r, c in zip(ranked, cut) if not c]
    cut_off_ = [r for r, c in zip(ranked, cut) if c]
    assert finished == [0.2, -1.0, 1.0]  # unchanged
    assert max(cut_off_) == pytest.approx(min(finished) - MARGIN)  # just below the worst finished one
    assert cut_off_[0] - cut_off_[1] == pytest.approx(3.0 - 0.5)  # their order and spread kept
    assert penalised_rewards([0.0, -5.0], [False, True], "penalise") == [0.0, -5.0]  # already below
    for unchanged in ([rewards, cut, "keep"], [rewards, [True] * 5, "penalise"], [rewards, [False] * 5, "penalise"]):
        assert penalised_rewards(*unchanged) == rewards


def test_rdpo_penalise_labels_the_finished_side_one():
    # side 0 is the revision (chosen): preference_prob is P(revision is better)
    assert preference_prob(FIRST, -3.0, 1.0) == 1.0  # only the answer was cut off
    assert preference_prob(SECOND, 3.0, 1.0) == 0.0  # only the revision was: the answer wins
    assert preference_prob(L, 0.8, 0.5) == pytest.approx(1 / (1 + math.exp(-1.6)))


def test_the_tally_names_what_drop_lost_only_when_it_lost_something():
    assert tally_note(0, "pairs") == ""
    assert tally_note(3, "prompts").startswith("; 3 prompts lost to responses cut off at sampler.max_tokens")


def _pair(method: str, principles: str, first_cut: bool, second_cut: bool, lab: Labels | None = None):
    cfg = load_config(None, [f"simulation.method={method}", "simulation.truncated=penalise"], SimulateConfig)
    convs = [Conversation.from_question("How do I bake bread?", "transcript", "q")]
    contrast = method in ("rlcd", "rlcd_rescore")
    [plan] = rlcd.plan(convs, load_principles("harmlessness"), 0, None) if contrast else neutral_plans(convs, "", None)
    first, second = Sample("o plus", 11, 1, first_cut), Sample("o minus", 22, 1, second_cut)
    v = verdict(first_cut, second_cut, "penalise")
    return pair_row(cfg, load_principles(principles), plan, plan, first, second, lab, v, "{}")


def test_rlcd_penalise_swaps_when_only_o_plus_was_cut_off():
    row = _pair("rlcd", "harmlessness", True, False)
    assert (row["chosen"], row["chosen_seed"], row["chosen_truncated"]) == ("o minus", 22, False)
    assert (row["rejected"], row["rejected_truncated"]) == ("o plus", True)
    kept = _pair("rlcd", "harmlessness", False, True)
    assert (kept["chosen"], kept["chosen_truncated"], kept["rejected_truncated"]) == ("o plus", False, True)


@pytest.mark.parametrize("first_cut", [True, False])
def test_labelled_penalise_gives_the_finished_side_one_under_every_criterion(first_cut):
    criteria = load_principles("morlaif").criteria
    v = verdict(first_cut, not first_cut, "penalise")
    row = _pair("morlaif", "morlaif", first_cut, not first_cut, decided(v, criteria))
    assert row["chosen"] == ("o minus" if first_cut else "o plus") and row["chosen_truncated"] is False
    assert row["preference_prob"] == 1.0 and row["instructions"] is None  # no question was asked
    assert [row[f"preference_prob_{name}"] for name in criteria] == [1.0] * len(criteria)
    rescored = _pair("rlcd_rescore", "harmlessness", first_cut, not first_cut, decided(v, {"harmlessness": ()}))
    assert rescored["agrees_with_rlcd"] is (not first_cut) and rescored["preference_prob"] == 1.0
    assert rescored["instruction"] is None


def test_a_labelled_pair_keeps_the_labellers_orientation():
    lab = Labels({"harmlessness": 0.3}, {"harmlessness": "Which is kinder?"})
    row = _pair("rlaif", "harmlessness", True, True, lab)  # both cut off: labelled as usual
    assert row["chosen"] == "o minus" and row["preference_prob"] == pytest.approx(0.7)
    assert row["instruction"] == "Which is kinder?" and row["chosen_truncated"] and row["rejected_truncated"]


def test_the_policy_is_part_of_a_pipelines_simulate_stage_key():
    from pathlib import Path

    from alignray.config import PipelineConfig
    from alignray.pipelines.recipes import RECIPES
    from alignray.pipelines.run import stage_config, stage_key

    simulate = RECIPES["rlcd"][0]
    configs = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "pipelines"

    def key(*overrides):
        cfg = load_config(configs / "rlcd_tiny.yaml", list(overrides), PipelineConfig)
        return stage_key(simulate, stage_config(cfg, simulate, {}))

    keys = {key(f"stages.simulate.simulation.truncated={policy}") for policy in ("keep", "drop", "penalise")}
    assert len(keys) == 3 and key() == key("stages.simulate.simulation.truncated=keep")
