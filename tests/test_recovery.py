"""Crash recovery that exercises all the restored state, on real Ray Train + DeepSpeed.

A Ray Train worker is SIGKILLed in the middle of an epoch (not a graceful stop), with a cosine
learning rate after warm-up and dropout on (attention dropout 0.1 in the tiny model's config):
the run restarts its workers by itself (trainer.max_failures) from the last checkpoint, and
every step's loss equals an uninterrupted run's within 1e-4 (the last value logged for a step
counts: the steps after the checkpoint are logged twice). Preference training on ZeRO-2, DPO on
ZeRO-3; the driver killed and started again with the same command gives the same curve too.
A finished run keeps only its model unless trainer.keep_final_state, and cannot then go on to
more steps. PPO has its own in tests/test_ppo.py.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from alignray.config import TrainConfig, load_config
from alignray.train.launch import TrainingError, latest_checkpoint
from alignray.train.runner import fit
from conftest import last_per_step, logged_metrics, train_workers, when, with_dropout
from test_train import pref_rows, write

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]
BIN = Path(sys.executable).parent


def overrides(kind: str, model: Path, dataset: Path, out: Path, run_name: str) -> list[str]:
    return [
        f"dataset={dataset}", f"model.name={model}", f"output_dir={out}", "tracking.experiment=recovery",
        f"run_name={run_name}", "trainer.num_workers=2", "trainer.micro_batch_per_worker=4",
        "trainer.zero_stage=" + ("2" if kind == "preference" else "3"), "trainer.learning_rate=1e-3",
        "trainer.lr_schedule=cosine", "trainer.warmup_steps=3", "trainer.max_steps=10", "trainer.log_every_steps=1",
        "trainer.checkpoint_every_steps=5", "trainer.eval_fraction=0.25", "trainer.max_failures=1",
    ]  # 36 training rows, 8 per step: 4 steps per epoch, so the checkpoint of step 5 is mid-epoch


def history(out: Path, run_name: str, key: str = "train_loss") -> list:
    return logged_metrics(out, "recovery", run_name, key)


def curve(out: Path, run_name: str, key: str = "train_loss") -> dict[int, float]:
    return last_per_step(out, "recovery", run_name, key)


def assert_same_curve(straight: dict[int, float], other: dict[int, float]) -> None:
    assert sorted(straight) == sorted(other) == list(range(1, 11))
    worst = max(abs(straight[s] - other[s]) for s in straight)
    assert worst < 1e-4, (straight, other)


@pytest.mark.parametrize("kind", ["preference", "dpo"])
def test_a_worker_killed_mid_epoch_resumes_to_the_same_curve(kind, tiny_model, tmp_path):
    model = with_dropout(tiny_model, tmp_path / "dropout-model")
    data = write(tmp_path, pref_rows(seed=3))
    out = tmp_path / "runs"
    straight = fit(load_config(None, overrides(kind, model, data, out, "straight"), TrainConfig), kind)
    assert straight.model_uri is not None
    # finished: each checkpoint keeps only its model, RNG and state (trainer.keep_final_state: false)
    left = [c for c in (out / "train" / "straight").glob("checkpoint_*") if c.is_dir()]
    assert len(left) == 2 and all(sorted(p.name for p in c.iterdir()) == ["hf", "rng_rank0.pt", "rng_rank1.pt",
                                                                         "trainer_state.json"] for c in left)

    killed: list[float] = []

    def kill_one_worker():
        [victim, *_] = train_workers()
        victim.send_signal(signal.SIGKILL)
        killed.append(time.time())

    # after step 6 is logged: the checkpoint of step 5 is the last one, in the epoch's second step
    killer = when(lambda: 6 in curve(out, "killed") and train_workers(), kill_one_worker)
    keep = ["trainer.keep_final_state=true"]
    resumed = fit(load_config(None, overrides(kind, model, data, out, "killed") + keep, TrainConfig), kind)
    killer.join(timeout=5)
    assert killed, "no worker was killed"
    assert resumed.model_uri is not None  # finished by itself: registered
    kept = sorted(c for c in (out / "train" / "killed").glob("checkpoint_*") if c.is_dir())
    assert len(kept) >= 2 and (kept[-1] / "deepspeed").is_dir()  # keep_final_state: nothing dropped
    assert len(history(out, "killed")) > 10  # steps after the checkpoint ran twice
    assert_same_curve(curve(out, "straight"), curve(out, "killed"))
    assert_same_curve(curve(out, "straight", "lr"), curve(out, "killed", "lr"))
    restart = min(m.timestamp / 1000 for m in history(out, "killed") if m.timestamp / 1000 > killed[0]) - killed[0]
    print(f"\n{kind}: a worker SIGKILLed; the first step after the restart was logged {restart:.1f} s later")

    if kind != "preference":
        return
    # a folder that a failed save left behind (a full disk) is not the last checkpoint: Ray Train's record says
    (out / "train" / "straight" / "checkpoint_2999-01-01_00-00-00.000000").mkdir()
    assert latest_checkpoint(out / "train" / "straight") == straight.checkpoint
    longer = overrides(kind, model, data, out, "straight") + ["trainer.max_steps=12"]
    with pytest.raises(TrainingError, match="finished at step 10 and its optimizer state was dropped then"
                                           r" \(trainer.keep_final_state: false\), so it cannot go on to step 12"):
        fit(load_config(None, longer, TrainConfig), kind)

    # The driver killed mid-run, then the same command again.
    command = [BIN / "alignray", "train", "preference", *overrides(kind, model, data, out, "driver"),
               "--address", ray.get_runtime_context().gcs_address]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while 6 not in curve(out, "driver"):
        assert driver.poll() is None and time.monotonic() < deadline, driver.stderr.read().decode()[-3000:]
        time.sleep(0.2)
    driver.kill()  # SIGKILL: this test's own subprocess only
    driver.wait()
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "models:/alignray-preference/" in again.stdout
    assert_same_curve(curve(out, "straight"), curve(out, "driver"))
