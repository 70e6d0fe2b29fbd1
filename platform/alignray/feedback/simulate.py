"""The preference-data simulation stage: prompts -> (prompt, chosen, rejected) Parquet, in MLflow.

Every input is validated before Ray starts, and the dataset is written atomically at the end,
so a bad input or a failed run leaves no dataset behind.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow as pa

from alignray import cluster, tracking
from alignray.config import SimulateConfig
from alignray.data.sources import load_conversations
from alignray.feedback import rlcd
from alignray.io import write_parquet
from alignray.models.registry import ModelError, resolve
from alignray.principles import load_principles
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


def run(cfg: SimulateConfig) -> SimulationResult:
    principles = load_principles(cfg.simulation.principles)
    convs = load_conversations(cfg.data)
    model_path = resolve(cfg.model.name)
    needs_chat = any(c.messages is not None for c in convs)
    render = chat_renderer(model_path) if needs_chat else None
    plans = rlcd.plan(convs, principles, cfg.simulation.seed, render)
    base = SamplingSpec(
        temperature=cfg.sampler.temperature,
        top_p=cfg.sampler.top_p,
        max_tokens=cfg.sampler.max_tokens,
        stop=("Human:",),
    )

    cluster.connect(cfg.address)
    params = tracking.flatten(cfg)
    params["model.path"] = str(model_path)
    run_name = f"rlcd-{principles.name}"
    with tracking.start_run(cfg.tracking, cfg.output_dir, run_name, params) as active:
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
        elapsed = time.monotonic() - started

        sampler_params = json.dumps(
            {"temperature": base.temperature, "top_p": base.top_p, "max_tokens": base.max_tokens}
        )
        prefix = principles.response_prefix
        rows = []
        for i, p in enumerate(plans):
            if i in dropped:
                continue
            (chosen, chosen_seed, a_pos), (rejected, rejected_seed, a_neg) = outputs[(i, 0)], outputs[(i, 1)]
            pair = principles.pairs[p.pair_index]
            rows.append(
                {
                    "prompt": p.prompts.neutral,
                    "chosen": prefix + chosen,
                    "rejected": prefix + rejected,
                    "method": "rlcd",
                    "principles": principles.name,
                    "pair_index": p.pair_index,
                    "positive_affix": pair.positive,
                    "negative_affix": pair.negative,
                    "prompt_positive": p.prompts.positive,
                    "prompt_negative": p.prompts.negative,
                    "source": p.conv.origin,
                    "model": cfg.model.name,
                    "seed": cfg.simulation.seed,
                    "chosen_seed": chosen_seed,
                    "rejected_seed": rejected_seed,
                    "attempts": max(a_pos, a_neg),
                    "sampler_params": sampler_params,
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
