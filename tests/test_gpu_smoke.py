"""benchmarks/gpu_smoke.py on this machine (no GPU): it says so and exits 0, `--help` explains it, the table and
exit code follow the checks' results, and the checks' typed configs build. The GPU checks themselves are not run."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.py"
spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
smoke = sys.modules["gpu_smoke"] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
spec.loader.exec_module(smoke)


def run(*args, cwd):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_without_cuda_it_says_so_on_one_line_exits_0_and_writes_nothing(tmp_path):
    done = run(cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == smoke.NO_CUDA + "\n"
    assert list(tmp_path.iterdir()) == []


def test_help_names_every_check_and_the_no_cuda_behaviour(tmp_path):
    done = run("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for name in smoke.NAMES:
        assert name in done.stdout
    assert "Without a CUDA device it says so and exits 0" in done.stdout
    assert run("--checks", "rloo", cwd=tmp_path).returncode == 2  # not a check


def test_a_check_passes_fails_or_skips_and_only_a_failure_sets_the_exit_code():
    def broken():
        raise ValueError("weights v1 were refused\nsecond line")

    def needs_two():
        raise smoke.Skip("needs 2 GPUs")

    ok, failed, skipped = (smoke.run_check("a", lambda: "fine"), smoke.run_check("b", broken),
                           smoke.run_check("c", needs_two))
    assert (ok.status, ok.detail) == ("pass", "fine")
    assert (failed.status, failed.detail) == ("fail", "ValueError: weights v1 were refused")
    assert (skipped.status, skipped.detail) == ("skip", "needs 2 GPUs")
    assert smoke.exit_code([ok, skipped]) == 0 and smoke.exit_code([ok, failed, skipped]) == 1
    lines = smoke.table([ok, failed, skipped]).splitlines()
    assert lines[0].split() == ["check", "result", "seconds", "detail"]
    assert [line.split()[:2] for line in lines[1:4]] == [["a", "pass"], ["b", "fail"], ["c", "skip"]]
    assert lines[4].startswith("1 passed, 1 failed, 1 skipped in ")


@pytest.mark.parametrize("stage", [2, 3])
def test_the_checks_configs_are_valid_and_ask_for_the_gpu(tmp_path, stage):
    model, run_dir = tmp_path / "model", tmp_path / "run"
    sampler = smoke.sampler_config(weight_transfer="collective")
    assert sampler.gpus_per_sampler == 1 and sampler.weight_transfer == "collective"
    train = smoke.sft_config(model, tmp_path / "sft.parquet", run_dir, stage)
    assert (train.trainer.use_gpu, train.trainer.zero_stage, train.trainer.precision) == (True, stage, "bf16")
    ppo = smoke.ppo_config(model, tmp_path / "reward", run_dir)
    assert ppo.ppo.placement == "colocated" and ppo.trainer.use_gpu and 0 < ppo.sampler.gpus_per_sampler < 1
    assert ppo.ppo.prompts_per_step * ppo.ppo.samples_per_prompt % ppo.ppo.minibatch_per_worker == 0
    assert smoke.policy_args(model, tmp_path / "token")["accelerator"] == "gpu"
