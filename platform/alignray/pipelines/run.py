"""`alignray run CONFIG`: the stages of a recipe in order, each fed by the outputs before it.

Every stage config is built (shared sections + the recipe's settings + `stages.<name>` + the
wired inputs) and validated before anything runs. A stage is keyed by a hash of its config and
inputs (minus the fields that only pause, name or place a run: stop_after_*, run and registry
names, address);
a finished stage records key and output as tags of its MLflow run, so running the pipeline
again skips every stage already done for the same key, and says so; the check and the run
happen under a file lock per key (`once`), so pipelines running at once (a sweep's trials)
run a shared stage once. An interrupted training stage resumes from its last checkpoint (its
Ray Train run name carries the key). The pipeline's `seed` seeds every stage that has none of
its own, and the evaluate stage uses the split of `evaluate_on`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.exceptions import MlflowException
from pydantic import ValidationError

from alignray import tracking
from alignray.config import ConfigError, PipelineConfig, SimulateConfig, explain_errors
from alignray.data.pairs import load_pairs
from alignray.data.sources import load_conversations, normal
from alignray.evaluate.summary import SEED_TAG
from alignray.io import file_lock
from alignray.pipelines.recipes import LIST_FIELDS, RECIPES, Stage
from alignray.principles import load_principles
from alignray.stages import STAGES, reserves

SHARED = ("model", "sampler", "data", "tracking", "output_dir", "address")
VOLATILE = {"address", "run_name", "tracking.run_name", "tracking.parent_run", "tracking.tags", "registered_model",
            "trainer.stop_after_steps", "ppo.stop_after_iterations", "trainer.keep_final_state"}
# Fields added after stages were first recorded, at the value that changes nothing: left out of
# the key, so that stages run before the field existed are still reused.
KEY_NEUTRAL = {"trainer.lora": "None", "trainer.bf16_mode": "weights", "dataset_split": "train",
               **{f"{key}_key": key for key in ("prompt", "chosen", "rejected", "messages")},
               **{f"{section}.{field}": value for section in ("data", "benign_data")
                  for field, value in (("split", "train"), ("prompt_key", "prompt"), ("messages_key", "messages"))}}
SEED_FIELD = {"simulate": "simulation.seed"}  # the pipeline's `seed` goes here; training kinds: trainer.seed
KEY_TAG, OUTPUT_TAG = "alignray.stage_key", "alignray.stage_output"
PIPELINE_TAG = "alignray.pipeline_run"  # on a pipeline's parent run: the pipeline's name
PLACEHOLDER = "<output of {}>"


@dataclass
class StageOutcome:
    stage: str
    output: str | None  # None: stopped early (checkpointed); run again to resume
    run_id: str | None
    skipped: bool


def merge(base: dict, extra: dict) -> dict:
    """`extra` deep-merged over `base` (sections merge, other values replace), as new dicts."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _get(tree: dict, dotted: str) -> Any:
    for p in dotted.split("."):
        if not isinstance(tree, dict) or p not in tree:
            return None
        tree = tree[p]
    return tree


def _user_fields(cfg: PipelineConfig, stage: Stage) -> dict:
    fields = {k: v for k, v in (cfg.stages.get(stage.name) or {}).items() if k != "use"}
    for dotted in stage.inputs:
        if _get(fields, dotted) is not None:
            raise ConfigError(f"stages.{stage.name}.{dotted} is the output of stage"
                              f" '{stage.inputs[dotted][0]}'; remove it (or give that stage `use:`)")
    return fields


def stage_config(cfg: PipelineConfig, stage: Stage, values: dict[tuple[str, str], Any]):
    """The stage's validated config; `values[(stage, what)]` are the wired inputs."""
    shared = json.loads(cfg.model_dump_json(include=set(SHARED)))
    seeded: dict = {}
    if stage.kind == "evaluate":
        data, benign = cfg.evaluation_data()
        shared["data"] = json.loads(data.model_dump_json())
        if benign is not None:
            shared["benign_data"] = json.loads(benign.model_dump_json())
        shared["split"] = cfg.evaluate_on
    elif cfg.seed is not None and (stage.kind in SEED_FIELD or STAGES[stage.kind].trains):
        _set(seeded, SEED_FIELD.get(stage.kind, "trainer.seed"), cfg.seed)
    schema = STAGES[stage.kind].schema
    tree = {k: v for k, v in shared.items() if k in schema.model_fields}
    if STAGES[stage.kind].trains:
        tree["registered_model"] = f"{cfg.label}-{stage.name}"
    # the pipeline's seed, then the recipe's settings, then the user's stage fields; the inputs go in below
    tree = copy.deepcopy(merge(merge(merge(tree, seeded), stage.defaults), _user_fields(cfg, stage)))
    tree.setdefault("tracking", {})["run_name"] = f"{cfg.label}-{stage.name}"
    if stage.kind == "evaluate":
        tree.setdefault("name", f"{cfg.label}-evaluate")
    for dotted, source in stage.inputs.items():
        value = values[source]
        _set(tree, dotted, [value] if dotted in LIST_FIELDS and source[1] != "criteria" else value)
    try:
        return schema.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(explain_errors(exc, schema, f"stages.{stage.name} ({stage.kind} stage)", {})) from None


def stage_key(stage: Stage, config) -> str:
    flat = {k: v for k, v in tracking.flatten(config).items() if k not in VOLATILE and KEY_NEUTRAL.get(k) != v}
    return hashlib.sha256(json.dumps([stage.kind, flat], sort_keys=True).encode()).hexdigest()


def _output_exists(output: str) -> bool:
    if output.startswith("models:/"):
        name, _, version = output.removeprefix("models:/").partition("/")
        try:
            mlflow.MlflowClient().get_model_version(name, version)
            return True
        except MlflowException:
            return False
    return Path(output).exists()


def _done_before(key: str, experiment: str) -> tuple[str, str] | None:
    """(run id, output) of a finished run of this stage key whose output still exists."""
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = mlflow.search_runs([found.experiment_id], f"tags.`{KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], output_format="list")
    for run in runs:
        output = run.data.tags.get(OUTPUT_TAG)
        if output and _output_exists(output):
            return run.info.run_id, output
    return None


def _criteria(config: SimulateConfig) -> list[str]:
    return list(load_principles(config.simulation.principles).criteria)


def _check_held_out(cfg: PipelineConfig) -> None:
    """Fail when two splits share a prompt (case and punctuation ignored): training (data) against
    dev (dev_data, benign_dev_data) and test (eval_data or the prompts after data.limit,
    benign_eval_data), and dev against test."""
    splits = {"training": [("data", cfg.data)],
              "dev": [("dev_data", cfg.dev_data), ("benign_dev_data", cfg.benign_dev_data)],
              "evaluation": [("eval_data", cfg.held_out()), ("benign_eval_data", cfg.benign_eval_data)]}
    seen: dict[str, tuple[str, str]] = {}  # prompt -> (split, field) of an earlier split
    for split, sets in splits.items():
        mine: dict[str, str] = {}
        for field, data in sets:
            for c in load_conversations(data) if data is not None else []:
                if (earlier := seen.get(normal(c))) is not None:
                    raise ConfigError(
                        f"{split} prompts of {field} ({data.source}) are also {earlier[0]} prompts of {earlier[1]}"
                        f" (first: {c.origin}); hold them out with a slice or skip")
                mine.setdefault(normal(c), field)
        seen.update({prompt: (split, field) for prompt, field in mine.items()})


def _check_fits_here(cfg: PipelineConfig, stage: Stage, config) -> None:
    """Without a cluster address the stages run on a local cluster of this machine's cores; a PPO
    stage whose trainer and samplers together need more fails now, not after the stages before it
    (in either placement they share the one node)."""
    if stage.kind != "ppo" or cfg.address or os.environ.get("RAY_ADDRESS"):
        return
    t, s = config.trainer, config.sampler
    need, have = t.num_workers * t.cpus_per_worker + s.num_samplers * s.cpus_per_sampler, len(os.sched_getaffinity(0))
    if need > have:
        raise ConfigError(
            f"stages.{stage.name}: trainer.num_workers x trainer.cpus_per_worker = {t.num_workers * t.cpus_per_worker:g}"
            f" plus sampler.num_samplers x sampler.cpus_per_sampler = {s.num_samplers * s.cpus_per_sampler:g} CPUs,"
            f" but this machine has {have} (the local cluster's node); lower them for this stage, e.g."
            f" stages.{stage.name}.sampler.num_samplers=1, or give an address"
        )


def plan(cfg: PipelineConfig) -> list[Stage]:
    """The recipe's stages, with every config validated on placeholder inputs, the held-out
    prompts checked against the training prompts, and a PPO stage's reward.fit_weights file read."""
    stages = RECIPES[cfg.pipeline]
    names = [s.name for s in stages]
    unknown = sorted(set(cfg.stages) - set(names))
    if unknown:
        raise ConfigError(f"stages: {unknown} not in the {cfg.pipeline} pipeline (its stages: {', '.join(names)})")
    for name, fields in cfg.stages.items():
        use = (fields or {}).get("use")
        if use is not None and not _output_exists(str(use)):
            raise ConfigError(f"stages.{name}.use: {use!r} does not exist (a dataset path or a models:/ URI)")
    _check_held_out(cfg)
    for s, config in stage_configs(cfg):
        _check_fits_here(cfg, s, config)
        if s.kind == "ppo" and config.reward.fit_weights is not None:  # a bad file fails now, not after hours
            load_pairs(config.reward.fit_weights, f"stages.{s.name}.reward.fit_weights")
    return stages


def stage_configs(cfg: PipelineConfig) -> list[tuple[Stage, Any]]:
    """Every stage of the recipe with its validated config, wired to placeholder inputs (what
    each stage will ask Ray for and register, before anything runs)."""
    placeholders: dict = {}
    out = []
    for s in RECIPES[cfg.pipeline]:
        config = stage_config(cfg, s, placeholders)
        out.append((s, config))
        placeholders[(s.name, "output")] = PLACEHOLDER.format(s.name)
        placeholders[(s.name, "run")] = PLACEHOLDER.format(s.name)
        if s.kind == "simulate":
            placeholders[(s.name, "criteria")] = _criteria(config)
    return out


def once(key: str, experiment: str, locks: Path, produce: Callable[[], tuple[str | None, str]],
         tags: dict[str, str]) -> tuple[str | None, str, bool]:
    """(output, run id, reused) of the stage with this key: a finished run's, or `produce()`'s,
    whose run is then tagged with the key, its output and `tags`. Under a file lock per key, so
    pipelines running at once (a sweep's trials) that share a stage run it once: the others wait
    and reuse it. An output of None (stopped early) is not recorded."""
    with file_lock(locks / f"stage-{key[:32]}.lock"):
        if previous := _done_before(key, experiment):
            return previous[1], previous[0], True
        output, run_id = produce()
        if output is not None:
            client = mlflow.MlflowClient()
            for tag, value in {KEY_TAG: key, OUTPUT_TAG: output, **tags}.items():
                client.set_tag(run_id, tag, value)
        return output, run_id, False


def preview(cfg: PipelineConfig) -> list[str]:
    """What `run(cfg)` would do, without running or writing anything: each stage's resolved config
    (shared sections, the recipe's settings, `stages.<name>`, the wired inputs), whether the store
    already holds its output (so it would be skipped), and what it reserves on the cluster."""
    uri = tracking.tracking_uri(cfg.tracking, cfg.output_dir)
    store = not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file()  # no file: nothing done
    if store:
        mlflow.set_tracking_uri(uri)
    stages = plan(cfg)
    values: dict = {}
    pending: list[str] = []  # the stages that would run: the stages they feed get new inputs
    lines, table, most = [], [], (0.0, 0.0)
    for n, s in enumerate(stages, 1):
        config = stage_config(cfg, s, values)
        use = (cfg.stages.get(s.name) or {}).get("use")
        waits_for = [source for source, _ in s.inputs.values() if source in pending]
        done = None
        if use is None and not waits_for and store:
            done = _done_before(stage_key(s, config), cfg.tracking.experiment)
        if use is not None:
            state, output = "skip: uses the given output", str(use)
        elif done is not None:
            state, output = f"skip: done before (MLflow run {done[0][:8]})", done[1]
        else:
            state, output = "run" + (f" (on {waits_for[0]}'s new output)" if waits_for else ""), None
            pending.append(s.name)
        values[(s.name, "output")] = output or PLACEHOLDER.format(s.name)
        values[(s.name, "run")] = done[0] if done else PLACEHOLDER.format(s.name)
        if s.kind == "simulate":
            values[(s.name, "criteria")] = _criteria(config)
        lines += [f"# [{n}/{len(stages)}] {s.name} ({s.kind} stage): {state}", yaml.safe_dump(
            json.loads(config.model_dump_json()), sort_keys=False, allow_unicode=True).rstrip(), ""]
        what, cpus, gpus = reserves(config)
        most = (max(most[0], cpus), max(most[1], gpus))
        table.append(f"  [{n}/{len(stages)}] {s.name:11s} {state:40s}  {what}" + (f"\n        -> {output}" if output else ""))
    where = f"the cluster at {cfg.address}" if cfg.address else f"this machine has {len(os.sched_getaffinity(0))} CPUs"
    needs = f"{most[0]:g} CPUs" + (f" and {most[1]:g} GPUs" if most[1] else "")
    return [*lines, f"pipeline {cfg.label} ({cfg.pipeline}), MLflow store {uri}:", *table,
            f"the largest stage reserves {needs} at once ({where})"]


def run(cfg: PipelineConfig, say=print) -> list[StageOutcome]:
    """Run (or resume) the pipeline, every stage's MLflow run nested under the pipeline's own
    parent run (one per pipeline name; a sweep's trial: the sweep's); stops after a stage that
    stopped early."""
    mlflow.set_tracking_uri(tracking.tracking_uri(cfg.tracking, cfg.output_dir))
    stages = plan(cfg)
    if cfg.tracking.parent_run is not None:
        return _run(cfg, stages, say)
    parent, _ = tracking.parent_run(cfg.tracking, cfg.output_dir, PIPELINE_TAG, cfg.label, f"pipeline-{cfg.label}",
                                    {"alignray.pipeline": cfg.label})
    status = "FAILED"
    try:
        outcomes = _run(cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"parent_run": parent})}),
                        stages, say)
        status = "FINISHED" if outcomes[-1].output is not None else "KILLED"  # KILLED: stopped early, resumable
        return outcomes
    finally:
        mlflow.MlflowClient().set_terminated(parent, status)


def _run(cfg: PipelineConfig, stages: list[Stage], say) -> list[StageOutcome]:
    values: dict = {}
    outcomes = []
    for n, s in enumerate(stages, 1):
        head = f"[{n}/{len(stages)}] {s.name} ({s.kind})"
        config = stage_config(cfg, s, values)
        key = stage_key(s, config)
        use = (cfg.stages.get(s.name) or {}).get("use")
        if use is not None:
            say(f"{head}: using the given output {use}")
            outcome = StageOutcome(s.name, str(use), None, True)
        else:
            def produce(config=config, s=s, key=key, head=head) -> tuple[str | None, str]:
                if STAGES[s.kind].trains:
                    config = config.model_copy(update={"run_name": f"{cfg.label}-{s.name}-{key[:8]}"})
                say(f"{head}: running")
                result = STAGES[s.kind].run(config)
                if result.notes:
                    say("\n".join(result.notes))
                return result.output, result.run_id

            tags = {"alignray.pipeline": cfg.label, "alignray.stage": s.name,
                    **({SEED_TAG: str(cfg.seed)} if cfg.seed is not None else {})}
            output, run_id, reused = once(key, cfg.tracking.experiment, cfg.output_dir / "locks", produce, tags)
            outcome = StageOutcome(s.name, output, run_id, reused)
            if reused:
                say(f"{head}: already done for these inputs and config (MLflow run {run_id[:8]}), skipping -> {output}")
            elif output is None:
                say(f"{head}: stopped before the end (checkpoint kept); run the pipeline again to resume")
                outcomes.append(outcome)
                return outcomes
            else:
                say(f"{head}: done -> {output}")
        outcomes.append(outcome)
        values[(s.name, "output")] = outcome.output
        values[(s.name, "run")] = outcome.run_id
        if s.kind == "simulate":
            values[(s.name, "criteria")] = _criteria(config)
    return outcomes
