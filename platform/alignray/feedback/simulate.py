"""The preference-data simulation stage: prompts -> (prompt, chosen, rejected) Parquet, in MLflow.

Every input is validated before Ray starts, and the dataset is written atomically at the end,
so a bad input or a failed run leaves no dataset behind.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow as pa

from alignray import cluster, tracking
from alignray.config import SimulateConfig
from alignray.data.sources import load_conversations
from alignray.feedback import ranking, rlaif, rlcd
from alignray.io import write_parquet
from alignray.models.registry import ModelError, resolve
from alignray.principles import PrincipleError, PrincipleSet, load_principles
from alignray.sampling.pool import SamplerPool
from alignray.sampling.types import SamplingSpec


@dataclass(frozen=True)
class SimulationResult:
    dataset: Path
    run_id: str
    tracking_uri: str
    experiment: str
    pairs: int
    dropped: int
    examples: list[dict]


def chat_renderer(model_path: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if not tokenizer.chat_template:
        raise ModelError(
            f"{model_path}: the tokenizer has no chat template; use data.format=transcript"
        )
    return lambda messages: tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )


def _labels(pool: SamplerPool, plans, outputs, kept: list[int], principles: PrincipleSet, seed: int) -> dict:
    """{plan index: (P(side 0 is better), instruction)} from the RLAIF labeller."""
    instructions = [random.Random(f"rlaif:{seed}:{i}").choice(principles.instructions) for i in kept]
    comparisons = [
        rlaif.Comparison(plans[i].prompts.neutral, text, outputs[(i, 0)][0], outputs[(i, 1)][0])
        for i, text in zip(kept, instructions)
    ]
    probs = rlaif.label(lambda p, c: pool.score(p, c, desc="labelling (A)/(B)"), comparisons)
    return {i: (prob, text) for i, prob, text in zip(kept, probs, instructions)}


def run(cfg: SimulateConfig) -> SimulationResult:
    sim = cfg.simulation
    principles = load_principles(sim.principles)
    labelled = sim.method != "rlcd"
    if labelled and not principles.instructions:
        raise PrincipleError(
            f"principle set {principles.name!r} has no 'instructions' (labelling questions), which"
            f" simulation.method={sim.method} needs; add some to its YAML file"
        )
    convs = load_conversations(cfg.data)
    model_path = resolve(cfg.model.name)
    labeller = resolve(sim.labeller) if sim.labeller else model_path
    needs_chat = any(c.messages is not None for c in convs)
    render = chat_renderer(model_path) if needs_chat else None
    plans = rlcd.plan(convs, principles, sim.seed, render, contrast=sim.method not in ("rlaif", "rrhf"))
    base = SamplingSpec(
        temperature=cfg.sampler.temperature,
        top_p=cfg.sampler.top_p,
        max_tokens=cfg.sampler.max_tokens,
        stop=("Human:",),
    )

    cluster.connect(cfg.address)
    params = tracking.flatten(cfg)
    params["model.path"] = str(model_path)
    run_name = "rrhf-candidates" if sim.method == "rrhf" else f"{sim.method}-{principles.name}"
    with tracking.start_run(cfg.tracking, cfg.output_dir, run_name, params) as active:
        if sim.method == "rrhf":
            dataset, rows, dropped = ranking.run(cfg, plans, principles.response_prefix, model_path, active.info.run_id)
            return SimulationResult(dataset.resolve(), active.info.run_id, tracking.tracking_uri(cfg.tracking, cfg.output_dir),
                                    cfg.tracking.experiment, len(rows), dropped, rows[:3])
        started = time.monotonic()
        with SamplerPool(model_path, cfg.sampler, dtype=cfg.model.dtype, seed=cfg.simulation.seed) as pool:
            outputs, dropped = rlcd.sample_pairs(
                lambda p, s, label: pool.generate(p, s, desc=label),
                plans,
                base,
                cfg.simulation.seed,
                cfg.simulation.max_retries,
            )
            restarts = pool.restarts
            kept = [i for i in range(len(plans)) if i not in dropped]
            if labelled and labeller == model_path:
                labels = _labels(pool, plans, outputs, kept, principles, sim.seed)
        if labelled and labeller != model_path:
            with SamplerPool(labeller, cfg.sampler, dtype=cfg.model.dtype, seed=sim.seed) as judge:
                labels = _labels(judge, plans, outputs, kept, principles, sim.seed)
        elapsed = time.monotonic() - started

        sampler_params = json.dumps(
            {"temperature": base.temperature, "top_p": base.top_p, "max_tokens": base.max_tokens}
        )
        prefix = principles.response_prefix
        rows = []
        for i in kept:
            p = plans[i]
            (chosen, chosen_seed, a_pos), (rejected, rejected_seed, a_neg) = outputs[(i, 0)], outputs[(i, 1)]
            pair = principles.pairs[p.pair_index] if p.pair_index >= 0 else None
            extra = {}
            if labelled:
                prob, instruction = labels[i]
                if prob < 0.5:  # the labeller prefers side 1
                    (chosen, chosen_seed), (rejected, rejected_seed) = (rejected, rejected_seed), (chosen, chosen_seed)
                extra = {"preference_prob": max(prob, 1.0 - prob), "instruction": instruction}
                if sim.method == "rlcd_rescore":
                    extra["agrees_with_rlcd"] = prob >= 0.5
            rows.append(
                {
                    "prompt": p.prompts.neutral,
                    "chosen": prefix + chosen,
                    "rejected": prefix + rejected,
                    "method": sim.method,
                    "principles": principles.name,
                    "pair_index": p.pair_index,
                    "positive_affix": pair.positive if pair else None,
                    "negative_affix": pair.negative if pair else None,
                    "prompt_positive": p.prompts.positive,
                    "prompt_negative": p.prompts.negative,
                    "source": p.conv.origin,
                    "model": cfg.model.name,
                    "seed": cfg.simulation.seed,
                    "chosen_seed": chosen_seed,
                    "rejected_seed": rejected_seed,
                    "attempts": max(a_pos, a_neg),
                    "sampler_params": sampler_params,
                    **extra,
                }
            )
        if not rows:
            raise RuntimeError(
                f"every one of {len(plans)} prompts gave an empty output after"
                f" {cfg.simulation.max_retries} retries; nothing to write"
            )
        frame = pd.DataFrame(rows)
        folder = cfg.output_dir / "datasets" / f"{run_name}-{active.info.run_id[:8]}"
        dataset = write_parquet(pa.Table.from_pandas(frame, preserve_index=False), folder / "preferences.parquet")
        tracking.log_dataset(dataset, frame, name=f"{run_name}-preferences", context="preferences")
        mlflow.log_metrics(
            {
                "conversations": len(plans),
                "pairs": len(rows),
                "dropped_empty": len(dropped),
                "resampled_pairs": int((frame["attempts"] > 1).sum()),
                "sampler_restarts": restarts,
                **({"preference_prob_mean": float(frame["preference_prob"].mean())} if labelled else {}),
                **({"agreement_with_rlcd": float(frame["agrees_with_rlcd"].mean())} if sim.method == "rlcd_rescore" else {}),
                "sampling_seconds": elapsed,
                "chosen_chars_mean": float(frame["chosen"].str.len().mean()),
                "rejected_chars_mean": float(frame["rejected"].str.len().mean()),
            }
        )
    return SimulationResult(
        dataset=dataset.resolve(),
        run_id=active.info.run_id,
        tracking_uri=tracking.tracking_uri(cfg.tracking, cfg.output_dir),
        experiment=cfg.tracking.experiment,
        pairs=len(rows),
        dropped=len(dropped),
        examples=rows[:3],
    )
