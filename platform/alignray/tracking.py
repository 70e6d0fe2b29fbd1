"""MLflow: where runs go, their params, and datasets logged as artifacts and inputs."""

from __future__ import annotations

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


@contextmanager
def start_run(
    cfg: TrackingConfig, output_dir: Path, run_name: str, params: dict[str, str]
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run in `cfg.experiment`; a local store keeps artifacts beside its database."""
    mlflow.set_tracking_uri(tracking_uri(cfg, output_dir))
    if mlflow.get_experiment_by_name(cfg.experiment) is None:
        location = None
        if cfg.uri is None:
            location = (output_dir / "mlartifacts").resolve().as_uri()
        mlflow.create_experiment(cfg.experiment, artifact_location=location)
    mlflow.set_experiment(cfg.experiment)
    with mlflow.start_run(run_name=cfg.run_name or run_name) as run:
        mlflow.log_params(params)
        yield run


def log_dataset(path: Path, frame: pd.DataFrame, name: str, context: str) -> None:
    """Log a Parquet dataset as an artifact (under datasets/) and as an MLflow dataset input."""
    mlflow.log_artifact(str(path), artifact_path="datasets")
    dataset = mlflow.data.from_pandas(frame, source=str(path.resolve()), name=name)
    mlflow.log_input(dataset, context=context)
