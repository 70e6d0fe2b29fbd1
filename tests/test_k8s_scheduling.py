"""Every RayJob stage's and the RayService's Ray resource requests, placed on a local Ray cluster
of the nodes their manifests start (tests/k8s_placement.py, in its own process): a shape that
cannot be placed fails within its deadline, naming what waits."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from k8s_manifests import PIPELINES, ROOT, needs_kubectl

pytestmark = [pytest.mark.slow, needs_kubectl]


def place(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "platform"), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, str(Path(__file__).with_name("k8s_placement.py")), *args],
                          capture_output=True, text=True, env=env, timeout=600)


def test_every_job_stage_and_the_service_are_placed_on_their_clusters_nodes():
    overlays = [f"jobs/{p}" for p in PIPELINES] + ["serving"]
    done = place(*overlays)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for overlay in overlays:
        assert f"placed k8s/{overlay}" in done.stdout
    assert "placed k8s/jobs/rlcd stage ppo (ppo): trainer.num_workers" in done.stdout


def test_fractional_samplers_spread_beside_a_whole_gpu_trainer_are_caught():
    """The shape k8s/rayjob-rlcd.yaml had: two 0.5-GPU samplers and a 1-GPU trainer on two
    one-GPU workers; spread, the samplers leave no whole GPU."""
    done = place("jobs/rlcd", "--set", "jobs/rlcd:stages.ppo.sampler={num_samplers: 2, gpus_per_sampler: 0.5}")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "k8s/jobs/rlcd stage ppo (ppo): cannot place trainer.num_workers=1" in done.stderr
