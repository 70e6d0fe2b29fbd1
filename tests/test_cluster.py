"""The embedded local cluster that alignray starts when no address is given."""

import os
import subprocess
import sys

import pytest

PROBE = """
import os, ray
from alignray.cluster import connect
connect()
print(ray.get(ray.remote(lambda: os.nice(0)).remote()))
"""


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "expected"), [(None, 0), ("7", 7)])
def test_local_cluster_workers_run_at_normal_priority_unless_told_otherwise(preset, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_worker_niceness")}
    if preset is not None:
        env["RAY_worker_niceness"] = preset
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.strip().splitlines()[-1]) == expected
