"""One training run as the driver launches it, for every trainer (preference, SFT, DPO, RRHF in
:mod:`alignray.train.runner`; PPO in :mod:`alignray.train.ppo`): its Ray Train folder and
resume point, its MLflow run, the Ray Train workers under a progress bar, and the result
registered in the MLflow model registry.

A run is identified by its name: launching the same name again continues from its last
checkpoint (Ray Train's `RunConfig(name, storage_path)`) and keeps logging to the same MLflow run.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from alignray import logs, tracking
from alignray.config import EngineConfig, PPOConfig, TrainConfig
from alignray.models import lora, mlflow_model
from alignray.models.registry import resolve
from alignray.train.engines import STATE_FILE, drop_resume_state

log = logs.get(__name__)


class TrainingError(RuntimeError):
    """Training stopped; the message says why and where the last good checkpoint is."""


@ray.remote(num_cpus=0)
class Progress:
    """Rank 0 reports each step (and a headline metric) here, and warnings for the user; the
    driver polls it for the progress bar and shows each new warning on the terminal."""

    def __init__(self):
        self.step, self.value = 0, None
        self.warnings: dict[str, str] = {}

    def update(self, step: int, value: float | None) -> None:
        self.step = step
        self.value = value if value is not None else self.value

    def warn(self, key: str, text: str) -> None:
        """A warning for the user; the first text per key is kept (a restarted worker may send it again)."""
        self.warnings.setdefault(key, text)

    def get(self) -> tuple[int, float | None, list[str]]:
        return self.step, self.value, list(self.warnings.values())


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    checkpoint: Path  # the last checkpoint folder; its hf/ subfolder is the model
    model_uri: str | None  # models:/<name>/<version>; None when stopped before the last step
    metrics: dict
    champion: bool
    warnings: tuple[str, ...] = ()  # what the workers warned the user of (shown during the run too)


def run_workers(
    loop, loop_config: dict, t: EngineConfig, run_dir: Path, total: int, start: int, desc: str, label: str = "loss",
    resources: dict | None = None, warnings: list[str] | None = None,
):
    """Run `loop` on t.num_workers Ray Train workers (a run named run_dir.name, stored in
    run_dir.parent, so running it again resumes) under a progress bar fed by a Progress actor
    passed to the loop as loop_config["progress"]; `resources`: more Ray resources per worker.
    The workers' warnings (Progress.warn) are logged as they come and appended to `warnings`.
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
    result = _fit_with_progress(trainer, lambda: ray.get(progress.get.remote()), total, start, desc, label,
                                [] if warnings is None else warnings)
    if isinstance(result, BaseException):
        last = latest_checkpoint(run_dir)
        raise TrainingError(f"{_failure_reason(result)} (last good checkpoint: {last or 'none'})") from result
    return result


def _fit_with_progress(trainer: TorchTrainer, poll, total: int, start: int, desc: str, label: str, shown: list[str]):
    """trainer.fit() under a progress bar fed by `poll()` (the Progress actor's step, value and
    warnings), logging each new warning of the workers and adding it to `shown`; returns the
    result, or the exception fit raised."""
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=_try_fit(trainer)), daemon=True)
    thread.start()
    with tqdm(total=total, initial=start, desc=desc, unit="step") as bar:
        while thread.is_alive():
            thread.join(timeout=1.0)
            step, value, warnings = poll()
            bar.update(max(0, step - bar.n))
            if value is not None:
                bar.set_postfix({label: f"{value:.4f}"})
            for text in [w for w in warnings if w not in shown]:
                with bar.external_write_mode(file=sys.stderr):
                    log.warning("warning: %s", text)
                shown.append(text)
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


SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The run's last checkpoint as Ray Train recorded it, the one a rerun resumes from: a folder
    that a failed save left behind (a full disk) is not in the record."""
    snapshot = run_dir / SNAPSHOT
    if snapshot.is_file():
        names = [r["checkpoint_dir_name"] for r in json.loads(snapshot.read_text())["checkpoint_results"]]
        return run_dir / max(names) if names else None  # names are checkpoint_<timestamp>
    found = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    return found[-1] if found else None


def checkpoint_state(run_dir: Path) -> dict:
    last = latest_checkpoint(run_dir)
    return json.loads((last / STATE_FILE).read_text()) if last else {}


class Launch:
    """The driver's side of one training run named `run_name`, of `kind`, starting from the
    model at `model_path`: `with launch.tracked(...)`, then `launch.workers(...)`, then
    `launch.result(...)`."""

    def __init__(self, cfg: TrainConfig | PPOConfig, kind: str, run_name: str, model_path: Path):
        self.cfg, self.kind, self.model_path = cfg, kind, model_path
        self.run_dir = (cfg.output_dir / "train").resolve() / run_name
        self.start = checkpoint_state(self.run_dir).get("step", 0)  # 0, or the step a rerun resumes at
        self.active: mlflow.ActiveRun | None = None
        self.warnings: list[str] = []  # the workers' warnings, shown as they come and kept for the result

    @contextmanager
    def tracked(self, model_role: str) -> Iterator[mlflow.ActiveRun]:
        """The run's MLflow run (resumed when it exists), its config as params and the
        starting model as an input in `model_role`."""
        params = {**tracking.flatten(self.cfg), "kind": self.kind, "model.path": str(self.model_path)}
        with tracking.start_run(self.cfg.tracking, self.cfg.output_dir, self.run_dir.name, params, resume=True) as active:
            self.active = active
            tracking.log_model_input(self.cfg.model.name, model_role)
            yield active

    def workers(self, loop, loop_config: dict, total: int, desc: str, label: str = "loss",
                resources: dict | None = None) -> ray.train.Result:
        """`loop` on the Ray Train workers; the loop config also gets the MLflow run's
        tracking_uri and run_id."""
        loop_config = {**loop_config, "run_id": self.active.info.run_id,
                       "tracking_uri": tracking.tracking_uri(self.cfg.tracking, self.cfg.output_dir)}
        return run_workers(loop, loop_config, self.cfg.trainer, self.run_dir, total, self.start, desc, label, resources,
                           self.warnings)

    def result(self, result: ray.train.Result, registered: str, metric: str, higher_is_better: bool) -> TrainResult:
        """The run's outcome; a finished run's model (the checkpoint's hf/) is registered as a
        new version of `registered`, champion when its `metric` beats the current one."""
        folder = Path(result.checkpoint.path)
        run_id = self.active.info.run_id
        if not json.loads((folder / STATE_FILE).read_text())["final"]:
            return TrainResult(run_id, folder, None, result.metrics, False, tuple(self.warnings))
        base = lora.base_ref(folder / "hf") if lora.is_adapter_folder(folder / "hf") else None  # registered without it
        version, champion = mlflow_model.register(
            folder / "hf", registered, result.metrics.get(metric), metric, higher_is_better,
            {"base_model": base} if base else None, resolve(base) if base else None,
        )
        if not self.cfg.trainer.keep_final_state:
            freed = drop_resume_state(self.run_dir)
            log.info("finished: dropped %.2f GB of optimizer and engine state from the checkpoints of %s (their"
                     " models, hf/, are kept)", freed / 1e9, self.run_dir)
        return TrainResult(run_id, folder, f"models:/{registered}/{version}", result.metrics, champion,
                           tuple(self.warnings))
