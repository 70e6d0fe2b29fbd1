"""The MLflow server started exactly as k8s/base/mlflow.yaml starts it (its command, args and
env, Kubernetes' $(VAR) expansion included), answering the Ray pods' in-cluster requests
(Host: mlflow:5000, with the pods' MLflow user). Only what needs a cluster is swapped: the
PostgreSQL URIs for SQLite files, the Secrets for test values, the volume and the port."""

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from k8s_manifests import containers, needs_kubectl, render

pytestmark = [
    pytest.mark.slow,
    needs_kubectl,
    pytest.mark.skipif(importlib.util.find_spec("flask_wtf") is None,
                       reason="--app-name basic-auth needs mlflow[auth] (Flask-WTF): install the project again (make install)"),
]

SECRETS = {("alignray-postgres", "password"): "pg-secret", ("alignray-mlflow-auth", "username"): "alignray",
           ("alignray-mlflow-auth", "password"): "a-long-test-password-0123",
           ("alignray-mlflow-auth", "secret-key"): "a-test-csrf-key"}


def manifest_server():
    [deployment] = [d for d in render("base") if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"]
    [(_, container, pod)] = containers(deployment)
    return container, pod


def container_env(container: dict, tmp: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for e in container["env"]:
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = SECRETS[(ref["name"], ref["key"])]
        else:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], e["value"])
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://mlflow:pg-secret@postgres:5432/")
    env["MLFLOW_BACKEND_STORE_URI"] = f"sqlite:///{tmp}/mlflow.db"  # PostgreSQL cannot run here
    env["MLFLOW_AUTH_DATABASE_URI"] = f"sqlite:///{tmp}/auth.db"
    return env


@pytest.fixture
def server(tmp_path):
    container, _ = manifest_server()
    [data] = [m["mountPath"] for m in container["volumeMounts"]]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert container["command"] == ["bash", "-c"] and "--port 5000" in container["args"][0]
    script = container["args"][0].replace("--port 5000", f"--port {port}").replace(f"{data}/", f"{tmp_path}/")
    env = {**os.environ, **container_env(container, tmp_path), "TMPDIR": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([*container["command"], script], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if requests.get(f"{url}/health", timeout=5).ok:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        else:
            pytest.fail(f"mlflow server did not answer /health: {(tmp_path / 'server.log').read_text()[-3000:]}")
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        log.close()


def test_mlflow_answers_the_ray_pods_in_cluster_requests_and_only_theirs(server):
    user = (SECRETS[("alignray-mlflow-auth", "username")], SECRETS[("alignray-mlflow-auth", "password")])
    search = f"{server}/api/2.0/mlflow/experiments/search"

    def ask(host, auth=user):
        return requests.post(search, json={"max_results": 1}, headers={"Host": host}, auth=auth, timeout=30)

    # the Ray pods, and a `kubectl port-forward svc/mlflow 5000:5000` user
    for host in ("mlflow:5000", "mlflow.alignray.svc.cluster.local:5000", "localhost:5000", "127.0.0.1:5000"):
        answer = ask(host)
        assert answer.status_code == 200, (
            f"Host: {host}: {answer.status_code} {answer.text[:200]}; add it to --allowed-hosts in k8s/base/mlflow.yaml")
    assert ask("mlflow:5000", auth=None).status_code == 401  # basic-auth: no user, no answer
    assert ask("attacker.example.com").status_code == 403  # the DNS-rebinding check still stands
