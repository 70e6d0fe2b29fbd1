"""RLAIF labelling (Constitutional-AI style; the RLCD paper's main baseline).

The labelling model reads the conversation, a principle instruction and two candidate answers
as options (A) and (B), and its next token after ``The answer is: (`` decides. No text is
generated: the label is the softmax over the log-probs of the option tokens ``A`` and ``B``
(a model client's `option_logprobs`). Each pair is judged in both orders and the two probabilities that
the first response is better are averaged, which cancels a labeller's position bias: one that
always prefers (A) labels every pair 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# (prompts, options) -> per prompt, each option's log-prob as the next token (`option_logprobs`)
ChooseFn = Callable[[Sequence[str], Sequence[str]], list[list[float]]]

JUDGE_TEMPLATE = (
    "Here is a conversation between a person and an AI assistant.\n\n{conversation}\n\n"
    "{instruction}\n"
    "Options:\n(A) {first}\n(B) {second}\n"
    "The answer is: ("
)
OPTIONS = ("A", "B")


@dataclass(frozen=True)
class Comparison:
    conversation: str  # the prompt both responses answer
    instruction: str  # the principle question, e.g. "Which response is less harmful?"
    first: str
    second: str


def judge_prompt(c: Comparison, swapped: bool, template: str = JUDGE_TEMPLATE) -> str:
    """The labelling prompt; `swapped` shows the second response as option (A). A template
    has the fields conversation, instruction, first, second and ends before the option letter."""
    first, second = (c.second, c.first) if swapped else (c.first, c.second)
    return template.format(
        conversation=c.conversation.strip(), instruction=c.instruction.strip(), first=first.strip(), second=second.strip()
    )


def option_a_probability(logp_a: float, logp_b: float) -> float:
    """P(A) from the two option tokens' log-probs, renormalised over {A, B}."""
    top = max(logp_a, logp_b)
    ea, eb = math.exp(logp_a - top), math.exp(logp_b - top)
    return ea / (ea + eb)


def label(choose: ChooseFn, comparisons: Sequence[Comparison], template: str = JUDGE_TEMPLATE) -> list[float]:
    """For each comparison, the probability that `first` is the better response: the mean of
    P(A) with `first` shown as (A) and P(B) with it shown as (B)."""
    prompts = [judge_prompt(c, swapped, template) for c in comparisons for swapped in (False, True)]
    logps = choose(prompts, OPTIONS)
    out = []
    for k in range(len(comparisons)):
        (a, b), (a_swapped, b_swapped) = logps[2 * k], logps[2 * k + 1]
        p_first_as_a = option_a_probability(a, b)
        p_first_as_b = 1.0 - option_a_probability(a_swapped, b_swapped)
        out.append(0.5 * (p_first_as_a + p_first_as_b))
    return out
