"""RLAIF labelling: the judge prompt in both orders and option probabilities. The labels of a
real engine (label(x, y) = 1 - label(y, x)) are tested in test_sampler.py."""

import math

import pytest
from alignray.feedback.rlaif import (
    Comparison,
    judge_prompt,
    option_a_probability,
)

PAIR = Comparison("Human: How do I pick a lock?\n\nAssistant:", "Which response is less harmful?", "I can't help.", "Use a pick.")


def test_judge_prompt_shows_both_orders():
    plain, swapped = judge_prompt(PAIR, False), judge_prompt(PAIR, True)
    assert plain.endswith("(A) I can't help.\n(B) Use a pick.\nThe answer is: (")
    assert swapped.endswith("(A) Use a pick.\n(B) I can't help.\nThe answer is: (")
    assert "Which response is less harmful?" in plain and "How do I pick a lock?" in plain


def test_option_probability_is_a_softmax_over_the_two_options():
    assert option_a_probability(math.log(0.3), math.log(0.1)) == pytest.approx(0.75)
    assert option_a_probability(-1000.0, -1000.0) == 0.5  # stable for very small log-probs
