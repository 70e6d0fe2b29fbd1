"""A sweep's record (`sweep.record`): each finished trial's MLflow runs, one JSON file per trial,
in a folder the user keeps (in git, say) apart from the run store.

A file holds every stage run the trial ran or reused: its experiment, name, status, start and end,
tags, params and last metric values. A sweep whose store has lost a trial (a new machine, a deleted
store) restores it from its file instead of running it again: the runs are created anew in the
store (once each: a stage two trials share is restored once), the trial's own nested under the
sweep's parent run, so `alignray report` reads the same numbers and wall times. Models and datasets are not in the record: a restored run never stands in for a stage
another trial needs (its stage key is left off), so such a stage runs again.

A file is used only for the same trial config: its fingerprint is a hash of the trial's pipeline
config without the fields that only place or name its runs (output_dir, the pipeline's name, the
tracking URI, the parent run, tags, address). The code's version is not in it, as in the stage keys.
A trial with no file of its own takes another sweep's file of the same fingerprint (an arm two
comparisons share, such as the RLCD table's RLAIF in MORLAIF against RLAIF): its runs are restored
as the trial's reused ones, as if it had found their stages in a shared store.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from alignray import tracking
from alignray.config import ConfigError, PipelineConfig
from alignray.evaluate.summary import TRIAL_TAG, configuration_label
from alignray.host import cpu_summary
from alignray.io import write_text
from alignray.models.precision import resolve_dtype
from alignray.pipelines.run import KEY_TAG, OUTPUT_TAG

RESTORED_TAG = "alignray.restored_from"  # on a restored run: the record file it was first restored from
RESTORED_RUN_TAG = "alignray.restored_run"  # ... and the id the run had in the store it ran in
PLACE_ONLY = {"output_dir", "address", "name"}
TRACKING_PLACE_ONLY = {"uri", "parent_run", "tags"}
MLFLOW_BATCH = 100  # params per log_batch call (MLflow's limit)


def fingerprint(cfg: PipelineConfig) -> str:
    """The trial config's hash, without the fields that only place or name its runs."""
    tree = json.loads(cfg.model_dump_json(exclude=PLACE_ONLY | {"sweep"}, exclude_none=True))
    tree["tracking"] = {k: v for k, v in tree.get("tracking", {}).items() if k not in TRACKING_PLACE_ONLY}
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


def path(folder: Path, sweep: str, overrides: dict, split: str) -> Path:
    """`<folder>/<sweep>/<configuration>.seed-<seed>.<split>.json`."""
    label = re.sub(r"[^A-Za-z0-9._=-]+", "_", configuration_label(overrides))
    return folder / sweep / f"{label}.seed-{overrides.get('seed', '-')}.{split}.json"


def elsewhere(folder: Path, sweep: str, key: str) -> tuple[Path, dict] | None:
    """Another sweep's record in `folder` of the trial config whose fingerprint is `key` (path,
    record); None when there is none."""
    for target in sorted(folder.glob("*/*.json")):
        if target.parent.name != sweep and (found := load(target))["fingerprint"] == key:
            return target, found
    return None


def _run_entry(run, own: bool) -> dict:
    return {"run_id": run.info.run_id, "experiment": mlflow.get_experiment(run.info.experiment_id).name,
            "run_name": run.info.run_name, "own": own, "status": run.info.status,
            "start_time": run.info.start_time, "end_time": run.info.end_time,
            "tags": {k: v for k, v in sorted(run.data.tags.items()) if not k.startswith("mlflow.") and k != TRIAL_TAG},
            "params": dict(sorted(run.data.params.items())), "metrics": dict(sorted(run.data.metrics.items()))}


def save(target: Path, cfg: PipelineConfig, overrides: dict, stage_runs: dict[str, str], parent: str,
         trial_id: str) -> Path:
    """Write the trial's record: each of `stage_runs` (stage -> run id). A run is the trial's own when
    it is nested under `parent` and tagged with `trial_id` (also one an earlier attempt of the trial
    ran), else the trial reused it from another trial or sweep."""
    client = mlflow.MlflowClient()
    runs = {}
    for stage, run_id in stage_runs.items():
        run = client.get_run(run_id)
        own = run.data.tags.get(tracking.PARENT_TAG) == parent and run.data.tags.get(TRIAL_TAG) == trial_id
        runs[stage] = _run_entry(run, own)
    record = {"fingerprint": fingerprint(cfg), "overrides": overrides, "split": cfg.evaluate_on,
              "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              # the sweep driver's machine (every stage's, on one machine) and the model dtype there
              "host": cpu_summary(), "dtype": resolve_dtype(cfg.model.dtype), "runs": runs}
    return write_text(target, json.dumps(record, indent=1) + "\n")


def load(target: Path) -> dict | None:
    """The record at `target`; None when there is none."""
    if not target.is_file():
        return None
    try:
        record = json.loads(target.read_text())
        if isinstance(record, dict) and {"fingerprint", "runs"} <= record.keys() and "evaluate" in record["runs"]:
            return record
        problem = "it lacks fingerprint, runs or runs.evaluate"
    except json.JSONDecodeError as exc:
        problem = f"not JSON ({exc})"
    raise ConfigError(f"{target}: not a sweep trial's record: {problem}; delete it, and the trial runs again")


def restore(record: dict, name: str, cfg: PipelineConfig, parent: str, trial_id: str,
            reused: bool = False) -> dict[str, str]:
    """Put the record's runs in the current store, without their stage keys, and return stage -> run
    id. A run already there is kept: the run itself (the trial ended after its record was written,
    before Tune noted it) or its copy restored for another trial. Otherwise it is created, tagged
    with `name` (the record file's name) and its first id. The trial's own runs are nested under
    `parent` and tagged `trial_id`; the runs it reused stand alone, as they ran elsewhere: all of
    them when the record is `reused` (another sweep's trial)."""
    client = mlflow.MlflowClient()
    out = {}
    for stage, entry in record["runs"].items():
        run_id = _in_store(client, entry["run_id"]) or _create(client, entry, name, cfg, record.get("host"))
        if entry["own"] and not reused:
            for key, value in {tracking.PARENT_TAG: parent, TRIAL_TAG: trial_id}.items():
                client.set_tag(run_id, key, value)
        out[stage] = run_id
    return out


def _in_store(client, run_id: str) -> str | None:
    """`run_id` when that run is in the store, else the id of its restored copy, else None."""
    try:
        if client.get_run(run_id).info.status == "FINISHED":
            return run_id
    except MlflowException:
        pass
    found = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`{RESTORED_RUN_TAG}` = '{run_id}'",
                               max_results=1, output_format="list")
    return found[0].info.run_id if found else None


def _create(client, entry: dict, name: str, cfg: PipelineConfig, host: str | None) -> str:
    """A copy of the recorded run; a run of the trial's own from before runs noted their CPU gets the
    record's `host` (the machine the trial ran on)."""
    where = cfg.tracking.model_copy(update={"experiment": entry["experiment"]})
    tags = {k: v for k, v in entry["tags"].items() if k not in (KEY_TAG, OUTPUT_TAG)}
    if entry["own"] and host and tracking.HOST_TAG not in tags:
        tags[tracking.HOST_TAG] = host
    run_id = client.create_run(tracking.experiment_id(where, cfg.output_dir), start_time=entry["start_time"],
                               tags=tags | {RESTORED_TAG: name, RESTORED_RUN_TAG: entry["run_id"]},
                               run_name=entry["run_name"]).info.run_id
    params = [Param(k, v) for k, v in entry["params"].items()]
    metrics = [Metric(k, v, entry["end_time"] or entry["start_time"], 0) for k, v in entry["metrics"].items()]
    for k in range(0, max(len(params), len(metrics)), MLFLOW_BATCH):
        client.log_batch(run_id, metrics=metrics[k:k + MLFLOW_BATCH], params=params[k:k + MLFLOW_BATCH])
    client.set_terminated(run_id, entry["status"], end_time=entry["end_time"])
    return run_id
