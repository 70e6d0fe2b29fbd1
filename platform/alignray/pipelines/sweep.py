"""`alignray sweep CONFIG`: the pipeline once per trial on Ray Tune, over the config fields of its
`sweep:` section; then, when more than the seed varies, the configuration that is best on the
dev split (`sweep.select`, averaged over its seeds) is evaluated once on the test split.

- Arms (`sweep.arms`) are methods compared, not chosen among: each arm (a config subtree over
  the base, possibly another recipe) runs at every seed and is evaluated on the test split;
  `alignray report` compares them with the baseline arm. Tune's grid has an `arm` dimension.

- A trial is the whole pipeline (`alignray.pipelines.run.run`) with the trial's overrides, run
  in a Tune trial. Tune reserves memory for the trial's driver but no CPU; its stages reserve
  their own samplers and trainer workers as they run, so at most as many trials run at once as
  the cluster's CPUs hold whole pipelines (`sweep.max_concurrent_trials`; 1 on a small machine).
  Each trial holds one of that many lock files (`<output_dir>/locks/sweep-<name>-slot<k>.lock`)
  while it runs: Tune restarts every trial a resume finds unfinished at once, above its limit.
- Stages trials share (the same simulation under several PPO settings) run once: the stage
  cache of `pipelines.run` claims each stage key under a lock.
- MLflow: one parent run per sweep (tag `alignray.sweep`); every stage run of a trial is nested
  under it and tagged with the trial's overrides; the parent holds `trials.json`, the table of
  trials and their evaluate runs that `alignray report` reads.
- The Tune experiment lives in `<output_dir>/sweeps/<name>/`. Running the same command again
  resumes it (`Tuner.restore`): finished trials are kept, unfinished ones run again (their
  finished stages are skipped, training resumes from its checkpoints). A sweep stopped before
  all its trials finished (Ctrl-C) chooses nothing and never touches the test split.
- With `sweep.record`, each finished trial's runs are also written to a file there
  (`alignray.pipelines.records`), and a trial whose file matches its config is restored from it
  instead of run: the sweep survives the loss of its store.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from pydantic import ValidationError

from alignray import cluster, tracking
from alignray.config import ConfigError, PipelineConfig, SweepConfig, explain_errors, set_path
from alignray.evaluate.summary import SWEEP_TAG, TRIAL_TAG, TRIALS_ARTIFACT, configuration_label
from alignray.io import one_of_locks, write_text
from alignray.pipelines import records
from alignray.pipelines import run as pipeline
from alignray.pipelines.recipes import RECIPES
from alignray.stages import reserves

OVERRIDES_TAG = "alignray.overrides"  # on every stage run of a trial, with TRIAL_TAG
# What Tune reserves for a trial's driver: memory, no CPU (a stage may need every CPU of a node; the
# stages reserve their own samplers and trainer workers as they run)
TRIAL_RESOURCES = {"memory": 512 * 2**20}


@dataclass
class Trial:
    trial_id: str
    overrides: dict[str, Any]
    status: str  # TERMINATED, ERROR or UNFINISHED (the sweep was stopped while it ran or before it started)
    dev_run: str | None = None  # the evaluate stage's MLflow run on the dev split (a sweep that chooses)
    test_run: str | None = None  # ... on the test split
    metrics: dict[str, float] = field(default_factory=dict)  # of the trial's evaluate run
    error: str | None = None
    stage_runs: dict[str, str] = field(default_factory=dict)  # stage -> its MLflow run (its own, or one it reused)

    @property
    def configuration(self) -> str:
        """The trial's arm and overrides but the seed: trials with the same configuration differ by seed only."""
        return configuration_label(self.overrides)


class SweepStopped(RuntimeError):
    """The sweep was stopped (Ctrl-C) before every trial finished; running it again resumes it."""


@dataclass(frozen=True)
class SweepResult:
    name: str
    parent_run: str
    folder: Path  # the Tune experiment
    trials: list[Trial]
    configurations: int
    chosen: str | None  # the chosen configuration's label; None when only the seed varies
    selection: str  # how the reported configuration was chosen, as the reports say it


def _base_tree(cfg: PipelineConfig) -> dict:
    """The pipeline config as a plain tree, without its sweep section, with absolute paths (a
    trial runs in another process, whose working folder may differ)."""
    tree = json.loads(cfg.model_dump_json(exclude={"sweep"}, exclude_none=True))
    tree["output_dir"] = str(cfg.output_dir.resolve())
    tree.setdefault("tracking", {})["uri"] = tracking.tracking_uri(cfg.tracking, cfg.output_dir)
    return tree


def arm_tree(base: dict, arm: str, fields: dict[str, Any]) -> dict:
    """The pipeline tree of an arm: `base` with the arm's fields deep-merged over it. The arm keeps
    the base's `stages.<name>` sections of the stages its recipe has (all of them when it keeps
    the base's recipe) and drops the others; its pipeline name defaults to `<base name>-<arm>`."""
    recipe = fields.get("pipeline", base["pipeline"])
    names = {s.name for s in RECIPES.get(recipe, [])}
    kept = {k: v for k, v in base.get("stages", {}).items() if k in names}
    label = base.get("name") or base["pipeline"]
    return pipeline.merge({**base, "stages": kept, "name": f"{label}-{arm}"}, fields)


def trial_config(base: dict, overrides: dict[str, Any], arms: dict[str, dict] | None = None,
                 **extra: Any) -> PipelineConfig:
    """The pipeline config of one trial: `base` (with the arm's fields when the overrides name an
    arm of `arms`) with the dotted overrides and `extra` fields."""
    overrides = dict(overrides)
    arm = overrides.pop("arm", None)
    tree = copy.deepcopy(base if arm is None else arm_tree(base, arm, (arms or {})[arm]))
    for dotted, value in {**overrides, **extra}.items():
        set_path(tree, dotted.split("."), value, f"sweep field {dotted!r}")
    try:
        return PipelineConfig.model_validate(tree)
    except ValidationError as exc:
        where = f"sweep.arms.{arm}" if arm is not None else f"sweep trial ({configuration_label(overrides)})"
        raise ConfigError(explain_errors(exc, PipelineConfig, where, {})) from None


def param_space(sweep: SweepConfig) -> dict:
    from ray import tune

    space: dict[str, Any] = {key: tune.grid_search(values) for key, values in sweep.grid.items()}
    if sweep.arms:
        space["arm"] = tune.grid_search(list(sweep.arms))
    for key, d in sweep.random.items():
        if d.uniform:
            space[key] = tune.uniform(*d.uniform)
        elif d.loguniform:
            space[key] = tune.loguniform(*d.loguniform)
        elif d.randint:
            space[key] = tune.randint(*d.randint)
        else:
            space[key] = tune.choice(d.choice)
    return space


def _check(cfg: PipelineConfig, base: dict) -> None:
    """Every grid combination (random fields at a bound) makes a valid pipeline, before Tune starts."""
    sweep = cfg.sweep
    if sweep.varies_more_than_seed and sweep.select is None:
        raise ConfigError("sweep: more than the seed varies, so the sweep must choose a configuration: add"
                          " sweep.select (metric, mode) and dev_data (the prompts to choose on)")
    if sweep.select is not None and not sweep.varies_more_than_seed:
        raise ConfigError("sweep.select: only the seed varies, so there is nothing to choose; remove select")
    if sweep.select is not None and cfg.dev_data is None:
        raise ConfigError("sweep.select chooses on the dev split: set dev_data (held-out prompts apart from"
                          " eval_data and the training data)")
    at_bounds = {k: (d.choice[0] if d.choice else (d.uniform or d.loguniform or d.randint)[0]) for k, d in sweep.random.items()}
    combos = [{}]
    for key, values in sweep.grid.items():
        combos = [{**c, key: v} for c in combos for v in values]
    for combo in combos:
        if not sweep.arms:
            pipeline.plan(trial_config(base, {**combo, **at_bounds}))
        for arm in sweep.arms:
            trial = trial_config(base, {**combo, "arm": arm}, sweep.arms)  # its errors name the arm
            try:
                pipeline.plan(trial)
            except ConfigError as exc:
                raise ConfigError(f"sweep.arms.{arm}: {exc}") from None
    named: dict[str, str] = {}
    for arm, trial in arm_configs(cfg, base).items():
        if trial.label in named:
            raise ConfigError(f"sweep.arms.{named[trial.label]} and sweep.arms.{arm}: both name their pipeline"
                              f" {trial.label!r}; give each arm its own `name` (it names the arm's MLflow runs and"
                              " registered models)")
        named[trial.label] = arm


def arm_configs(cfg: PipelineConfig, base: dict) -> dict[str, PipelineConfig]:
    """Each arm's pipeline config, at the base's seed (none when the sweep has no arms)."""
    return {arm: trial_config(base, {"arm": arm}, cfg.sweep.arms) for arm in cfg.sweep.arms}


def peak_cpus(cfg: PipelineConfig) -> float:
    """The most CPUs one stage of the pipeline reserves at once (PPO: its trainer and samplers)."""
    return max(reserves(config)[1] for _, config in pipeline.stage_configs(cfg))


def _parent_run(cfg: PipelineConfig, name: str, spec: dict) -> str:
    """The sweep's MLflow parent run (the earlier one of this name, when resuming)."""
    run_id, new = tracking.parent_run(cfg.tracking, cfg.output_dir, SWEEP_TAG, name, f"sweep-{name}",
                                      {"alignray.pipeline": cfg.label})
    for key, value in spec["sweep"].items() if new else ():
        mlflow.MlflowClient().log_param(run_id, f"sweep.{key}", json.dumps(value, sort_keys=True))
    return run_id


def _trial_runs(cfg: PipelineConfig, overrides: dict, record: Path | None, name: str, parent: str, trial_id: str,
                say) -> tuple[str, dict[str, str]]:
    """The trial's evaluate run and its stage runs (stage -> run id): restored from its file in
    `record` when that matches the trial's config, else from another sweep's file there of the same
    config (then recorded as its own), else run by the pipeline (then recorded)."""
    target = record and records.path(record, name, overrides, cfg.evaluate_on)
    found, key = (records.load(target) if target else None), records.fingerprint(cfg)
    if found and found["fingerprint"] == key:
        say(f"trial {trial_id}: restored from {target}")
        runs = records.restore(found, target.name, cfg, parent, trial_id)
        return runs["evaluate"], runs
    if found:
        say(f"trial {trial_id}: {target} records another config of this trial; running it, then replacing that file")
    elif target and (other := records.elsewhere(record, name, key)):
        say(f"trial {trial_id}: restored from {other[0]}, another sweep's trial of the same config (its runs reused)")
        runs = records.restore(other[1], other[0].name, cfg, parent, trial_id, reused=True)
        records.save(target, cfg, overrides, runs, parent, trial_id)
        return runs["evaluate"], runs
    outcomes = pipeline.run(cfg, say=say)
    last = outcomes[-1]
    if last.output is None or last.stage != "evaluate":
        raise RuntimeError(f"the pipeline stopped before its evaluation (at stage {last.stage})")
    runs = _stage_runs(outcomes)
    if target:
        records.save(target, cfg, overrides, runs, parent, trial_id)
    return last.run_id, runs


def _trainable(base: dict, arms: dict[str, dict], cwd: str, parent: str, evaluate_on: str, slots: list[Path],
               name: str, record: Path | None):
    """Tune's function: the pipeline of one trial (or its record), holding one of the `slots` locks
    (Tune's own limit does not hold for the trials a resume restarts together); reports its
    evaluate run's metrics."""

    def trial(params: dict) -> None:
        from ray import tune

        if os.path.isdir(cwd):  # relative data paths in the config mean the driver's folder
            os.chdir(cwd)
        overrides = dict(params)
        trial_id = tune.get_context().get_trial_id()
        tags = {TRIAL_TAG: trial_id, OVERRIDES_TAG: json.dumps(overrides, sort_keys=True)}
        cfg = trial_config(base, overrides, arms, evaluate_on=evaluate_on, **{"tracking.parent_run": parent,
                                                                             "tracking.tags": tags})
        print(f"trial {trial_id}: waiting for one of the sweep's {len(slots)} trial slots", flush=True)
        with one_of_locks(slots) as slot:
            print(f"trial {trial_id}: runs in {slot.name}", flush=True)
            # its lines go into the trial's log (Ray's worker files), not the terminal
            evaluate_run, runs = _trial_runs(cfg, overrides, record, name, parent, trial_id, say=print)
        metrics = mlflow.MlflowClient().get_run(evaluate_run).data.metrics
        tune.report({**metrics, "evaluate_run": evaluate_run, "stage_runs": json.dumps(runs)})

    return trial


def _stage_runs(outcomes: list[pipeline.StageOutcome]) -> dict[str, str]:
    """Stage -> the MLflow run of every stage a trial ran or reused."""
    return {o.stage: o.run_id for o in outcomes if o.run_id}


def _progress(total: int, say):
    """A Tune callback that says a line per trial started, finished or failed."""
    from ray.tune import Callback

    class Progress(Callback):
        done = 0

        def on_trial_start(self, iteration, trials, trial, **info):
            say(f"trial {trial.trial_id} started: {configuration_label(trial.config)}, seed {trial.config.get('seed', '-')}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            say(f"trial {trial.trial_id} finished ({self.done} of {total} in this run)")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1
            say(f"trial {trial.trial_id} FAILED ({self.done} of {total} in this run); its log: {trial.local_path}")

    return Progress()


def _trials(grid) -> list[Trial]:
    out = []
    for result in grid:
        config = result.config or {}
        error = None if result.error is None else str(result.error).strip().splitlines()[-1]
        metrics = {k: float(v) for k, v in (result.metrics or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and "/" not in k
                   and k not in ("training_iteration", "time_this_iter_s", "time_total_s", "timestamp",
                                 "time_since_restore", "iterations_since_restore", "pid")}
        run_id = (result.metrics or {}).get("evaluate_run")
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        stage_runs = json.loads((result.metrics or {}).get("stage_runs") or "{}")
        status = "ERROR" if error else "TERMINATED" if run_id else "UNFINISHED"  # a trial reports once, at its end
        out.append(Trial(trial_id, dict(config), status, dev_run=run_id, metrics=metrics, error=error,
                         stage_runs=stage_runs))
    return out


def choose(trials: list[Trial], metric: str, mode: str) -> tuple[str, dict[str, float], list[str]]:
    """The configuration with the best mean of `metric` over its trials (seeds), every
    configuration's mean, and the others tied with it (a tie goes to the configuration of the
    lowest trial id: Tune numbers trials in grid order, so the first listed in the grid; a
    restored sweep's results come in another order). Raises ConfigError when no finished trial has
    the metric."""
    values: dict[str, list[float]] = {}
    for t in sorted(trials, key=lambda t: t.trial_id):
        if t.status == "TERMINATED" and metric in t.metrics and not math.isnan(t.metrics[metric]):
            values.setdefault(t.configuration, []).append(t.metrics[metric])
    if not values:
        known = sorted({k for t in trials for k in t.metrics})
        raise ConfigError(f"sweep.select.metric {metric!r}: no finished trial has it (their metrics: {', '.join(known)})")
    means = {c: sum(v) / len(v) for c, v in values.items()}
    best = (max if mode == "max" else min)(means, key=means.get)
    ties = [c for c, m in means.items() if c != best and math.isclose(m, means[best], abs_tol=1e-12)]
    return best, means, ties


def run(cfg: PipelineConfig, say=print) -> SweepResult:
    """Run (or resume) the sweep of `cfg.sweep`; see the module's docstring."""
    from ray import tune

    sweep = cfg.sweep
    if sweep is None:
        raise ConfigError("alignray sweep needs a sweep section (grid and/or random) in the pipeline config")
    name = sweep.name or cfg.label
    mlflow.set_tracking_uri(tracking.tracking_uri(cfg.tracking, cfg.output_dir))
    base = _base_tree(cfg)
    _check(cfg, base)
    spec = {"pipeline": base, "sweep": json.loads(sweep.model_dump_json(exclude={"record"}))}
    storage = (cfg.output_dir / "sweeps").resolve()
    folder = storage / name
    stamp = storage / f"{name}.json"  # what the sweep of this name was started with
    if stamp.is_file() and json.loads(stamp.read_text()) != spec:
        raise ConfigError(f"a sweep named {name!r} was started with another config ({stamp}); give this one"
                          f" another sweep.name, or delete {folder} and {stamp} to start it anew")
    storage.mkdir(parents=True, exist_ok=True)
    if not stamp.is_file():
        write_text(stamp, json.dumps(spec, indent=1, sort_keys=True))

    # Tune saves the experiment's state (which trials finished) at every step, not every 10 s: a
    # driver killed right after a trial finished must not run it again when resumed
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    cluster.connect(cfg.address)
    import ray

    parent = _parent_run(cfg, name, spec)
    arm_cfgs = arm_configs(cfg, base)
    per_trial = max(peak_cpus(c) for c in list(arm_cfgs.values()) or [cfg]) or 1.0
    concurrent = sweep.max_concurrent_trials or max(1, int(ray.cluster_resources().get("CPU", 1) // per_trial))
    chooses = sweep.select is not None
    slots = [cfg.output_dir.resolve() / "locks" / f"sweep-{name}-slot{k}.lock" for k in range(concurrent)]
    record = sweep.record.resolve() if sweep.record else None
    trainable = tune.with_resources(_trainable(base, sweep.arms, os.getcwd(), parent, "dev" if chooses else "test",
                                               slots, name, record), tune.PlacementGroupFactory([TRIAL_RESOURCES]))
    combos = math.prod(len(v) for v in sweep.grid.values()) * max(1, len(sweep.arms)) * sweep.num_samples
    progress = _progress(combos, say)
    if tune.Tuner.can_restore(str(folder)):
        say(f"sweep {name}: resuming {folder} (finished trials are kept)")
        tuner = tune.Tuner.restore(str(folder), trainable=trainable, resume_errored=True)
    else:
        say(f"sweep {name}: {combos} trials, at most {concurrent} at once; Tune folder {folder}")
        tuner = tune.Tuner(
            trainable, param_space=param_space(sweep),
            tune_config=tune.TuneConfig(num_samples=sweep.num_samples, max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0, callbacks=[progress]),
        )
    grid = tuner.fit()
    trials = _trials(grid)
    client = mlflow.MlflowClient()
    if unfinished := [t for t in trials if t.status == "UNFINISHED"]:
        client.set_terminated(parent, "KILLED")
        raise SweepStopped(f"sweep {name} stopped with {len(unfinished)} of {len(trials)} trials unfinished; nothing"
                           " was chosen or evaluated on the test split. Run the same command to resume it"
                           f" ({folder})")
    configurations = len({t.configuration for t in trials})
    if chooses:
        chosen, means, ties = choose(trials, sweep.select.metric, sweep.select.mode)
        tied = f"; tied on dev with {', '.join(ties)}, listed after it in the grid" if ties else ""
        selection = (f"the best of {configurations} configurations of sweep {name} by the dev-split mean over seeds of"
                     f" {sweep.select.metric} ({sweep.select.mode}); {len(trials)} trials{tied}")
        say(f"sweep {name}: chose {chosen} ({sweep.select.metric} = {means[chosen]:.4f} on dev{tied}); evaluating it"
            " on the test split")
        for t in (t for t in trials if t.configuration == chosen and t.status == "TERMINATED"):
            tags = {TRIAL_TAG: t.trial_id, OVERRIDES_TAG: json.dumps(t.overrides, sort_keys=True)}
            test = trial_config(base, t.overrides, evaluate_on="test", **{
                "tracking.parent_run": parent, "tracking.tags": tags, "stages.evaluate.selection": selection})
            t.test_run, runs = _trial_runs(test, t.overrides, record, name, parent, t.trial_id, say=lambda line: None)
            t.stage_runs |= runs
            t.metrics = mlflow.MlflowClient().get_run(t.test_run).data.metrics
    else:
        chosen = None
        selection = (f"no choice: {configurations} arms compared on the test split (baseline {sweep.baseline_arm}),"
                     f" {len(trials)} trials (sweep {name})" if sweep.arms
                     else f"no choice: one configuration, {len(trials)} seeds (sweep {name})")
        for t in trials:
            t.test_run, t.dev_run = t.dev_run, None
    arms = {arm: {"pipeline": c.pipeline, "name": c.label} for arm, c in arm_cfgs.items()}
    client.log_dict(parent, {"selection": selection, "chosen": chosen, "configurations": configurations,
                             "select": spec["sweep"]["select"], "arms": arms, "baseline": sweep.baseline_arm,
                             "trials": [asdict(t) for t in trials]}, TRIALS_ARTIFACT)
    failed = [t for t in trials if t.status != "TERMINATED"]
    client.set_terminated(parent, "FAILED" if failed else "FINISHED")
    return SweepResult(name, parent, folder, trials, configurations, chosen, selection)
