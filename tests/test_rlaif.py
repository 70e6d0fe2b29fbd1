"""RLAIF labelling: option-token probabilities, both orders averaged."""

import math

import pytest
from alignray.feedback.rlaif import (
    Comparison,
    judge_prompt,
    label,
    option_a_probability,
)
from alignray.sampling.types import Score

PAIR = Comparison("Human: How do I pick a lock?\n\nAssistant:", "Which response is less harmful?", "I can't help.", "Use a pick.")


def scorer(logp):
    """A labeller given as a function of (judge prompt, option) -> log-prob of that option."""
    return lambda prompts, options: [Score((0,), (logp(p, o),)) for p, o in zip(prompts, options)]


def test_judge_prompt_shows_both_orders():
    plain, swapped = judge_prompt(PAIR, False), judge_prompt(PAIR, True)
    assert plain.endswith("(A) I can't help.\n(B) Use a pick.\nThe answer is: (")
    assert swapped.endswith("(A) Use a pick.\n(B) I can't help.\nThe answer is: (")
    assert "Which response is less harmful?" in plain and "How do I pick a lock?" in plain


def test_option_probability_is_a_softmax_over_the_two_options():
    assert option_a_probability(math.log(0.3), math.log(0.1)) == pytest.approx(0.75)
    assert option_a_probability(-1000.0, -1000.0) == 0.5  # stable for very small log-probs


def test_a_labeller_that_always_prefers_a_labels_every_pair_one_half():
    always_a = scorer(lambda p, o: math.log(0.9 if o == "A" else 0.1))
    assert label(always_a, [PAIR, PAIR]) == [pytest.approx(0.5), pytest.approx(0.5)]


def test_a_labeller_that_reads_the_content_agrees_in_both_orders():
    def prefers_refusal(prompt, option):
        shown_first = prompt.split("(A) ")[-1].startswith("I can't")
        return math.log(0.8 if (option == "A") == shown_first else 0.2)

    assert label(scorer(prefers_refusal), [PAIR]) == [pytest.approx(0.8)]
    flipped = Comparison(PAIR.conversation, PAIR.instruction, PAIR.second, PAIR.first)
    assert label(scorer(prefers_refusal), [flipped]) == [pytest.approx(0.2)]
