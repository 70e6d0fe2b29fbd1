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
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_simulate_as_a_ray_job(tiny_model, tmp_path):
    gcs, dashboard = free_port(), free_port()
    # The head's Python (the activated .venv) runs the entrypoint and has alignray installed.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    ray_tmp = tempfile.mkdtemp(prefix="arj", dir="/tmp")  # Ray's socket paths must stay short
    head_log = (tmp_path / "head.log").open("w")
    head = subprocess.Popen(
        [BIN / "ray", "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dashboard}",
         "--num-cpus=2", "--disable-usage-stats", f"--temp-dir={ray_tmp}"],
        env=env, start_new_session=True, stdout=head_log, stderr=subprocess.STDOUT,
    )
    out = tmp_path / "runs"
    try:
        submit = [
            BIN / "ray", "job", "submit", "--address", f"http://127.0.0.1:{dashboard}",
            "--working-dir", str(ROOT), "--", "python", "jobs/simulate.py",
            "--config", "jobs/configs/rlcd_smollm2.yaml",
            f"model.name={tiny_model}", f"output_dir={out}", "data.limit=3",
            "sampler.num_samplers=1", "sampler.max_tokens=8", "sampler.max_model_len=256",
        ]
        for _ in range(60):  # the dashboard's job API comes up a few seconds after the head
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            done = subprocess.run([BIN / "ray", "job", "list", "--address", f"http://127.0.0.1:{dashboard}"],
                                  env=env, capture_output=True, timeout=60)
            if done.returncode == 0:
                break
            time.sleep(2)
        for _ in range(90):  # and the node's job agent a little later still (slower on a loaded machine)
            result = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
            if "No available agent to submit job" not in result.stdout + result.stderr:
                break
            time.sleep(2)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "succeeded" in result.stdout + result.stderr
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    [dataset] = out.glob("datasets/*/preferences.parquet")
    assert 1 <= len(pd.read_parquet(dataset)) <= 3 and (out / "mlflow.db").is_file()
