"""MLflow: where runs go, their params, and datasets logged as artifacts and inputs."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pandas as pd
from pydantic import BaseModel

from alignray.config import TrackingConfig


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


@contextmanager
def start_run(
    cfg: TrackingConfig, output_dir: Path, run_name: str, params: dict[str, str], resume: bool = False
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run in `cfg.experiment`; a local store keeps artifacts beside its database.
    With `resume`, an earlier run of the same name is continued instead of starting anew."""
    mlflow.set_tracking_uri(tracking_uri(cfg, output_dir))
    if mlflow.get_experiment_by_name(cfg.experiment) is None:
        location = None
        if cfg.uri is None:
            location = (output_dir / "mlartifacts").resolve().as_uri()
        mlflow.create_experiment(cfg.experiment, artifact_location=location)
    experiment = mlflow.set_experiment(cfg.experiment)
    previous = []
    if resume:
        previous = mlflow.search_runs(
            [experiment.experiment_id], f"tags.`{RUN_TAG}` = '{run_name}'", output_format="list"
        )
    if previous:
        with mlflow.start_run(run_id=previous[0].info.run_id) as run:
            yield run
        return
    with mlflow.start_run(run_name=cfg.run_name or run_name, tags={RUN_TAG: run_name}) as run:
        mlflow.log_params(params)
        yield run


def log_dataset(path: Path, frame: pd.DataFrame, name: str, context: str) -> None:
    """Log a Parquet dataset as an artifact (under datasets/) and as an MLflow dataset input."""
    mlflow.log_artifact(str(path), artifact_path="datasets")
    dataset = mlflow.data.from_pandas(frame, source=str(path.resolve()), name=name)
    mlflow.log_input(dataset, context=context)


def register_model(
    folder: Path, name: str, value: float | None, metric: str, higher_is_better: bool
) -> tuple[str, bool]:
    """Log an HF folder as the active run's `model` artifact and register it as a new version
    of `name` (MLflow reserves the alias `latest`: `models:/name/latest` is always the newest
    version). It also becomes `@champion` when its `metric` beats the current champion's (or
    there is none). Returns (version, became champion)."""
    from mlflow.exceptions import MlflowException

    run = mlflow.active_run()
    mlflow.log_artifacts(str(folder), artifact_path="model")
    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="alignray training output (HF folder)")
    tags = {metric: str(value)} if value is not None else {}
    version = client.create_model_version(
        name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags=tags
    ).version
    try:
        best = client.get_model_version_by_alias(name, "champion").tags.get(metric)
    except MlflowException:
        best = None
    better = best is None or (
        value is not None and (value > float(best) if higher_is_better else value < float(best))
    )
    if better:
        client.set_registered_model_alias(name, "champion", version)
    return version, better


def download_model(uri: str) -> Path:
    """A local folder holding the model behind a `models:/name@alias` (or /version) URI: a new
    folder under $ALIGNRAY_DOWNLOADS when it is set (on a cluster, a volume every node mounts,
    since the folder is handed to actors on other nodes), else a temporary one."""
    downloads = os.environ.get("ALIGNRAY_DOWNLOADS")
    target = None
    if downloads:
        Path(downloads).mkdir(parents=True, exist_ok=True)
        target = tempfile.mkdtemp(prefix="model-", dir=downloads)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=target))
