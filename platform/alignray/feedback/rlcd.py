"""RLCD preference-data simulation (Yang et al. 2023, arXiv 2307.12950).

For each conversation one contrast pair is drawn (seeded). The positive prompt p+ puts the
positive affix before the colon of the final ``Assistant:`` turn and the negative affix on every
earlier ``Assistant:`` turn; p- is the mirror image, so p+ and p- differ only in the affixes.
The output o+ of p+ is `chosen` and o- of p- is `rejected` (sampled by
`alignray.feedback.plans.sample_pairs`); nothing is scored.
Two placements are ours, not the paper's (see `contrast_prompts`): the affix as a system
instruction, and example exchanges instead of affixes (a principle set's `demonstrations`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from alignray.data.conversation import ASSISTANT_TURN, Conversation
from alignray.feedback.plans import ContrastPrompts, Plan, RenderChat, neutral_prompt
from alignray.principles import ContrastPair, Demonstration, PrincipleSet


def _transcript(text: str, final: str, earlier: str) -> str:
    turns = list(ASSISTANT_TURN.finditer(text))
    pieces, pos = [], 0
    for k, m in enumerate(turns):
        affix = final if k == len(turns) - 1 else earlier
        pieces += [text[pos : m.start()], f"Assistant ({affix}):"]
        pos = m.end()
    return "".join(pieces) + text[pos:]


def _chat(conv: Conversation, render: RenderChat, final: str | None, earlier: str | None) -> str:
    messages = [
        {"role": r, "content": f"({earlier}) {c}" if r == "assistant" and earlier else c}
        for r, c in conv.messages
    ]
    return render(messages) + (f"({final}) " if final else "")


SYSTEM_AFFIX = "Your reply: {affix}."  # affix_placement=system: the instruction that carries the affix


def _system(conv: Conversation, render: RenderChat | None, affix: str) -> str:
    """The conversation with the affix as an instruction before it: a system message (chat; put
    in front of an existing one) or a header line (transcript). Every turn marker stays plain."""
    line = SYSTEM_AFFIX.format(affix=affix)
    if conv.transcript is not None:
        return f"{line}\n\n{conv.transcript}"
    messages = conv.message_dicts()
    if messages[0]["role"] == "system":
        messages[0] = {"role": "system", "content": f"{line} {messages[0]['content']}"}
    else:
        messages.insert(0, {"role": "system", "content": line})
    return render(messages)


def _demonstrated(conv: Conversation, render: RenderChat | None, shots: list[tuple[str, str]]) -> str:
    """The conversation after the example exchanges `shots` ((request, reply) turns): after the
    system message of a chat, or before the first ``Human:`` turn of a transcript."""
    if conv.transcript is not None:
        return "".join(f"Human: {q}\n\nAssistant: {a}\n\n" for q, a in shots) + conv.transcript
    messages = conv.message_dicts()
    at = 1 if messages[0]["role"] == "system" else 0
    turns = [{"role": r, "content": c} for q, a in shots for r, c in (("user", q), ("assistant", a))]
    return render(messages[:at] + turns + messages[at:])


def contrast_prompts(
    conv: Conversation, pair: ContrastPair | None, response_prefix: str = "", render: RenderChat | None = None,
    placement: str = "turn", demonstrations: Sequence[Demonstration] = (),
) -> ContrastPrompts:
    """Build (neutral, p+, p-) for one conversation; chat conversations need `render`.
    `placement`: "turn" (the paper's: affixes on the assistant turns), "system" (the affix as
    an instruction before the conversation, see _system) or "demonstration" (no affix: the
    `demonstrations` as earlier turns, answered with their positive replies in p+ and their
    negative ones in p-)."""
    neutral, lead = neutral_prompt(conv, response_prefix, render)
    if placement == "demonstration":
        positive = _demonstrated(conv, render, [(d.request, d.positive) for d in demonstrations])
        negative = _demonstrated(conv, render, [(d.request, d.negative) for d in demonstrations])
    elif placement == "system":
        positive, negative = _system(conv, render, pair.positive), _system(conv, render, pair.negative)
    elif conv.transcript is not None:
        positive = _transcript(neutral, pair.positive, pair.negative)
        negative = _transcript(neutral, pair.negative, pair.positive)
    else:
        positive = _chat(conv, render, pair.positive, pair.negative)
        negative = _chat(conv, render, pair.negative, pair.positive)
    return ContrastPrompts(neutral, positive + lead, negative + lead)


def plan(
    convs: Sequence[Conversation], principles: PrincipleSet, seed: int, render: RenderChat | None,
    placement: str = "turn",
) -> list[Plan]:
    """One contrast pair per conversation (seeded), its affixes placed by `placement`; with
    placement "demonstration" every plan uses every demonstration and no contrast pair
    (pair_index -1)."""
    rng = random.Random(seed)
    plans = []
    for conv in convs:
        if placement == "demonstration":
            made = contrast_prompts(conv, None, principles.response_prefix, render, placement, principles.demonstrations)
            plans.append(Plan(conv, -1, made))
        else:
            k = rng.randrange(len(principles.pairs))
            made = contrast_prompts(conv, principles.pairs[k], principles.response_prefix, render, placement)
            plans.append(Plan(conv, k, made))
    return plans
