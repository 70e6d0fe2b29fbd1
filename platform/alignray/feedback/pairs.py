"""Pairs of samples, and their labels: rlcd, rlaif, rlcd_rescore and morlaif.

rlcd and rlcd_rescore sample o+ from p+ and o- from p-; rlaif and morlaif sample twice from the
neutral prompt. rlcd labels by construction (o+ is chosen); the others ask the labeller
(`rlaif.label`): rlaif and rlcd_rescore once under one of the set's instructions, morlaif once
per criterion of the set (MORLAIF's principles), giving one soft label column per criterion,
``preference_prob_<name>``, oriented to `chosen`, the response preferred on average.
A response cut off at sampler.max_tokens is kept, loses its pair, or loses to a finished one
(`simulation.truncated`, decided in `truncation`); rows say which side was cut off.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from alignray.config import SimulateConfig
from alignray.data.conversation import TURN_STOP
from alignray.feedback import rlaif, truncation
from alignray.feedback.plans import Plan, Sample, sample_pairs
from alignray.feedback.truncation import Verdict, relabels, verdict
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
        rlaif.Comparison(plans[i].prompts.neutral, text, outputs[(i, 0)].text, outputs[(i, 1)].text)
        for (i, _), text in asked.items()
    ]
    probs = rlaif.label(lambda p, o: choose(p, o, desc="labelling (A)/(B)"), comparisons)
    out = {i: Labels({}, {}) for i in kept}
    for ((i, name), text), prob in zip(asked.items(), probs):
        out[i].probs[name], out[i].instructions[name] = prob, text
    return out


def decided(v: Verdict, names) -> Labels:
    """The label of a pair penalise decided (one side cut off): 1.0 for the finished side under
    every criterion; no question asked."""
    return Labels(dict.fromkeys(names, 1.0 if v is Verdict.FIRST_WINS else 0.0), {})


def run(cfg: SimulateConfig, plans, principles: PrincipleSet, sample_plans=None) -> tuple[list[dict], int, dict]:
    """Sample (from `sample_plans`' prompts, default `plans`: the simulator's chat template) and
    label; rows keep `plans`' prompts (the policy's format). Returns (rows, prompts dropped for
    empty outputs, metrics)."""
    sim = cfg.simulation
    base = SamplingSpec(
        temperature=cfg.sampler.temperature, top_p=cfg.sampler.top_p, max_tokens=cfg.sampler.max_tokens, stop=TURN_STOP
    )
    labelled = sim.method != "rlcd"
    questions = criteria(principles, sim.method)
    simulator = sim.simulator or cfg.model.name
    own_labeller = (sim.labeller or cfg.model.name) == simulator
    labels: dict[int, Labels] = {}
    with open_model(simulator, cfg, cfg.simulation.seed) as policy:
        pool: SamplerPool = policy.pool
        outputs, dropped = sample_pairs(
            lambda p, s, label: pool.generate(p, s, desc=label), sample_plans or plans, base, sim.seed, sim.max_retries
        )
        restarts = pool.restarts
        made = [i for i in range(len(plans)) if i not in dropped]
        verdicts = {i: verdict(outputs[(i, 0)].truncated, outputs[(i, 1)].truncated, sim.truncated) for i in made}
        kept = [i for i in made if verdicts[i] is not Verdict.DROP]
        asked = [i for i in kept if verdicts[i] is Verdict.LABEL] if labelled else []
        if asked and own_labeller:
            labels = label_pairs(policy.option_logprobs, plans, outputs, asked, questions, sim.seed)
    if asked and not own_labeller:
        with open_model(sim.labeller, cfg, sim.seed) as labeller:
            labels = label_pairs(labeller.option_logprobs, plans, outputs, asked, questions, sim.seed)
    if labelled:
        labels |= {i: decided(verdicts[i], questions) for i in kept if verdicts[i] is not Verdict.LABEL}

    sampler_params = json.dumps({"temperature": base.temperature, "top_p": base.top_p, "max_tokens": base.max_tokens})
    rows = [pair_row(cfg, principles, plans[i], (sample_plans or plans)[i], outputs[(i, 0)], outputs[(i, 1)],
                     labels[i] if labelled else None, verdicts[i], sampler_params) for i in kept]
    if not rows:
        lost = (f"; {len(made)} a response cut off at sampler.max_tokens={base.max_tokens} (simulation.truncated=drop:"
                " raise sampler.max_tokens, or set simulation.truncated to keep or penalise)") if made else ""
        raise RuntimeError(f"none of {len(plans)} prompts gave a pair: {len(dropped)} an empty output after"
                           f" {sim.max_retries} retries{lost}; nothing to write")
    metrics = {
        "conversations": len(plans),
        "pairs": len(rows),
        "dropped_empty": len(dropped),
        "resampled_pairs": sum(r["attempts"] > 1 for r in rows),
        "sampler_restarts": restarts,
        **truncation.metrics(sum(outputs[(i, s)].truncated for i in made for s in (0, 1)), len(made) - len(kept),
                             sum(relabels(verdicts[i], labelled) for i in kept)),
    }
    judged = [r for r, i in zip(rows, kept) if verdicts[i] is Verdict.LABEL]
    if sim.method == "rlcd_rescore" and judged:  # the labeller's agreement: pairs penalise decided left out
        metrics["agreement_with_rlcd"] = sum(r["agrees_with_rlcd"] for r in judged) / len(judged)
    return rows, len(dropped), metrics


def pair_row(cfg: SimulateConfig, principles: PrincipleSet, plan: Plan, sampled: Plan, first: Sample, second: Sample,
             lab: Labels | None, v: Verdict, sampler_params: str) -> dict:
    """One written pair, sampled from `sampled`'s prompts: side 0 is chosen unless its label
    (`lab`; rlcd has none) prefers side 1, or, for rlcd, penalise's verdict `v` does."""
    sim = cfg.simulation
    swap = lab.mean < 0.5 if lab else v is Verdict.SECOND_WINS
    chosen, rejected = (second, first) if swap else (first, second)
    pair = principles.pairs[plan.pair_index] if plan.pair_index >= 0 else None
    extra = {}
    if lab:
        extra = {"preference_prob": max(lab.mean, 1.0 - lab.mean)}
        if sim.method == "morlaif":
            extra |= {f"preference_prob_{name}": 1.0 - p if swap else p for name, p in lab.probs.items()}
            extra["instructions"] = json.dumps(lab.instructions) if lab.instructions else None
        else:
            extra["instruction"] = lab.instructions.get(principles.name)
        if sim.method == "rlcd_rescore":
            extra["agrees_with_rlcd"] = not swap
    prefix = principles.response_prefix
    return {
        "prompt": plan.prompts.neutral,
        "chosen": prefix + chosen.text,
        "rejected": prefix + rejected.text,
        "chosen_truncated": chosen.truncated,
        "rejected_truncated": rejected.truncated,
        "method": sim.method,
        "principles": principles.name,
        "pair_index": plan.pair_index,
        "positive_affix": pair.positive if pair else None,
        "negative_affix": pair.negative if pair else None,
        "prompt_positive": sampled.prompts.positive,
        "prompt_negative": sampled.prompts.negative,
        "source": plan.conv.origin,
        "model": sim.simulator or cfg.model.name,
        "seed": sim.seed,
        "chosen_seed": chosen.seed,
        "rejected_seed": rejected.seed,
        "attempts": max(first.attempts, second.attempts),
        "sampler_params": sampler_params,
        **extra,
    }
