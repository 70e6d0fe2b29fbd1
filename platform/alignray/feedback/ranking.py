"""RRHF candidates: k responses per prompt from the sampler pool, at one or several
temperatures, from the policy and optionally more policies (`ranking.policies`, k each), each
scored by the reward (local preference models or an HTTP endpoint,
per-principle rewards scalarized as in PPO). Written as prompt, candidates, rewards: the input
of `alignray train rrhf`.

A candidate that comes out empty is dropped; a prompt left with fewer than two candidates, or
whose candidates all score the same, is dropped and counted (nothing to rank). A candidate cut
off at sampler.max_tokens is kept as it is, left out (a prompt left with fewer than two is lost
to truncation) or ranked below every finished one: `simulation.truncated`, see `truncation`.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from alignray.config import SimulateConfig
from alignray.data.conversation import TURN_STOP, clean_output, cut_off
from alignray.feedback import truncation
from alignray.feedback.plans import Plan
from alignray.feedback.truncation import kept_candidates, penalised_rewards
from alignray.rewards.scorers import reward_source, scalar_reward
from alignray.sampling.clients import open_model
from alignray.sampling.pool import SamplerPool
from alignray.sampling.types import SamplingSpec

TALLY = "{kept} prompts with ranked candidates ({dropped} dropped: fewer than two candidates, or all with the same reward)"


class Candidate(NamedTuple):
    text: str  # cleaned, non-empty, with the set's response prefix
    truncated: bool  # cut off at sampler.max_tokens
    policy: str  # the model that sampled it


def sample_candidates(pool: SamplerPool, prompts: list[str], cfg: SimulateConfig) -> list[list[tuple[str, bool]]]:
    """k cleaned, non-empty candidates per prompt (fewer where some came out empty), each with
    whether it was cut off at max_tokens."""
    per_temperature = cfg.ranking.k // len(cfg.ranking.temperatures)
    out: list[list[tuple[str, bool]]] = [[] for _ in prompts]
    for t_index, temperature in enumerate(cfg.ranking.temperatures):
        spec = SamplingSpec(
            n=per_temperature, temperature=temperature, top_p=cfg.sampler.top_p, max_tokens=cfg.sampler.max_tokens,
            stop=TURN_STOP, seed=cfg.simulation.seed * 1_000_003 + t_index * len(prompts) * per_temperature,
        )
        for row, completions in zip(out, pool.generate(prompts, spec, desc=f"candidates at T={temperature:g}")):
            row += [(text, cut_off(c.text, c.finish_reason)) for c in completions if (text := clean_output(c.text))]
    return out


def _sample(cfg: SimulateConfig, plans: list[Plan], prefix: str) -> tuple[list[list[Candidate]], int]:
    """The candidates of every prompt, the policy's first, then `ranking.policies`' (and sampler restarts)."""
    candidates: list[list[Candidate]] = [[] for _ in plans]
    restarts = 0
    for name in [cfg.model.name, *cfg.ranking.policies]:
        with open_model(name, cfg, cfg.simulation.seed) as policy:
            sampled = sample_candidates(policy.pool, [p.prompts.positive for p in plans], cfg)
            restarts += policy.pool.restarts
        for row, more in zip(candidates, sampled):
            row += [Candidate(prefix + text, cut, name) for text, cut in more]
    return candidates, restarts


def run(cfg: SimulateConfig, plans: list[Plan], prefix: str) -> tuple[list[dict], int, dict]:
    """Sample and score the candidates of every prompt; returns (rows, prompts dropped for another
    reason than truncation, metrics)."""
    reward = reward_source(cfg.reward, cfg.sampler.max_model_len)
    policy = cfg.simulation.truncated
    sampled, restarts = _sample(cfg, plans, prefix)
    kept = [[row[k] for k in kept_candidates([c.truncated for c in row], policy)] for row in sampled]
    lost = {i for i, (row, left) in enumerate(zip(sampled, kept)) if len(row) >= 2 > len(left)}
    if all(len(row) < 2 for row in kept):
        why = f" ({len(lost)} lost to simulation.truncated=drop: raise sampler.max_tokens, or keep or penalise)" if lost else ""
        raise RuntimeError(f"none of {len(plans)} prompts got two candidates{why}; nothing to write")
    prompts = [p.prompts.neutral for p in plans]
    flat = [(i, c) for i, row in enumerate(kept) for c in row]
    per_principle = reward([prompts[i] for i, _ in flat], [c.text for _, c in flat])
    scalar = scalar_reward(per_principle, cfg.reward)
    scores: list[list[float]] = [[] for _ in prompts]
    for (i, _), value in zip(flat, scalar.tolist()):
        scores[i].append(value)
    ranked = [penalised_rewards(s, [c.truncated for c in row], policy) for s, row in zip(scores, kept)]
    rows, dropped = [], 0
    for i, prompt in enumerate(prompts):
        if i in lost:
            continue
        if len(kept[i]) < 2 or len(set(ranked[i])) < 2:
            dropped += 1
            continue
        rows.append({
            "prompt": prompt, "candidates": [c.text for c in kept[i]], "rewards": ranked[i],
            "truncated": [c.truncated for c in kept[i]], "policies": [c.policy for c in kept[i]], "method": "rrhf",
            "source": plans[i].conv.origin, "model": cfg.model.name, "seed": cfg.simulation.seed,
            "temperatures": json.dumps(cfg.ranking.temperatures), "principles": json.dumps(reward.principles),
        })
    if not rows:
        raise RuntimeError(f"none of {len(prompts)} prompts got two candidates with different rewards; nothing to write")
    metrics = {
        "conversations": len(prompts), "prompts_written": len(rows), "dropped_prompts": dropped,
        "candidates": sum(len(row["candidates"]) for row in rows), "sampler_restarts": restarts,
        "reward_mean": float(scalar.mean()),
        "reward_spread_mean": sum(max(r["rewards"]) - min(r["rewards"]) for r in rows) / len(rows),
        **truncation.metrics(sum(c.truncated for row in sampled for c in row), len(lost),
                             sum(r != s for r, s in zip(ranked, scores))),
    }
    return rows, dropped, metrics
