"""Preference, SFT, DPO and RRHF training (driver side): validate and tokenize the data, run
the Ray Train workers (:mod:`alignray.train.worker`) and register the model in MLflow.

A run is identified by its name (`run_name`, default `<kind>-<dataset stem>`): running the same
name again continues from its last checkpoint and keeps logging to the same MLflow run.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import ray

from alignray import cluster, tracking
from alignray.config import TrainConfig
from alignray.models.registry import portable_ref, resolve
from alignray.train import data
from alignray.train.launch import Launch, TrainResult, check_cpus
from alignray.train.methods import METHODS
from alignray.train.worker import plan_steps, train_loop


def fit(cfg: TrainConfig, kind: str) -> TrainResult:
    if kind not in METHODS:
        raise ValueError(f"unknown training kind {kind!r}: choose from {', '.join(METHODS)}")
    model_path = resolve(cfg.model.name)
    tokenizer = data.load_tokenizer(model_path)
    prepared = data.load(kind, cfg, tokenizer)
    _, total = plan_steps(cfg, len(prepared.train))
    method = METHODS[kind]
    launch = Launch(cfg, kind, cfg.run_name or f"{kind}-{Path(cfg.dataset).stem}", model_path)

    cluster.connect(cfg.address)
    t = cfg.trainer
    check_cpus({"trainer.num_workers x trainer.cpus_per_worker": t.num_workers * t.cpus_per_worker})
    with launch.tracked("initial model"):
        tracking.log_dataset_input(cfg.dataset, cfg.dataset_split, "training")
        mlflow.log_metrics(
            {"train_examples": len(prepared.train), "eval_examples": len(prepared.eval),
             "truncated_sequences": prepared.truncated, "filtered_examples": prepared.filtered,
             "total_steps": total}
        )
        loop_config = {
            "config": cfg.model_dump(mode="json"),
            "kind": kind,
            "model_path": str(model_path),
            "base_ref": portable_ref(cfg.model.name),  # what a LoRA adapter names as its base
            "pad_id": tokenizer.pad_token_id,
            "train": ray.put(prepared.train),
            "eval": ray.put(prepared.eval),
        }
        result = launch.workers(train_loop, loop_config, total, f"{kind} training")
        return launch.result(result, cfg.registered_model or f"alignray-{kind}", f"eval_{method.eval_metric}",
                             method.higher_is_better)

