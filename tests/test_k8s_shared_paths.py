"""A RayJob's driver hands paths to actors on other nodes: they must be on the shared volume.

A local two-node Ray cluster as a RayJob has it: a head with no CPUs (the driver's node) and a
worker node started in a mount namespace of its own (`unshare -m`) in which the head's home and
temp folders are an empty tmpfs, so it cannot see them, as a worker pod cannot see the head
pod's. Both get the RayJob manifest's ALIGNRAY_* environment, with the shared mount
(/mnt/alignray) mapped to a folder both see. The driver then runs the simulate entrypoint
(jobs/simulate.py: the smallest stage that hands a model folder to sampler actors) on a
models:/ URI of an MLflow server that serves its artifacts over HTTP, as the in-cluster one
does (a local file store would hand out its own folder instead of downloading)."""

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import requests
from conftest import free_port
from k8s_manifests import ROOT, needs_kubectl, of_kind, ray_containers, render
from mlflow.tracking import MlflowClient

BIN = Path(sys.executable).parent
pytestmark = [
    pytest.mark.slow,
    needs_kubectl,
    pytest.mark.skipif(shutil.which("unshare") is None or subprocess.run(
        ["unshare", "-m", "true"], capture_output=True).returncode != 0,
        reason="needs `unshare -m` (a mount namespace) to hide the head's folders from the worker node"),
]


def manifest_env(shared: Path) -> dict[str, str]:
    """The ALIGNRAY_* variables the RLCD RayJob's pods get (the RayService's the same: its app
    builder downloads the policy for its replicas), the shared mount mapped to `shared`."""
    [job] = of_kind(render("jobs/rlcd"), "RayJob")
    [service] = of_kind(render("serving"), "RayService")
    envs = []
    for _, container, pod in ray_containers(job) + ray_containers(service):
        [mount] = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "shared"]
        envs.append({e["name"]: e["value"].replace(mount, str(shared)) for e in container["env"]
                     if e["name"].startswith("ALIGNRAY_") and "value" in e})
    assert envs and all(env == envs[0] for env in envs)
    return envs[0]


def register(folder: Path, store: str) -> str:
    """Register a model folder as `tiny-policy` @champion in the store; its models:/ URI."""
    client = MlflowClient(store)
    run = client.create_run(client.create_experiment("models"))
    client.log_artifacts(run.info.run_id, str(folder), "model")
    client.create_registered_model("tiny-policy")
    version = client.create_model_version("tiny-policy", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias("tiny-policy", "champion", version.version)
    client.set_terminated(run.info.run_id)
    return "models:/tiny-policy@champion"


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).ok
    except requests.ConnectionError:
        return False


def start(command: list, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT)


def test_a_jobs_driver_hands_actors_on_another_node_only_paths_on_the_shared_volume(tiny_model, tmp_path):
    shared, head_private, worker_private = tmp_path / "shared", tmp_path / "head", tmp_path / "worker"
    for folder in (shared, head_private / "home", head_private / "tmp", worker_private / "home", worker_private / "tmp"):
        folder.mkdir(parents=True)
    base = {k: v for k, v in os.environ.items()
            if k not in ("RAY_ADDRESS", "ALIGNRAY_CACHE", "ALIGNRAY_DOWNLOADS") and not k.startswith("RAY_AUTH")}
    # Token auth as KubeRay's authOptions sets it up: every pod gets the mode and the token in its environment
    # (the homes here are private, so a token file in one would not reach the others).
    base.update(PATH=f"{BIN}:{os.environ['PATH']}", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    port = free_port()
    store = f"http://127.0.0.1:{port}"
    server = start([BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                    "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                    "--artifacts-destination", str(tmp_path / "served-artifacts"), "--serve-artifacts"],
                   base, tmp_path / "mlflow.log")
    alignray_env = manifest_env(shared)
    head_env = {**base, **alignray_env, "HOME": str(head_private / "home"), "TMPDIR": str(head_private / "tmp")}
    worker_env = {**base, **alignray_env, "HOME": str(worker_private / "home"), "TMPDIR": str(worker_private / "tmp")}
    gcs = free_port()
    ray_tmp = tempfile.mkdtemp(prefix="ars", dir="/tmp")  # Ray's socket paths must stay short

    def node_ports():
        return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
                "--disable-usage-stats", f"--temp-dir={ray_tmp}", "--block"]

    head = worker = None
    try:
        deadline = time.monotonic() + 300
        while not _answers(f"{store}/health"):
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "mlflow.log").read_text()[-2000:]
            time.sleep(1)
        model = register(tiny_model, store)
        head = start([BIN / "ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=0",
                      "--include-dashboard=false", f"--ray-client-server-port={free_port()}", *node_ports()],
                     head_env, tmp_path / "head.log")
        time.sleep(5)
        hide = f"mount -t tmpfs tmpfs {head_private} && exec {BIN / 'ray'} start --address=127.0.0.1:{gcs} --num-cpus=2 "
        worker = start(["unshare", "-m", "sh", "-c", hide + " ".join(node_ports())], worker_env, tmp_path / "worker.log")
        out = shared / "runs"
        driver = subprocess.run(
            [sys.executable, ROOT / "jobs" / "simulate.py", "--config", ROOT / "jobs/configs/rlcd_smollm2.yaml",
             f"model.name={model}", f"tracking.uri={store}", f"output_dir={out}", "data.limit=2",
             "sampler.num_samplers=1", "sampler.max_tokens=8", "sampler.max_model_len=256", "sampler.enforce_eager=true",
             "sampler.prompts_per_request=4", "sampler.request_timeout_s=600"],
            env={**head_env, "RAY_ADDRESS": f"127.0.0.1:{gcs}", "MLFLOW_TRACKING_URI": store},  # as the pods have it
            cwd=head_private / "home", capture_output=True, text=True, timeout=900)
        logs = f"{driver.stdout[-2000:]}{driver.stderr[-4000:]}\nworker log:\n{(tmp_path / 'worker.log').read_text()[-1500:]}"
        assert driver.returncode == 0, logs
    finally:
        for process in (worker, head, server):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    downloads = Path(alignray_env["ALIGNRAY_DOWNLOADS"])
    assert list(downloads.glob("*/config.json"))  # the model went to the shared volume
    assert not any((head_private / "tmp").rglob("config.json"))
    [dataset] = out.glob("datasets/*/preferences.parquet")
    assert 1 <= len(pd.read_parquet(dataset)) <= 2
