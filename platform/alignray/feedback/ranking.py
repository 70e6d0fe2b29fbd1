"""RRHF candidates: k responses per prompt from the sampler pool, at one or several
temperatures, from the policy and optionally more policies (`ranking.policies`, k each), each
scored by the reward (local preference models or an HTTP endpoint,
per-principle rewards scalarized as in PPO). Written as prompt, candidates, rewards: the input
of `alignray train rrhf`.

A candidate that comes out empty is dropped; a prompt left with fewer than two candidates, or
whose candidates all score the same, is dropped and counted (nothing to rank).
"""

from __future__ import annotations

import json

from alignray.config import SimulateConfig
from alignray.data.conversation import TURN_STOP, clean_output
from alignray.feedback.plans import Plan
from alignray.rewards.scorers import reward_source, scalar_reward
from alignray.sampling.clients import open_model
from alignray.sampling.pool import SamplerPool
from alignray.sampling.types import SamplingSpec

TALLY = "{kept} prompts with ranked candidates ({dropped} dropped: fewer than two candidates, or all with the same reward)"


def sample_candidates(pool: SamplerPool, prompts: list[str], cfg: SimulateConfig) -> list[list[str]]:
    """k cleaned, non-empty candidates per prompt (fewer where some came out empty)."""
    per_temperature = cfg.ranking.k // len(cfg.ranking.temperatures)
    out: list[list[str]] = [[] for _ in prompts]
    for t_index, temperature in enumerate(cfg.ranking.temperatures):
        spec = SamplingSpec(
            n=per_temperature, temperature=temperature, top_p=cfg.sampler.top_p, max_tokens=cfg.sampler.max_tokens,
            stop=TURN_STOP, seed=cfg.simulation.seed * 1_000_003 + t_index * len(prompts) * per_temperature,
        )
        for row, completions in zip(out, pool.generate(prompts, spec, desc=f"candidates at T={temperature:g}")):
            row += [text for c in completions if (text := clean_output(c.text))]
    return out


def run(cfg: SimulateConfig, plans: list[Plan], prefix: str) -> tuple[list[dict], int, dict]:
    """Sample and score the candidates of every prompt; returns (rows, dropped prompts, metrics)."""
    reward = reward_source(cfg.reward, cfg.sampler.max_model_len)
    candidates: list[list[str]] = [[] for _ in plans]
    sources: list[list[str]] = [[] for _ in plans]  # the policy of each candidate
    restarts = 0
    for name in [cfg.model.name, *cfg.ranking.policies]:
        with open_model(name, cfg, cfg.simulation.seed) as policy:
            sampled = sample_candidates(policy.pool, [p.prompts.positive for p in plans], cfg)
            restarts += policy.pool.restarts
        for i, row in enumerate(sampled):
            candidates[i] += [prefix + text for text in row]
            sources[i] += [name] * len(row)
    prompts = [p.prompts.neutral for p in plans]
    flat = [(i, c) for i, row in enumerate(candidates) for c in row]
    per_principle = reward([prompts[i] for i, _ in flat], [c for _, c in flat])
    scalar = scalar_reward(per_principle, cfg.reward)
    scores: list[list[float]] = [[] for _ in prompts]
    for (i, _), value in zip(flat, scalar.tolist()):
        scores[i].append(value)
    rows, dropped = [], 0
    for i, prompt in enumerate(prompts):
        if len(candidates[i]) < 2 or len(set(scores[i])) < 2:
            dropped += 1
            continue
        rows.append({
            "prompt": prompt, "candidates": candidates[i], "rewards": scores[i], "policies": sources[i], "method": "rrhf",
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
    }
    return rows, dropped, metrics
