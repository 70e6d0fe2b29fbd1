"""The shared training runner (driver side): validate the data, run the Ray Train workers with a
progress bar, and register the result in the MLflow model registry.

A run is identified by its name (`run_name`, default `<kind>-<dataset stem>`): running the same
name again continues from its last checkpoint and keeps logging to the same MLflow run.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import mlflow
import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from alignray import cluster, tracking
from alignray.config import EngineConfig, TrainConfig
from alignray.models.registry import resolve
from alignray.train import data
from alignray.train.methods import METHODS
from alignray.train.worker import STATE_FILE, plan_steps, train_loop


class TrainingError(RuntimeError):
    """Training stopped; the message says why and where the last good checkpoint is."""


@ray.remote(num_cpus=0)
class Progress:
    """Rank 0 reports each step (and a headline metric) here; the driver polls it for the
    progress bar."""

    def __init__(self):
        self.step, self.value = 0, None

    def update(self, step: int, value: float | None) -> None:
        self.step = step
        self.value = value if value is not None else self.value

    def get(self) -> tuple[int, float | None]:
        return self.step, self.value


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    checkpoint: Path  # the last checkpoint folder; its hf/ subfolder is the model
    model_uri: str | None  # models:/<name>/<version>; None when stopped before the last step
    metrics: dict
    champion: bool


def run_workers(
    loop, loop_config: dict, t: EngineConfig, run_dir: Path, total: int, start: int, desc: str, label: str = "loss",
    resources: dict | None = None,
):
    """Run `loop` on t.num_workers Ray Train workers (a run named run_dir.name, stored in
    run_dir.parent, so running it again resumes) under a progress bar fed by a Progress actor
    passed to the loop as loop_config["progress"]; `resources`: more Ray resources per worker.
    Raises TrainingError naming the first worker's error and the last good checkpoint."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    progress = Progress.options(scheduling_strategy=here).remote()  # on the driver's node: survives a worker node
    trainer = TorchTrainer(
        loop,
        train_loop_config={**loop_config, "progress": progress},
        scaling_config=ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker={"CPU": t.cpus_per_worker, **(resources or {})},
            label_selector=dict(t.node_labels) or None,
        ),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        run_config=RunConfig(
            name=run_dir.name, storage_path=str(run_dir.parent), checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=t.max_failures),
        ),
    )
    result = _fit_with_progress(trainer, progress, total, start, desc, label)
    if isinstance(result, BaseException):
        last = latest_checkpoint(run_dir)
        raise TrainingError(f"{_failure_reason(result)} (last good checkpoint: {last or 'none'})") from result
    return result


def _fit_with_progress(trainer: TorchTrainer, progress, total: int, start: int, desc: str, label: str):
    """trainer.fit() under a progress bar; returns its result, or the exception it raised."""
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=_try_fit(trainer)), daemon=True)
    thread.start()
    with tqdm(total=total, initial=start, desc=desc, unit="step") as bar:
        while thread.is_alive():
            thread.join(timeout=1.0)
            step, value = ray.get(progress.get.remote())
            bar.update(max(0, step - bar.n))
            if value is not None:
                bar.set_postfix({label: f"{value:.4f}"})
    return outcome["result"]


def _try_fit(trainer: TorchTrainer):
    try:
        return trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; keep the cause for the driver
        return exc


def _failure_reason(exc: BaseException) -> str:
    """The first worker's own error (Ray wraps it with tracebacks of every rank)."""
    failures = getattr(exc, "worker_failures", None)
    if failures:
        cause = failures[min(failures)]
        while getattr(cause, "cause", None) is not None:  # RayTaskError -> the user's exception
            cause = cause.cause
        return f"{type(cause).__name__}: {cause}".splitlines()[-1]
    return str(exc)


def check_cpus(needs: dict[str, float]) -> None:
    """Fail fast when the cluster has fewer CPUs than the run needs: Ray would wait forever."""
    wanted, has = sum(needs.values()), ray.cluster_resources().get("CPU", 0)
    if wanted > has:
        parts = " + ".join(f"{k} = {v:g}" for k, v in needs.items())
        raise TrainingError(f"{parts} CPUs, but the Ray cluster has {has:g}; lower one of them")


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    return found[-1] if found else None


def checkpoint_state(run_dir: Path) -> dict:
    last = latest_checkpoint(run_dir)
    return json.loads((last / STATE_FILE).read_text()) if last else {}


def fit(cfg: TrainConfig, kind: str) -> TrainResult:
    if kind not in METHODS:
        raise ValueError(f"unknown training kind {kind!r}: choose from {', '.join(METHODS)}")
    model_path = resolve(cfg.model.name)
    tokenizer = data.load_tokenizer(model_path)
    prepared = data.load(kind, cfg, tokenizer)
    _, total = plan_steps(cfg, len(prepared.train))
    method = METHODS[kind]
    run_name = cfg.run_name or f"{kind}-{Path(cfg.dataset).stem}"
    storage = (cfg.output_dir / "train").resolve()
    start = checkpoint_state(storage / run_name).get("step", 0)

    cluster.connect(cfg.address)
    t = cfg.trainer
    check_cpus({"trainer.num_workers x trainer.cpus_per_worker": t.num_workers * t.cpus_per_worker})
    params = {**tracking.flatten(cfg), "kind": kind, "model.path": str(model_path)}
    with tracking.start_run(cfg.tracking, cfg.output_dir, run_name, params, resume=True) as active:
        tracking.log_input_file(Path(cfg.dataset), "training")
        tracking.log_model_input(cfg.model.name, "initial model")
        mlflow.log_metrics(
            {"train_examples": len(prepared.train), "eval_examples": len(prepared.eval),
             "truncated_sequences": prepared.truncated, "filtered_examples": prepared.filtered,
             "total_steps": total}
        )
        loop_config = {
            "config": cfg.model_dump(mode="json"),
            "kind": kind,
            "model_path": str(model_path),
            "pad_id": tokenizer.pad_token_id,
            "train": ray.put(prepared.train),
            "eval": ray.put(prepared.eval),
            "tracking_uri": tracking.tracking_uri(cfg.tracking, cfg.output_dir),
            "run_id": active.info.run_id,
        }
        result = run_workers(train_loop, loop_config, t, storage / run_name, total, start, f"{kind} training")
        folder = Path(result.checkpoint.path)
        if not json.loads((folder / STATE_FILE).read_text())["final"]:
            return TrainResult(active.info.run_id, folder, None, result.metrics, False)
        registered = cfg.registered_model or f"alignray-{kind}"
        metric = f"eval_{method.eval_metric}"
        version, champion = tracking.register_model(
            folder / "hf", registered, result.metrics.get(metric), metric, method.higher_is_better
        )
    return TrainResult(active.info.run_id, folder, f"models:/{registered}/{version}", result.metrics, champion)
