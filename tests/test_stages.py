"""The stage registry: every stage once, with its schema; importing it is cheap; and a simulation
resolves models:/ names in its own tracking store, not in whatever MLflow store is current."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from alignray import tracking
from alignray.models import mlflow_model
from alignray.config import (
    EvaluateConfig,
    PPOConfig,
    SimulateConfig,
    TrainConfig,
    load_config,
)
from alignray.models.registry import ModelError
from alignray.stages import STAGES, TRAIN_KINDS

PLATFORM = Path(__file__).resolve().parents[1] / "platform"


def test_every_stage_is_registered_once_with_its_schema():
    assert {name: s.schema for name, s in STAGES.items()} == {
        "simulate": SimulateConfig, "preference": TrainConfig, "sft": TrainConfig, "dpo": TrainConfig,
        "rrhf": TrainConfig, "ppo": PPOConfig, "evaluate": EvaluateConfig}
    assert TRAIN_KINDS == ("preference", "sft", "dpo", "rrhf", "ppo")


def test_importing_the_stages_loads_nothing_heavy():
    code = ("import sys, alignray.stages; print(' '.join(sorted({m.split('.')[0] for m in sys.modules}"
            " & {'torch', 'transformers', 'ray', 'vllm', 'mlflow', 'deepspeed'})))")
    env = {**os.environ, "PYTHONPATH": str(PLATFORM)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.split() == []


def test_simulate_resolves_models_in_its_own_tracking_store(tiny_model, tmp_path):
    from alignray.feedback.simulate import run

    out = tmp_path / "runs"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Human: Hi?\n\nAssistant:"}) + "\n")
    cfg = load_config(None, [f"output_dir={out}", "tracking.experiment=own", "model.name=models:/own-policy/1",
                             f"data.source={prompts}", "simulation.method=rlaif",
                             f"simulation.labeller={tmp_path / 'nowhere'}"], SimulateConfig)
    with tracking.start_run(cfg.tracking, out, "register", {}):
        mlflow_model.register(tiny_model, "own-policy", None, "loss", False)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")  # another store is current
    # the policy resolves in the config's store; the next model checked, the labeller, does not exist
    with pytest.raises(ModelError, match="nowhere.* is neither a known model"):
        run(cfg)


def test_the_training_kinds_agree_with_their_trainers_and_readers():
    from alignray.train.data import READERS
    from alignray.train.methods import METHODS

    assert set(READERS) == set(METHODS) == set(TRAIN_KINDS) - {"ppo"}
