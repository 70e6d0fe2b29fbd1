"""MLflow on a real SQLite store (no Ray): inputs name the run that produced them, and every run
samples system metrics."""

import json
import subprocess
import sys
import time

import mlflow
import pandas as pd
import pyarrow as pa
import pytest
from alignray import tracking
from alignray.models import mlflow_model
from alignray.config import TrackingConfig
from alignray.io import write_parquet

CONTEXT = "mlflow.data.context"


def test_inputs_name_the_run_that_produced_them_and_runs_have_system_metrics(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    cfg = TrackingConfig(experiment="lineage")
    frame = pd.DataFrame({"prompt": ["a", "b"], "chosen": ["x", "y"], "rejected": ["p", "q"]})
    produced = tmp_path / "datasets" / "preferences.parquet"
    plain = write_parquet(pa.Table.from_pandas(frame), tmp_path / "mine.parquet")  # made by no run
    model = tiny_model
    with tracking.start_run(cfg, tmp_path, "simulate", {}) as producer:
        write_parquet(tracking.stamped(pa.Table.from_pandas(frame), produced), produced)
        tracking.log_dataset(produced, frame, "prefs", "preferences")
        first, _ = mlflow_model.register(model, "lineage-model", 0.5, "eval_accuracy", True)  # @champion
        latest, _ = mlflow_model.register(model, "lineage-model", 0.4, "eval_accuracy", True)
        time.sleep(1.0)  # a few samples of system metrics
    with tracking.start_run(cfg, tmp_path, "train", {}) as consumer:
        tracking.log_input_file(produced, "training")
        tracking.log_input_file(plain, "extra")
        tracking.log_prompts(["Human: Hi\n\nAssistant:", "Human: Bye\n\nAssistant:"], "sample", "prompts")
        tracking.log_model_input("models:/lineage-model@champion", "initial model")
        tracking.log_model_input("models:/lineage-model/latest", "reward model")
        tracking.log_model_input(str(model), "folder")  # a folder no registry knows: left to the params
        tracking.log_model_input("models:/nobody/1", "unknown")  # left to the stage, whose loading names it

    by_context = {next(t.value for t in i.tags if t.key == CONTEXT): i
                  for i in mlflow.get_run(consumer.info.run_id).inputs.dataset_inputs}
    assert set(by_context) == {"training", "extra", "prompts", "initial model", "reward model"}
    producer_id = producer.info.run_id
    training = by_context["training"]
    assert training.dataset.source_type == "run_artifact"
    assert json.loads(training.dataset.source) == {"uri": f"runs:/{producer_id}/datasets/preferences.parquet"}
    assert pd.read_parquet(mlflow.data.get_source(training).load()).equals(frame)  # the producer's artifact
    assert by_context["extra"].dataset.source_type == "local"
    prompts = by_context["prompts"].dataset
    assert prompts.name == "sample" and json.loads(prompts.profile)["num_rows"] == 2
    assert json.loads(by_context["extra"].dataset.source)["uri"] == str(plain.resolve())
    for context, version in (("initial model", first), ("reward model", latest)):
        dataset = by_context[context].dataset
        assert (dataset.name, json.loads(dataset.source)) == (f"lineage-model/{version}",
                                                              {"uri": f"runs:/{producer_id}/model"})
    assert (first, latest) == (1, 2)

    metrics = mlflow.get_run(producer_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(metrics), metrics


def test_a_resumed_run_counts_the_time_of_its_attempts_not_the_pause_between(tmp_path):
    cfg = TrackingConfig(experiment="attempts")
    for _ in range(2):
        with tracking.start_run(cfg, tmp_path, "resumed", {}, resume=True) as active:
            time.sleep(0.5)
        time.sleep(2.0)  # the pause: stopped, then run again
    run = mlflow.get_run(active.info.run_id)
    start_to_end = (run.info.end_time - run.info.start_time) / 1000
    assert 1.0 <= tracking.run_seconds(run) < 2.0 < start_to_end  # both attempts, not the pause


def test_a_run_names_each_cpu_its_attempts_started_on(tmp_path):
    from alignray.host import cpu_summary

    cfg = TrackingConfig(experiment="hosts")
    with tracking.start_run(cfg, tmp_path, "moved", {}, resume=True) as active:
        pass
    run_id = active.info.run_id
    assert mlflow.get_run(run_id).data.tags[tracking.HOST_TAG] == cpu_summary()
    with tracking.start_run(cfg, tmp_path, "moved", {}, resume=True):  # again here: named once
        pass
    assert mlflow.get_run(run_id).data.tags[tracking.HOST_TAG] == cpu_summary()
    mlflow.MlflowClient().set_tag(run_id, tracking.HOST_TAG, "Another CPU; bfloat16: emulated")  # as if begun elsewhere
    with tracking.start_run(cfg, tmp_path, "moved", {}, resume=True):
        pass
    assert mlflow.get_run(run_id).data.tags[tracking.HOST_TAG] == f"Another CPU; bfloat16: emulated | {cpu_summary()}"


@pytest.mark.slow  # a process that imports alignray and MLflow
def test_an_attempt_killed_outright_still_counts_up_to_its_last_beat(tmp_path):
    script = ("import sys, time; from pathlib import Path; from alignray import tracking;"
              " from alignray.config import TrackingConfig; tracking.ACTIVE_EVERY_S = 0.2\n"
              "with tracking.start_run(TrackingConfig(experiment='killed'), Path(sys.argv[1]), 'killed', {}) as run:\n"
              "    print(run.info.run_id, flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    run_id = proc.stdout.readline().strip()
    time.sleep(2.0)
    proc.kill()  # no finally runs: only the beats count
    proc.wait(timeout=30)
    mlflow.set_tracking_uri(tracking.tracking_uri(TrackingConfig(experiment="killed"), tmp_path))
    assert 1.0 <= mlflow.get_run(run_id).data.metrics[tracking.ACTIVE_SECONDS] <= 3.0
