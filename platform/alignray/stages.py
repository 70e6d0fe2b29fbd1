"""The stages, each registered once: its name, its config schema and `run(cfg) -> StageResult`.

`alignray simulate|train|evaluate`, the Ray job entrypoints (jobs/) and the pipelines
(`alignray run`) all read STAGES. A stage's heavy imports (torch, Ray, vLLM, MLflow) happen
inside its run function, so importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from alignray.config import EvaluateConfig, PPOConfig, SimulateConfig, TrainConfig

if TYPE_CHECKING:
    from alignray.train.launch import TrainResult


@dataclass(frozen=True)
class StageResult:
    output: str | None  # dataset path, report folder or models:/ URI; None: stopped early (resumable)
    run_id: str
    metrics: dict[str, float]
    lines: tuple[str, ...]  # what `alignray <command>` prints after the stage
    warnings: tuple[str, ...] = ()  # printed to stderr, each as "warning: ..."
    notes: tuple[str, ...] = ()  # what a pipeline says after the stage (a simulation's data diagnostics)

    def summary(self) -> list[str]:
        """The printable summary: output, MLflow run and the stage's headline numbers."""
        return list(self.lines)


@dataclass(frozen=True)
class StageKind:
    name: str
    schema: type[BaseModel]
    run: Callable[[Any], StageResult]
    trains: bool  # a training stage: registers a model and resumes from checkpoints under its run_name


def _simulate(cfg: SimulateConfig) -> StageResult:
    from alignray.feedback.simulate import run, show_example

    result = run(cfg)
    diag = result.diagnostics
    lines = ["", result.tally, *(diag.summary() if diag else ()),
             f"dataset:     {result.dataset}",
             f"MLflow run:  {result.run_id} in experiment {result.experiment!r}",
             f"             view with: mlflow ui --backend-store-uri {result.tracking_uri}"]
    for k, row in enumerate(result.examples, 1):
        lines += show_example(k, row)
    warnings = [f"every label in {column} is a tie (0.5): the labeller or judge cannot tell the responses apart;"
                " try a stronger labeller or other instructions" for column in result.all_ties]
    warnings += diag.warnings() if diag else []
    notes = diag.summary() + [f"warning: {w}" for w in diag.warnings()] if diag else []
    return StageResult(str(result.dataset), result.run_id, result.metrics, tuple(lines), tuple(warnings), tuple(notes))


def _trained(result: TrainResult, label: str, hint: str, shown: list[str]) -> StageResult:
    """A training stage's result (a runner's or PPO's TrainResult) with its summary."""
    lines = ["", f"MLflow run:  {result.run_id}", f"checkpoint:  {result.checkpoint}"]
    if result.model_uri is None:
        lines.append(f"stopped before {hint}; run again to resume")
    else:
        lines.append(f"{label:12s} {result.model_uri}{' (new champion)' if result.champion else ''}")
    lines += [f"{key + ':':12s} {result.metrics[key]:.4f}" for key in shown if key in result.metrics]
    return StageResult(result.model_uri, result.run_id, dict(result.metrics), tuple(lines), result.warnings,
                       tuple(f"warning: {w}" for w in result.warnings))


def _trainer(kind: str) -> Callable[[TrainConfig], StageResult]:
    """The run function of a training kind on the shared runner (preference, sft, dpo, rrhf)."""
    def run(cfg: TrainConfig) -> StageResult:
        from alignray.train import runner

        result = runner.fit(cfg, kind)
        return _trained(result, "model:", "the last step (trainer.stop_after_steps)",
                        sorted(k for k in result.metrics if k.startswith("eval_")))

    return run


def _ppo(cfg: PPOConfig) -> StageResult:
    from alignray.train import ppo

    return _trained(ppo.fit(cfg), "policy:", "the last iteration (ppo.stop_after_iterations)",
                    ["reward", "kl", "kl_coef", "response_length"])


def _evaluate(cfg: EvaluateConfig) -> StageResult:
    from alignray.evaluate.stage import run

    result = run(cfg)
    lines = ["", *result.summary(), "", f"report:      {result.folder / 'report.md'}", f"MLflow run:  {result.run_id}"]
    return StageResult(str(result.folder), result.run_id, result.metrics, tuple(lines), result.warnings,
                       tuple(f"warning: {w}" for w in result.warnings))


def reserves(cfg: BaseModel) -> tuple[str, float, float]:
    """What a stage's config asks Ray for while it runs: its vLLM sampler actors (a simulation, an
    evaluation, PPO's rollouts) and its Ray Train workers. (description, CPUs, GPUs)"""
    parts, cpus, gpus = [], 0.0, 0.0
    if isinstance(cfg, (SimulateConfig, PPOConfig, EvaluateConfig)):
        s = cfg.sampler
        parts.append(f"{s.num_samplers} sampler actor(s) x {_amount(s.cpus_per_sampler, s.gpus_per_sampler)}")
        cpus, gpus = cpus + s.num_samplers * s.cpus_per_sampler, gpus + s.num_samplers * s.gpus_per_sampler
    if isinstance(cfg, (TrainConfig, PPOConfig)):
        t, gpu = cfg.trainer, float(cfg.trainer.use_gpu)
        parts.append(f"{t.num_workers} Ray Train worker(s) x {_amount(t.cpus_per_worker, gpu)}")
        cpus, gpus = cpus + t.num_workers * t.cpus_per_worker, gpus + t.num_workers * gpu
    if isinstance(cfg, PPOConfig):
        parts.append(f"placement {cfg.ppo.placement}")
    return ", ".join(parts), cpus, gpus


def _amount(cpus: float, gpus: float) -> str:
    return f"{cpus:g} CPU" + (f" + {gpus:g} GPU" if gpus else "")


STAGES: dict[str, StageKind] = {
    s.name: s
    for s in (
        StageKind("simulate", SimulateConfig, _simulate, trains=False),
        *(StageKind(kind, TrainConfig, _trainer(kind), trains=True) for kind in ("preference", "sft", "dpo", "rrhf")),
        StageKind("ppo", PPOConfig, _ppo, trains=True),
        StageKind("evaluate", EvaluateConfig, _evaluate, trains=False),
    )
}
TRAIN_KINDS = tuple(name for name, s in STAGES.items() if s.trains)
