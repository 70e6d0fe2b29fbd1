"""`alignray serve` as a user runs it against a running Ray cluster (this worker's session
cluster: a new head per test costs a minute of CPU and times out on a loaded machine): it deploys
both applications, and the bearer token set in the user's shell reaches the replicas (they would
refuse to start without it). Without --address, `serve run` starts a local Ray itself."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_alignray_serve_deploys_with_the_shell_token(ray_cluster, tiny_model, pattern_reward, tmp_path):
    import ray
    from ray import serve

    port, token = free_port(), "shell-token-123"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update(ALIGNRAY_SERVE_TOKEN=token)
    command = [Path(sys.executable).with_name("alignray"), "serve", "--cpu", "--policy", str(tiny_model),
               "--reward", str(pattern_reward[0]), "--host", "127.0.0.1", "--port", str(port),
               "--address", ray.get_runtime_context().gcs_address]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 420
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if all(requests.get(f"{url}/{app}/readyz", timeout=5).status_code == 200 for app in ("policy", "reward")):
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(2)
        body = {"model": "alignray-policy", "prompt": "Human: Hi?\n\nAssistant:", "max_tokens": 4}
        assert requests.post(f"{url}/policy/v1/completions", json=body, timeout=60).status_code == 401
        reply = requests.post(f"{url}/policy/v1/completions", json=body, timeout=60,
                              headers={"Authorization": f"Bearer {token}"})
        assert reply.status_code == 200 and reply.json()["choices"][0]["finish_reason"] in ("stop", "length")
        scored = requests.post(f"{url}/reward/v1/score", json={"prompts": ["Hi"], "responses": ["Hello"]}, timeout=60,
                               headers={"Authorization": f"Bearer {token}"})
        assert scored.status_code == 200 and len(scored.json()["rewards"]) == 1
    finally:  # only the process group this test started
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
        serve.shutdown()  # whatever `serve run` left on this worker's cluster
