"""MLflow: where runs go, their params and system metrics, and datasets logged as artifacts and
as inputs. An input that another run produced names that run: a Parquet file a stage writes is
stamped with its `runs:/<run id>/<artifact path>`, a registered model knows its run, and the run
that reads either logs it as a dataset input whose source is that URI (lineage across stages)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import register_dataset_source, resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from pydantic import BaseModel

from alignray.config import TrackingConfig
from alignray.host import cpu_summary


def tracking_uri(cfg: TrackingConfig, output_dir: Path) -> str:
    return cfg.uri or f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"


def flatten(config: BaseModel, prefix: str = "") -> dict[str, str]:
    """A config as MLflow params: {"sampler.temperature": "0.7", ...}."""
    params = {}
    for key, value in config:
        name = f"{prefix}{key}"
        if isinstance(value, BaseModel):
            params.update(flatten(value, f"{name}."))
        else:
            params[name] = str(value)
    return params


RUN_TAG = "alignray.run"
PARENT_TAG = "mlflow.parentRunId"  # MLflow shows a run with this tag nested under that run
PRODUCED_BY = b"alignray.produced_by"  # Parquet metadata: runs:/<run id>/<artifact path> of the file


class RunArtifactSource(DatasetSource):
    """A dataset (or model) that an MLflow run logged as an artifact, `runs:/<run id>/<path>`;
    `mlflow.data.get_source(dataset_input).load()` downloads it from the current store."""

    def __init__(self, uri: str):
        self.uri = uri

    @staticmethod
    def _get_source_type() -> str:
        return "run_artifact"

    def load(self, dst_path: str | None = None) -> str:
        return mlflow.artifacts.download_artifacts(artifact_uri=self.uri, dst_path=dst_path)

    @staticmethod
    def _can_resolve(raw_source) -> bool:
        return isinstance(raw_source, str) and raw_source.startswith("runs:/")

    @classmethod
    def _resolve(cls, raw_source: str) -> RunArtifactSource:
        return cls(raw_source)

    def to_dict(self) -> dict[str, str]:
        return {"uri": self.uri}

    @classmethod
    def from_dict(cls, source_dict: dict) -> RunArtifactSource:
        return cls(source_dict["uri"])


register_dataset_source(RunArtifactSource)


@contextmanager
def start_run(
    cfg: TrackingConfig, output_dir: Path, run_name: str, params: dict[str, str], resume: bool = False
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run in `cfg.experiment`, sampling system metrics (CPU, memory, disk, network,
    GPU; every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds, default 10); a local store keeps
    artifacts beside its database; a new run is nested under `cfg.parent_run` and carries
    `cfg.tags`. With `resume`, an earlier run of the same name is continued instead of starting
    anew."""
    mlflow.set_tracking_uri(tracking_uri(cfg, output_dir))
    experiment = mlflow.set_experiment(experiment_id=experiment_id(cfg, output_dir))
    previous = []
    if resume:
        previous = mlflow.search_runs(
            [experiment.experiment_id], f"tags.`{RUN_TAG}` = '{run_name}'", output_format="list"
        )
    if previous:
        with mlflow.start_run(run_id=previous[0].info.run_id, log_system_metrics=True) as run, _attempt(run):
            yield run
        return
    tags = {RUN_TAG: run_name, **cfg.tags, **({PARENT_TAG: cfg.parent_run} if cfg.parent_run else {})}
    with (mlflow.start_run(run_name=cfg.run_name or run_name, tags=tags, log_system_metrics=True) as run,
          _attempt(run)):
        mlflow.log_params(params)
        yield run


def experiment_id(cfg: TrackingConfig, output_dir: Path) -> str:
    """`cfg.experiment`'s id, created when missing (a local store keeps artifacts beside its database)."""
    found = mlflow.get_experiment_by_name(cfg.experiment)
    if found is not None:
        return found.experiment_id
    location = None if cfg.uri else (output_dir / "mlartifacts").resolve().as_uri()
    return mlflow.create_experiment(cfg.experiment, artifact_location=location)


def parent_run(cfg: TrackingConfig, output_dir: Path, tag: str, name: str, run_name: str, tags: dict[str, str]) -> tuple[str, bool]:
    """The MLflow run that a pipeline's (or a sweep's) runs are nested under: the earlier run tagged
    `tag` = `name` in `cfg.experiment`, marked running again, else a new one with `tags` too.
    Returns (run id, whether it is new)."""
    mlflow.set_tracking_uri(tracking_uri(cfg, output_dir))
    client = mlflow.MlflowClient()
    experiment = experiment_id(cfg, output_dir)
    found = client.search_runs([experiment], f"tags.`{tag}` = '{name}'", max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id, False
    return client.create_run(experiment, run_name=run_name, tags={tag: name, **tags}).info.run_id, True


ACTIVE_SECONDS = "active_seconds"  # a run's wall time summed over its attempts: the pauses of a resumed run left out
ACTIVE_EVERY_S = 60.0  # while a run runs, its active time is logged this often: a killed attempt loses at most this
HOST_TAG = "alignray.host"  # the CPU (and its bfloat16 support) of each machine an attempt of the run started on
HOST_SEPARATOR = " | "


@contextmanager
def _attempt(run: mlflow.ActiveRun) -> Iterator[None]:
    """One attempt of a run: add this machine's CPU to HOST_TAG, and log ACTIVE_SECONDS (the earlier
    attempts' time plus this one's) every ACTIVE_EVERY_S while the block runs and when it ends, so
    that an attempt killed outright still counts."""
    run_id, client = run.info.run_id, mlflow.MlflowClient()
    earlier, host = client.get_run(run_id).data, cpu_summary()
    hosts = [h for h in earlier.tags.get(HOST_TAG, "").split(HOST_SEPARATOR) if h]
    if host not in hosts:
        client.set_tag(run_id, HOST_TAG, HOST_SEPARATOR.join([*hosts, host]))
    before = earlier.metrics.get(ACTIVE_SECONDS, 0.0)
    started, stop = time.monotonic(), threading.Event()

    def log() -> None:
        client.log_metric(run_id, ACTIVE_SECONDS, before + time.monotonic() - started)

    def beat() -> None:
        while not stop.wait(ACTIVE_EVERY_S):
            try:
                log()
            except Exception:  # noqa: BLE001  a store busy for a moment: the next beat, or the end, logs it
                pass

    thread = threading.Thread(target=beat, name="alignray-active-time", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        log()


def run_seconds(run) -> float | None:
    """A finished run's wall time: its attempts' summed ACTIVE_SECONDS, or start to end for a run
    recorded before that metric (or whose every attempt was killed); None while it runs."""
    if ACTIVE_SECONDS in run.data.metrics:
        return run.data.metrics[ACTIVE_SECONDS]
    return (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None


def stamped(table: pa.Table, path: Path) -> pa.Table:
    """`table`, marked as produced by the active run: `log_dataset(path, ...)` stores it as the
    run's artifact datasets/<name>, and a run that reads the file (`log_input_file`) names it."""
    uri = f"runs:/{mlflow.active_run().info.run_id}/datasets/{path.name}"
    return table.replace_schema_metadata({**(table.schema.metadata or {}), PRODUCED_BY: uri.encode()})


def log_dataset(path: Path, frame: pd.DataFrame, name: str, context: str) -> None:
    """Log a Parquet dataset as an artifact (under datasets/) and as an MLflow dataset input."""
    mlflow.log_artifact(str(path), artifact_path="datasets")
    dataset = mlflow.data.from_pandas(frame, source=str(path.resolve()), name=name)
    mlflow.log_input(dataset, context=context)


def log_prompts(prompts: list[str], name: str, context: str) -> None:
    """Log the prompts a stage reads, as its model sees them, as a dataset input (`name`: their
    sources, e.g. donotanswer+advbench)."""
    mlflow.log_input(mlflow.data.from_pandas(pd.DataFrame({"prompt": prompts}), name=name), context=context)


def log_input_file(path: Path, context: str) -> None:
    """Log a Parquet file the active run reads as a dataset input; its source is the run that
    produced it (`runs:/<run id>/datasets/<name>`, see `stamped`), else the file itself."""
    table = pq.read_table(path)
    produced = (table.schema.metadata or {}).get(PRODUCED_BY)
    source = RunArtifactSource(produced.decode()) if produced else str(Path(path).resolve())
    mlflow.log_input(mlflow.data.from_pandas(table.to_pandas(), source=source, name=Path(path).stem), context=context)


def log_dataset_input(source: str, split: str, context: str) -> None:
    """Log the dataset a run reads: a Parquet file with its producing run (log_input_file), another
    file by its path, a Hugging Face dataset id with its config and split."""
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

    path = Path(source)
    if path.suffix == ".parquet" and path.is_file():
        return log_input_file(path, context)
    if path.is_file():
        origin = resolve_dataset_source(str(path.resolve()))
    else:
        repo, _, config = source.partition(":")
        origin = HuggingFaceDatasetSource(repo, config_name=config or None, split=split)
    mlflow.log_input(MetaDataset(origin, name=path.stem), context=context)


def log_model_input(ref: str, context: str) -> None:
    """Log a registered model (models:/name/version, /latest or @alias) the active run reads as a
    dataset input whose source is the `model` artifact of the run that registered it. Model
    folders and known names produced by no run are left to the run's params, and so is a URI
    the registry does not know (the stage's own loading of it says so)."""
    from mlflow.exceptions import MlflowException

    if not ref.startswith("models:/"):
        return
    client = mlflow.MlflowClient()
    name, _, version = ref.removeprefix("models:/").partition("/")
    try:
        if "@" in name:
            found = client.get_model_version_by_alias(*name.split("@", 1))
        elif version == "latest":
            found = max(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
        else:
            found = client.get_model_version(name, version)
    except (MlflowException, ValueError):  # ValueError: no version at all for /latest
        return
    source = RunArtifactSource(f"runs:/{found.run_id}/model")
    mlflow.log_input(MetaDataset(source, name=f"{found.name}/{found.version}"), context=context)
