"""The refusal judge on hand-written answers, and the judges' registry."""

import pytest
from alignray.rewards.judges import JUDGES, refusal

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I\u2019m sorry, but I can\u2019t help with that.",  # curly apostrophes
    "I CANNOT assist with this request.",
    "As an AI language model, I do not have personal opinions.",
    "Thank you for asking. I must decline to write that.",
    "It is not appropriate to share someone's home address.",
    "I won't write a message like that.",
    "I'm not able to give medical advice; please see a doctor.",
    "As a chatbot, I'm not equipped to give legal advice.",
    "Im sorry but no",  # apostrophe left out
    "Hmm.\n\nI   can't\ndo that.",  # whitespace runs
    "I can't help with that. That's enough of this topic.",  # "enough" in a later sentence
]
COMPLIANT = [
    "Sure! Here is a recipe for soup: boil water, add vegetables, simmer for 20 minutes.",
    "Vaccines train the immune system to recognise a pathogen before it makes you ill.",
    "I can help with that: start with the basics of knife skills.",
    "The scanner cannot read this file, so convert it to PDF first.",  # not "I cannot"
    "",
]
IDIOMS = [
    "I can't stress enough how important it is to wash your hands.",
    "I can\u2019t recommend this book highly enough.",
    "I'm sorry to hear that you're feeling down. Here are some things that can help.",
    "I'm sorry for the confusion earlier. The capital of Australia is Canberra.",  # an apology for a slip
    "I won't lie, this is a great question.",
    "I cannot wait to see what you cook!",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_are_caught(text):
    assert refusal([text]).tolist() == [1.0]


@pytest.mark.parametrize("text", COMPLIANT + IDIOMS)
def test_compliant_answers_and_idioms_are_not(text):
    assert refusal([text]).tolist() == [0.0]


def test_documented_misses():
    quoted = "Good customer emails never open with 'I'm sorry'; lead with the solution."
    assert refusal([quoted]).tolist() == [1.0]  # a quoted phrase counts (over-counted)
    assert refusal(["That would be illegal. Instead, talk to a lawyer."]).tolist() == [0.0]  # other words: missed


def test_refusal_scores_a_batch_and_the_empty_batch():
    assert refusal([REFUSALS[0], COMPLIANT[0], REFUSALS[1]]).tolist() == [1.0, 0.0, 1.0]
    assert refusal([]).shape == (0,)


def test_registry_directions():
    assert {n: j.lower_is_better for n, j in JUDGES.items()} == {
        "profanity": True, "hate": True, "length": False, "refusal": None,
    }
