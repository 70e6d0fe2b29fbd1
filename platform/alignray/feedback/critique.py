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
the answer, is dropped and counted.
"""

from __future__ import annotations

import math
import random

from alignray.config import SimulateConfig
from alignray.data.conversation import TURN_STOP, clean_output
from alignray.feedback import rlaif
from alignray.feedback.plans import Plan
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


def _chain(teacher, bases: list[list[dict]], requests: list[Critique], cfg: SimulateConfig) -> list[tuple[str, str, str]]:
    """(answer, critique, revision) per conversation; "" where a step came out empty."""
    def step(k: int, conversations: list[list[dict]]) -> list[str]:
        spec = SamplingSpec(
            temperature=cfg.sampler.temperature, top_p=cfg.sampler.top_p, max_tokens=cfg.sampler.max_tokens,
            stop=TURN_STOP, seed=cfg.simulation.seed * 1_000_003 + k * len(bases),
        )
        return [clean_output(t) for t in teacher.chat(conversations, spec, desc=STEPS[k])] if conversations else []

    answers = step(0, bases)
    live = [i for i, a in enumerate(answers) if a]
    critiques = dict(zip(live, step(1, [critique_messages(bases[i], answers[i], requests[i]) for i in live])))
    live = [i for i in live if critiques[i]]
    revisions = dict(zip(live, step(2, [revision_messages(bases[i], answers[i], requests[i], critiques[i]) for i in live])))
    return [(answers[i], critiques.get(i, ""), revisions.get(i, "")) for i in range(len(bases))]


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
    """Answer, critique, revise and judge; returns (rows, dropped prompts, metrics)."""
    seed = cfg.simulation.seed
    requests = [random.Random(f"rdpo:{seed}:{i}").choice(principles.critiques) for i in range(len(plans))]
    bases = [p.conv.message_dicts() for p in plans]
    with Models(cfg, seed) as models:
        chains = _chain(models.get(cfg.simulation.teacher or cfg.model.name), bases, requests, cfg)
        kept = [i for i, (a, c, r) in enumerate(chains) if a and c and r and r != a]
        if not kept:
            raise RuntimeError(f"none of {len(plans)} prompts got an answer, a critique and a different revision; nothing to write")
        prompts = [plans[i].prompts.neutral for i in kept]
        chosen, rejected = [chains[i][2] for i in kept], [chains[i][0] for i in kept]
        if cfg.judge.kind != "model":
            models.close()  # the other judges need no engine
        diffs = _score_difference(cfg, prompts, chosen, rejected, principles, models)
    tau = cfg.judge.temperature
    rows = [
        {
            "prompt": prompts[k], "chosen": chosen[k], "rejected": rejected[k],
            "preference_prob": 1.0 / (1.0 + math.exp(-diffs[k] / tau)), "judge_score_difference": diffs[k],
            "critique": chains[i][1], "critique_request": requests[i].critique, "revision_request": requests[i].revision,
            "method": "rdpo", "principles": principles.name, "judge": cfg.judge.kind, "source": plans[i].conv.origin,
            "model": cfg.simulation.teacher or cfg.model.name, "seed": seed,
        }
        for k, i in enumerate(kept)
    ]
    metrics = {
        "conversations": len(plans), "pairs": len(rows), "dropped": len(plans) - len(rows),
        "judge_prefers_revision": sum(d > 0 for d in diffs) / len(diffs),
    }
    return rows, len(plans) - len(rows), metrics
