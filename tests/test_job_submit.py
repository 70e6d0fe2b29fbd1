"""`ray job submit` of a whole pipeline (`jobs/rlcd.py`) to a real multi-node Ray cluster started
for this test: a head with no CPUs (it runs the job driver, as a RayJob's head pod does), a
`rollout` node and a `train` node. The pipeline's PPO stage puts its sampler on one and its
trainer workers on the other and sends the weights by the collective (gloo) transport.
(`jobs/ppo.py` is the same `alignray train ppo` that test_multinode runs on a cluster.)"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import free_port
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow  # starts a three-node Ray cluster and runs a pipeline job on it


def test_a_pipeline_as_a_ray_job_on_a_multinode_cluster(tiny_model, tmp_path):
    # Every port of its own: the session's Ray (other tests) already holds the default ones,
    # and a second dashboard agent on 52365 fails to start ("No available agent to submit job").
    gcs, dashboard = free_port(), free_port()
    address = f"http://127.0.0.1:{dashboard}"
    # The nodes' Python (the activated .venv) runs the entrypoints and has alignray installed.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    ray_tmp = tempfile.mkdtemp(prefix="arj", dir="/tmp")  # Ray's socket paths must stay short

    def node(name: str, *args: str) -> subprocess.Popen:
        # A temp folder per node, as on separate machines: in a shared one, a worker node's
        # runtime-env agent deletes a job's working_dir that the head's driver still runs in.
        ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
        return subprocess.Popen(
            [BIN / "ray", "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
             f"--temp-dir={ray_tmp}/{name}", *ports, *args],
            env=env, start_new_session=True, stdout=(tmp_path / f"{name}.log").open("w"), stderr=subprocess.STDOUT,
        )

    nodes = [node("head", "--head", f"--port={gcs}", f"--dashboard-port={dashboard}", "--num-cpus=0",
                  f"--ray-client-server-port={free_port()}")]
    out = tmp_path / "runs"

    def ray_job(command, *args):
        done = subprocess.run([BIN / "ray", "job", command, "--address", address, *args], env=env,
                              capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout + done.stderr

    def explain(job):
        logs = "".join(f"\n{p.name}:\n{p.read_text()[-1500:]}" for p in sorted(tmp_path.glob("*.log")))
        return f"job logs:\n{ray_job('logs', job)[1][-3000:]}{logs}"

    def run_job(job: str, *entrypoint: str) -> None:
        submit = ["submit", "--no-wait", "--submission-id", job, "--working-dir", str(ROOT), "--", "python", *entrypoint]
        deadline = time.monotonic() + 180  # the job API and the node's agent come up after the head
        while (code := ray_job(*submit))[0] != 0 and time.monotonic() < deadline:
            assert all(n.poll() is None for n in nodes), explain(job)
            time.sleep(2)
        assert code[0] == 0, code[1][-3000:] + explain(job)
        deadline = time.monotonic() + 900
        while (status := ray_job("status", job)[1].lower()) and time.monotonic() < deadline:
            if any(state in status for state in ("succeeded", "failed", "stopped")):
                break
            time.sleep(5)
        assert "succeeded" in status, status + explain(job)

    try:
        time.sleep(3)
        for role in ("rollout", "train"):
            nodes.append(node(role, f"--address=127.0.0.1:{gcs}", "--num-cpus=2", f"--labels=role={role}"))
        run_job("rlcd-1", "jobs/rlcd.py", "--config", "jobs/configs/pipelines/rlcd_tiny.yaml",
                f"model.name={tiny_model}", f"output_dir={out}", "stages.ppo.trainer.num_workers=2",
                "stages.ppo.ppo.placement=separate", "stages.ppo.sampler.node_labels={role: rollout}",
                "stages.ppo.trainer.node_labels={role: train}",
                "stages.ppo.sampler.weight_transfer=collective")  # the gloo broadcast from the train node to the rollout node
    finally:
        for n in reversed(nodes):
            os.killpg(n.pid, signal.SIGTERM)
            n.wait(timeout=120)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    store = MlflowClient(f"sqlite:///{(out / 'mlflow.db').resolve()}")
    runs = {r.info.run_name: r for r in store.search_runs([e.experiment_id for e in store.search_experiments()])}
    assert all(r.info.status == "FINISHED" for r in runs.values()), {k: r.info.status for k, r in runs.items()}
    for stage in ("simulate", "preference", "ppo", "evaluate"):  # the pipeline's stage runs: rlcd-tiny-<stage>...
        assert any(f"rlcd-tiny-{stage}" in name for name in runs), (stage, sorted(runs))
    [ppo] = [r for name, r in runs.items() if name.startswith("rlcd-tiny-ppo")]
    assert ppo.data.tags["placement.sampler_nodes"] != ppo.data.tags["placement.trainer_nodes"]  # rollout, train
    synced = store.get_metric_history(ppo.info.run_id, "sync_probe_diff")
    assert len(synced) == 2 and all(m.value < 0.3 for m in synced)  # every sync passed the probe (bf16 bound)
    assert [m.version for m in store.search_model_versions("name='rlcd-tiny-ppo'")]  # the job's policy, registered
