"""The embedded local cluster that alignray starts when no address is given: a new one, even when
another cluster runs on the machine (here one that registers itself as the machine's current
cluster, as `ray start` does, which a bare `ray.init()` would join)."""

import os
import subprocess
import sys

import pytest

PROBE = """
import os, ray
from alignray.cluster import connect
connect()
print(ray.get_runtime_context().gcs_address)
print(ray.get(ray.remote(lambda: os.nice(0)).remote()))
"""


@pytest.fixture(scope="module")
def other_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
    yield cluster.address
    cluster.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "expected"), [(None, 0), ("7", 7)])
def test_local_cluster_workers_run_at_normal_priority_unless_told_otherwise(preset, expected, other_cluster):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_worker_niceness")}
    if preset is not None:
        env["RAY_worker_niceness"] = preset
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    address, niceness = out.stdout.strip().splitlines()[-2:]
    assert int(niceness) == expected and address != other_cluster
