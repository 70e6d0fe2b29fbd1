"""What every feedback method samples from: one `Plan` per conversation, and a pair of outputs
sampled from it (`sample_pairs`).

A plan holds the prompt the preference model sees (neutral) and the prompts the two sides of
a pair are sampled from: both the neutral prompt plus the principle set's response prefix
(`neutral_plans`: RLAIF, MORLAIF, RRHF, rDPO), unless RLCD's contrast prompts make them differ
(`alignray.feedback.rlcd.plan`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple

from alignray.data.conversation import Conversation, clean_output, cut_off
from alignray.sampling.types import SamplingSpec

RenderChat = Callable[[list[dict[str, str]]], str]  # messages -> text ending in the open turn


@dataclass(frozen=True)
class ContrastPrompts:
    neutral: str  # without affixes or response prefix: the prompt the preference model sees
    positive: str  # p+, ending with the response prefix
    negative: str  # p-, ending with the response prefix


@dataclass(frozen=True)
class Plan:
    conv: Conversation
    pair_index: int
    prompts: ContrastPrompts


def neutral_prompt(conv: Conversation, response_prefix: str, render: RenderChat | None) -> tuple[str, str]:
    """(the prompt without affixes, what follows it before the response: the response prefix)."""
    if conv.transcript is not None:
        return conv.transcript, f" {response_prefix}" if response_prefix else ""
    if render is None:
        raise ValueError(f"{conv.origin}: chat conversations need the model's chat template")
    return render(conv.message_dicts()), response_prefix


def neutral_plans(convs: Sequence[Conversation], response_prefix: str, render: RenderChat | None) -> list[Plan]:
    """Both sides of every pair sampled from the neutral prompt; pair_index is -1."""
    plans = []
    for conv in convs:
        neutral, lead = neutral_prompt(conv, response_prefix, render)
        plans.append(Plan(conv, -1, ContrastPrompts(neutral, neutral + lead, neutral + lead)))
    return plans


class Sample(NamedTuple):
    text: str  # cleaned, non-empty
    seed: int
    attempts: int
    truncated: bool  # cut off at max_tokens (`cut_off`)


def request_seed(seed: int, index: int, side: int, attempt: int) -> int:
    """The sampling seed of one output: fixed by (run seed, conversation, side, attempt)."""
    # the "rlcd:" salt predates the other methods; changing it would change every seed
    return random.Random(f"rlcd:{seed}:{index}:{side}:{attempt}").randrange(2**31)


def sample_pairs(
    generate: Callable[[list[str], list[SamplingSpec], str], list],
    plans: Sequence[Plan],
    base: SamplingSpec,
    seed: int,
    max_retries: int,
) -> tuple[dict[tuple[int, int], Sample], set[int]]:
    """Sample o+ (side 0) and o- (side 1) of every plan, re-sampling empty outputs (a cut-off
    output is not empty: it is kept, marked).

    Returns ({(plan index, side): sample}, indices of dropped plans).
    """
    done: dict[tuple[int, int], Sample] = {}
    pending = [(i, side) for i in range(len(plans)) for side in (0, 1)]
    for attempt in range(max_retries + 1):
        if not pending:
            break
        prompts = [(plans[i].prompts.positive, plans[i].prompts.negative)[s] for i, s in pending]
        seeds = [request_seed(seed, i, s, attempt) for i, s in pending]
        specs = [replace(base, seed=sd) for sd in seeds]
        label = "sampling o+ / o-" if attempt == 0 else f"re-sampling empty outputs ({attempt})"
        outs = generate(prompts, specs, label)
        still = []
        for (i, s), sd, out in zip(pending, seeds, outs, strict=True):
            text = clean_output(out[0].text)
            if text:
                done[(i, s)] = Sample(text, sd, attempt + 1, cut_off(out[0].text, out[0].finish_reason))
            else:
                still.append((i, s))
        pending = still
    return done, {i for i, _ in pending}
