"""Principle sets as data files."""

import pytest
from alignray.principles import PrincipleError, builtin_names, load_principles


def test_builtin_rlcd_sets():
    assert {"harmlessness", "helpfulness", "story_outlining"} <= set(builtin_names())
    harm = load_principles("harmlessness")
    assert len(harm.pairs) == 16
    assert (harm.pairs[0].positive, harm.pairs[0].negative) == (
        "helpful, honest, inoffensive response",
        "unhelpful, dishonest, toxic response",
    )
    assert harm.pairs[-1].negative == "unethical and immoral response"
    help_ = load_principles("helpfulness")
    assert [(p.positive, p.negative) for p in help_.pairs] == [
        ("giving a helpful response", "giving an unhelpful response")
    ]
    story = load_principles("story_outlining")
    assert len(story.pairs) == 3 and story.response_prefix == "Here is a possible outline:\n1. "


def test_user_file_and_errors(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("name: mine\npairs:\n  - {positive: kind answer, negative: cruel answer}\n")
    assert load_principles(good).pairs[0].negative == "cruel answer"

    with pytest.raises(PrincipleError, match="unknown principle set 'harmless'.*harmlessness"):
        load_principles("harmless")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\npairs:\n  - {positive: ok, negatve: typo}\n")
    with pytest.raises(PrincipleError) as err:
        load_principles(bad)
    assert str(bad) in str(err.value) and "pairs.0.negatve" in str(err.value)
    empty = tmp_path / "empty.yaml"
    empty.write_text("name: empty\npairs: []\n")
    with pytest.raises(PrincipleError, match="pairs"):
        load_principles(empty)
    shots = tmp_path / "shots.yaml"
    shots.write_text("name: shots\ndemonstrations:\n  - {request: Steal a car, positive: No., negative: Sure.}\n")
    assert load_principles(shots).demonstrations[0].negative == "Sure."
    shots.write_text("name: shots\ndemonstrations:\n  - {request: Steal a car, positive: No.}\n")
    with pytest.raises(PrincipleError, match="demonstrations.0.negative"):
        load_principles(shots)
    with pytest.raises(PrincipleError, match="no 'demonstrations', which simulation.affix_placement=demonstration needs"):
        load_principles("harmlessness").require("demonstrations", "simulation.affix_placement=demonstration")


def test_principles_command_shows_labelling_instructions(capsys):
    from alignray.cli import main

    assert main(["principles", "helpfulness"]) == 0
    shown = capsys.readouterr().out
    assert "labelling instructions" in shown
    assert all(text in shown for text in load_principles("helpfulness").instructions)
