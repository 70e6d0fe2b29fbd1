"""rDPO preference data (Gallego 2024, arXiv 2402.08005): critique and revise, then judge.

For each prompt the teacher, in one chat through its chat template,
1. answers the conversation,
2. is asked (one of the set's `critiques`, drawn per prompt) to criticise that answer,
3. is asked to rewrite the answer in the light of its critique.
The revision is `chosen`, the first answer `rejected`. A judge scores both and
``preference_prob = sigmoid((s_chosen - s_rejected) / judge.temperature)``: a pairwise (A)/(B)
judge prompt (s_c - s_r = logit of P(revision is better), both orders averaged), the reward
models / endpoint of the `reward` section, or an offline classifier (s = -P(profane) or
-P(hateful or offensive)). A prompt whose answer or revision is empty, or whose revision repeats
the answer, is dropped and counted. An answer or revision cut off at sampler.max_tokens is kept
as it is, loses its pair, or loses to the other when that one finished (`simulation.truncated`,
see `truncation`; the judge still scores the pair, but preference_prob is 1.0 for the finished side).
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

from alignray.config import SimulateConfig
from alignray.data.conversation import TURN_STOP, clean_output, cut_off
from alignray.feedback import rlaif, truncation
from alignray.feedback.plans import Plan
from alignray.feedback.truncation import Verdict, relabels, verdict
from alignray.principles import Critique, PrincipleSet
from alignray.rewards import judges
from alignray.rewards.scorers import reward_source, scalar_reward
from alignray.sampling.clients import Models
from alignray.sampling.types import SamplingSpec

STEPS = ("answering", "critiquing", "revising")
TALLY = "{kept} revision pairs ({dropped} prompts dropped: an empty step, or a revision that repeats the answer)"


def critique_messages(base: list[dict], answer: str, request: Critique) -> list[dict]:
    """The chat after the answer: the teacher is asked to criticise it."""
    return [*base, {"role": "assistant", "content": answer}, {"role": "user", "content": request.critique}]


def revision_messages(base: list[dict], answer: str, request: Critique, critique: str) -> list[dict]:
    """The chat after the critique: the teacher is asked to rewrite its answer."""
    return [
        *critique_messages(base, answer, request),
        {"role": "assistant", "content": critique},
        {"role": "user", "content": request.revision},
    ]


class Chain(NamedTuple):
    answer: str  # "" where a step came out empty (or was not reached)
    critique: str
    revision: str
    answer_truncated: bool  # cut off at sampler.max_tokens
    revision_truncated: bool


def _chain(teacher, bases: list[list[dict]], requests: list[Critique], cfg: SimulateConfig) -> list[Chain]:
    """The chain of every conversation."""
    def step(k: int, conversations: list[list[dict]]) -> list[tuple[str, bool]]:
        spec = SamplingSpec(
            temperature=cfg.sampler.temperature, top_p=cfg.sampler.top_p, max_tokens=cfg.sampler.max_tokens,
            stop=TURN_STOP, seed=cfg.simulation.seed * 1_000_003 + k * len(bases),
        )
        replies = teacher.chat(conversations, spec, desc=STEPS[k]) if conversations else []
        return [(clean_output(r.text), cut_off(r.text, r.finish_reason)) for r in replies]

    answers = step(0, bases)
    live = [i for i, (a, _) in enumerate(answers) if a]
    critiques = dict(zip(live, step(1, [critique_messages(bases[i], answers[i][0], requests[i]) for i in live])))
    live = [i for i in live if critiques[i][0]]
    revisions = dict(zip(live, step(2, [revision_messages(bases[i], answers[i][0], requests[i], critiques[i][0])
                                        for i in live])))
    none = ("", False)
    return [Chain(answers[i][0], critiques.get(i, none)[0], revisions.get(i, none)[0], answers[i][1], revisions.get(i, none)[1])
            for i in range(len(bases))]


def preference_prob(v: Verdict, difference: float, tau: float) -> float:
    """P(the revision is better): the judge's sigmoid((s_c - s_r) / tau), or, where penalise
    decided (side 0 is the revision), 1.0 when only the answer was cut off and 0.0 when only the
    revision was."""
    if v is Verdict.FIRST_WINS:
        return 1.0
    if v is Verdict.SECOND_WINS:
        return 0.0
    return 1.0 / (1.0 + math.exp(-difference / tau))


def _score_difference(cfg: SimulateConfig, prompts: list[str], chosen: list[str], rejected: list[str], principles: PrincipleSet,
                      models: Models) -> list[float]:
    """s_chosen - s_rejected for every pair, by the configured judge."""
    kind = cfg.judge.kind
    if kind in ("profanity", "hate"):
        judge = judges.JUDGES[kind].score
        return (judge(rejected) - judge(chosen)).tolist()  # s = -P(...)
    if kind == "reward":
        reward = reward_source(cfg.reward, cfg.sampler.max_model_len)
        s = scalar_reward(reward(prompts + prompts, chosen + rejected), cfg.reward).tolist()
        return [c - r for c, r in zip(s[: len(prompts)], s[len(prompts) :])]
    questions = [random.Random(f"rdpo-judge:{cfg.simulation.seed}:{i}").choice(principles.instructions) for i in range(len(prompts))]
    comparisons = [rlaif.Comparison(p, q, c, r) for p, q, c, r in zip(prompts, questions, chosen, rejected)]
    judge_model = models.get(cfg.judge.model or cfg.model.name)  # the teacher's engines, when it is the same model
    probs = rlaif.label(lambda p, o: judge_model.option_logprobs(p, o, desc="judging"), comparisons)
    eps = 1e-6
    return [math.log(min(max(p, eps), 1 - eps)) - math.log(1 - min(max(p, eps), 1 - eps)) for p in probs]


def run(cfg: SimulateConfig, plans: list[Plan], principles: PrincipleSet) -> tuple[list[dict], int, dict]:
    """Answer, critique, revise and judge; returns (rows, prompts dropped for another reason than
    truncation, metrics)."""
    seed = cfg.simulation.seed
    requests = [random.Random(f"rdpo:{seed}:{i}").choice(principles.critiques) for i in range(len(plans))]
    bases = [p.conv.message_dicts() for p in plans]
    with Models(cfg, seed) as models:
        chains = _chain(models.get(cfg.simulation.teacher or cfg.model.name), bases, requests, cfg)
        complete = [i for i, (a, c, r, _, _) in enumerate(chains) if a and c and r and r != a]
        verdicts = {i: verdict(chains[i].revision_truncated, chains[i].answer_truncated, cfg.simulation.truncated)
                    for i in complete}
        kept = [i for i in complete if verdicts[i] is not Verdict.DROP]
        if not kept:
            lost = f" ({len(complete)} lost to simulation.truncated=drop: raise sampler.max_tokens)" if complete else ""
            raise RuntimeError(f"none of {len(plans)} prompts got an answer, a critique and a different revision{lost};"
                               " nothing to write")
        prompts = [plans[i].prompts.neutral for i in kept]
        chosen, rejected = [chains[i].revision for i in kept], [chains[i].answer for i in kept]
        if cfg.judge.kind != "model":
            models.close()  # the other judges need no engine
        diffs = _score_difference(cfg, prompts, chosen, rejected, principles, models)
    rows = [
        {
            "prompt": prompts[k], "chosen": chosen[k], "rejected": rejected[k],
            "preference_prob": preference_prob(verdicts[i], diffs[k], cfg.judge.temperature),
            "judge_score_difference": diffs[k], "chosen_truncated": chains[i].revision_truncated,
            "rejected_truncated": chains[i].answer_truncated,
            "critique": chains[i].critique, "critique_request": requests[i].critique, "revision_request": requests[i].revision,
            "method": "rdpo", "principles": principles.name, "judge": cfg.judge.kind, "source": plans[i].conv.origin,
            "model": cfg.simulation.teacher or cfg.model.name, "seed": seed,
        }
        for k, i in enumerate(kept)
    ]
    metrics = {
        "conversations": len(plans), "pairs": len(rows), "dropped": len(plans) - len(complete),
        "judge_prefers_revision": sum(d > 0 for d in diffs) / len(diffs),
        **truncation.metrics(sum(chains[i].answer_truncated + chains[i].revision_truncated for i in complete),
                             len(complete) - len(kept), sum(relabels(verdicts[i], True) for i in kept)),
    }
    return rows, len(plans) - len(complete), metrics
