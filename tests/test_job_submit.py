"""`ray job submit -- python jobs/simulate.py` against a real Ray head started for this test."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import free_port
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow  # starts a Ray head and runs a simulation job on it


def test_simulate_as_a_ray_job(tiny_model, tmp_path):
    # Every port of its own: the session's Ray (other tests) already holds the default ones,
    # and a second dashboard agent on 52365 fails to start ("No available agent to submit job").
    gcs, dashboard, agent_http, agent_grpc, runtime_env, metrics, client = (free_port() for _ in range(7))
    address = f"http://127.0.0.1:{dashboard}"
    # The head's Python (the activated .venv) runs the entrypoint and has alignray installed.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    ray_tmp = tempfile.mkdtemp(prefix="arj", dir="/tmp")  # Ray's socket paths must stay short
    head_log = (tmp_path / "head.log").open("w")
    head = subprocess.Popen(
        [BIN / "ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent_http}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
         f"--metrics-export-port={metrics}", f"--ray-client-server-port={client}",
         "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={ray_tmp}"],
        env=env, start_new_session=True, stdout=head_log, stderr=subprocess.STDOUT,
    )
    out = tmp_path / "runs"

    def ray_job(command, *args):
        done = subprocess.run([BIN / "ray", "job", command, "--address", address, *args], env=env,
                              capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout + done.stderr

    def explain():
        return f"job logs:\n{ray_job('logs', 'simulate-1')[1][-3000:]}\nhead log:\n{(tmp_path / 'head.log').read_text()[-2000:]}"

    try:
        submit = [
            "submit", "--no-wait", "--submission-id", "simulate-1", "--working-dir", str(ROOT), "--",
            "python", "jobs/simulate.py", "--config", "jobs/configs/rlcd_smollm2.yaml",
            f"model.name={tiny_model}", f"output_dir={out}", "data.limit=3",
            "sampler.num_samplers=1", "sampler.max_tokens=8", "sampler.max_model_len=256",
        ]
        deadline = time.monotonic() + 180  # the job API and the node's agent come up after the head
        while True:
            assert head.poll() is None, explain()
            code, output = ray_job(*submit)
            if code == 0 or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert code == 0, output[-3000:] + explain()
        deadline = time.monotonic() + 600
        while (status := ray_job("status", "simulate-1")[1].lower()) and time.monotonic() < deadline:
            if any(state in status for state in ("succeeded", "failed", "stopped")):
                break
            time.sleep(5)
        assert "succeeded" in status, status + explain()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    [dataset] = out.glob("datasets/*/preferences.parquet")
    assert 1 <= len(pd.read_parquet(dataset)) <= 3
    # The MLflow run the job produced: finished, with the dataset logged as its input.
    store = MlflowClient(f"sqlite:///{(out / 'mlflow.db').resolve()}")
    [run] = store.search_runs([e.experiment_id for e in store.search_experiments()])
    assert run.info.status == "FINISHED" and run.inputs.dataset_inputs
