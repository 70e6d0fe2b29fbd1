"""Pairs of samples, and their labels: rlcd, rlaif, rlcd_rescore and morlaif.

rlcd and rlcd_rescore sample o+ from p+ and o- from p-; rlaif and morlaif sample twice from the
neutral prompt. rlcd labels by construction (o+ is chosen); the others ask the labeller
(`rlaif.label`): rlaif and rlcd_rescore once under one of the set's instructions, morlaif once
per criterion of the set (MORLAIF's principles), giving one soft label column per criterion,
``preference_prob_<name>``, oriented to `chosen`, the response preferred on average.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from alignray.config import SimulateConfig
from alignray.data.conversation import TURN_STOP
from alignray.feedback import rlaif
from alignray.feedback.plans import sample_pairs
from alignray.principles import PrincipleSet
from alignray.sampling.clients import open_model
from alignray.sampling.pool import SamplerPool
from alignray.sampling.types import SamplingSpec

TALLY = "{kept} preference pairs ({dropped} prompts dropped for empty outputs)"


@dataclass(frozen=True)
class Labels:
    probs: dict[str, float]  # criterion -> P(side 0 is better)
    instructions: dict[str, str]  # criterion -> the question asked

    @property
    def mean(self) -> float:
        return sum(self.probs.values()) / len(self.probs)


def criteria(principles: PrincipleSet, method: str) -> dict[str, tuple[str, ...]]:
    """The questions to label under: every criterion for morlaif, else the set's instructions."""
    return dict(principles.criteria) if method == "morlaif" else {principles.name: principles.instructions}


def label_pairs(choose, plans, outputs, kept: list[int], questions: dict[str, tuple[str, ...]], seed: int) -> dict[int, Labels]:
    """Label every kept pair under every criterion; one question is drawn per (pair, criterion)."""
    asked = {
        (i, name): random.Random(f"rlaif:{seed}:{i}:{name}").choice(options)
        for i in kept
        for name, options in questions.items()
    }
    comparisons = [
        rlaif.Comparison(plans[i].prompts.neutral, text, outputs[(i, 0)][0], outputs[(i, 1)][0])
        for (i, _), text in asked.items()
    ]
    probs = rlaif.label(lambda p, o: choose(p, o, desc="labelling (A)/(B)"), comparisons)
    out = {i: Labels({}, {}) for i in kept}
    for ((i, name), text), prob in zip(asked.items(), probs):
        out[i].probs[name], out[i].instructions[name] = prob, text
    return out


def run(cfg: SimulateConfig, plans, principles: PrincipleSet, sample_plans=None) -> tuple[list[dict], int, dict]:
    """Sample (from `sample_plans`' prompts, default `plans`: the simulator's chat template) and
    label; rows keep `plans`' prompts (the policy's format). Returns (rows, dropped prompts, metrics)."""
    sim = cfg.simulation
    base = SamplingSpec(
        temperature=cfg.sampler.temperature, top_p=cfg.sampler.top_p, max_tokens=cfg.sampler.max_tokens, stop=TURN_STOP
    )
    labelled = sim.method != "rlcd"
    questions = criteria(principles, sim.method)
    simulator = sim.simulator or cfg.model.name
    own_labeller = (sim.labeller or cfg.model.name) == simulator
    with open_model(simulator, cfg, cfg.simulation.seed) as policy:
        pool: SamplerPool = policy.pool
        outputs, dropped = sample_pairs(
            lambda p, s, label: pool.generate(p, s, desc=label), sample_plans or plans, base, sim.seed, sim.max_retries
        )
        restarts = pool.restarts
        kept = [i for i in range(len(plans)) if i not in dropped]
        if labelled and own_labeller:
            labels = label_pairs(policy.option_logprobs, plans, outputs, kept, questions, sim.seed)
    if labelled and not own_labeller:
        with open_model(sim.labeller, cfg, sim.seed) as labeller:
            labels = label_pairs(labeller.option_logprobs, plans, outputs, kept, questions, sim.seed)

    sampler_params = json.dumps({"temperature": base.temperature, "top_p": base.top_p, "max_tokens": base.max_tokens})
    prefix = principles.response_prefix
    rows = []
    for i in kept:
        p = plans[i]
        (chosen, chosen_seed, a_pos), (rejected, rejected_seed, a_neg) = outputs[(i, 0)], outputs[(i, 1)]
        pair = principles.pairs[p.pair_index] if p.pair_index >= 0 else None
        extra = {}
        if labelled:
            lab = labels[i]
            swap = lab.mean < 0.5  # the labeller prefers side 1
            if swap:
                (chosen, chosen_seed), (rejected, rejected_seed) = (rejected, rejected_seed), (chosen, chosen_seed)
            oriented = {name: 1.0 - v if swap else v for name, v in lab.probs.items()}
            extra = {"preference_prob": max(lab.mean, 1.0 - lab.mean)}
            if sim.method == "morlaif":
                extra |= {f"preference_prob_{name}": v for name, v in oriented.items()}
                extra["instructions"] = json.dumps(lab.instructions)
            else:
                extra["instruction"] = lab.instructions[principles.name]
            if sim.method == "rlcd_rescore":
                extra["agrees_with_rlcd"] = not swap
        rows.append({
            "prompt": p.prompts.neutral,
            "chosen": prefix + chosen,
            "rejected": prefix + rejected,
            "method": sim.method,
            "principles": principles.name,
            "pair_index": p.pair_index,
            "positive_affix": pair.positive if pair else None,
            "negative_affix": pair.negative if pair else None,
            "prompt_positive": (sample_plans or plans)[i].prompts.positive,
            "prompt_negative": (sample_plans or plans)[i].prompts.negative,
            "source": p.conv.origin,
            "model": simulator,
            "seed": sim.seed,
            "chosen_seed": chosen_seed,
            "rejected_seed": rejected_seed,
            "attempts": max(a_pos, a_neg),
            "sampler_params": sampler_params,
            **extra,
        })
    if not rows:
        raise RuntimeError(
            f"every one of {len(plans)} prompts gave an empty output after {sim.max_retries} retries; nothing to write"
        )
    metrics = {
        "conversations": len(plans),
        "pairs": len(rows),
        "dropped_empty": len(dropped),
        "resampled_pairs": sum(r["attempts"] > 1 for r in rows),
        "sampler_restarts": restarts,
    }
    if sim.method == "rlcd_rescore":
        metrics["agreement_with_rlcd"] = sum(r["agrees_with_rlcd"] for r in rows) / len(rows)
    return rows, len(dropped), metrics
