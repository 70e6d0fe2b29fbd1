"""`ray job submit --runtime-env-json '{"pip": [...]}' -- alignray ...`: a job on a cluster whose
Python lacks alignray installs it through the job's runtime environment (here: a wheel built from
this checkout), and its stage, sampler actors included, runs from that install."""

import json
import os
import re
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

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow  # builds a wheel, starts a Ray head, installs a runtime env, runs a stage


def wheel(tmp_path: Path) -> Path:
    """alignray's wheel, built from a copy of the checkout (a build leaves nothing in the checkout),
    with a local version label: the node's Python has this checkout installed (editable), and pip
    replaces only another version, as on a node that lacks alignray."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "platform" / "alignray", src / "platform" / "alignray",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "README.md", src / "README.md")
    project = (ROOT / "pyproject.toml").read_text()
    (src / "pyproject.toml").write_text(re.sub(r'^version = "([^"]+)"', r'version = "\1+wheel"', project, count=1,
                                               flags=re.MULTILINE))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    [built] = (tmp_path / "dist").glob("alignray-*.whl")
    return built


def test_a_job_installs_alignray_from_its_runtime_env_and_runs_a_stage(tiny_model, tmp_path):
    built = wheel(tmp_path)
    gcs, dashboard = free_port(), free_port()
    address = f"http://127.0.0.1:{dashboard}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    env.pop("PYTHONPATH", None)  # the job imports what its runtime environment installed
    ray_tmp = tempfile.mkdtemp(prefix="are", dir="/tmp")  # Ray's socket paths must stay short
    ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
             f"--ray-client-server-port={free_port()}"]
    head = subprocess.Popen(
        [BIN / "ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
         f"--port={gcs}", f"--dashboard-port={dashboard}", "--num-cpus=2", f"--temp-dir={ray_tmp}", *ports],
        env=env, start_new_session=True, stdout=(tmp_path / "head.log").open("w"), stderr=subprocess.STDOUT)
    out = tmp_path / "runs"
    entrypoint = (
        "python -c 'import alignray; print(\"alignray imported from\", alignray.__file__)' && alignray simulate"
        f" {ROOT / 'jobs' / 'configs' / 'rlcd_smollm2.yaml'} model.name={tiny_model} output_dir={out} data.limit=2"
        " sampler.num_samplers=1 sampler.max_tokens=8 sampler.max_model_len=256 sampler.prompts_per_request=4"
    )

    def ray_job(command: str, *args: str) -> tuple[int, str]:
        done = subprocess.run([BIN / "ray", "job", command, "--address", address, *args], env=env, capture_output=True,
                              text=True, timeout=120)
        return done.returncode, done.stdout + done.stderr

    try:
        submit = ["submit", "--no-wait", "--submission-id", "pip-env", "--runtime-env-json",
                  json.dumps({"pip": [str(built)]}), "--", "bash", "-c", entrypoint]
        deadline = time.monotonic() + 180  # the job API comes up a little after the head
        while (code := ray_job(*submit))[0] != 0 and time.monotonic() < deadline:
            assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            time.sleep(2)
        assert code[0] == 0, code[1][-3000:]
        deadline = time.monotonic() + 900  # the runtime env copies this virtualenv, then pip installs the wheel
        while time.monotonic() < deadline:
            status = ray_job("status", "pip-env")[1].lower()
            if any(state in status for state in ("succeeded", "failed", "stopped")):
                break
            time.sleep(5)
        logs = ray_job("logs", "pip-env")[1]
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert "succeeded" in status, status + logs[-3000:]
    [imported] = [line for line in logs.splitlines() if line.startswith("alignray imported from")]
    assert "runtime_resources/pip" in imported and str(ROOT) not in imported  # the wheel, not this checkout
    [dataset] = out.glob("datasets/*/*.parquet")
    assert len(pd.read_parquet(dataset)) >= 1
