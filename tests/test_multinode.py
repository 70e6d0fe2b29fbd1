"""PPO on a Ray cluster of several nodes (real raylets on this machine, started with
`ray.cluster_utils.Cluster`): the samplers and the trainer workers go to the nodes their
`node_labels` name, and every weight sync reaches every sampler."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster():
    """A head without CPUs (the driver only), a `rollout` node and a `train` node, 2 CPUs each."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    rollout = cluster.add_node(num_cpus=2, labels={"role": "rollout"}, object_store_memory=300 << 20)
    train = cluster.add_node(num_cpus=2, labels={"role": "train"}, object_store_memory=300 << 20)
    cluster.wait_for_nodes()
    yield cluster.address, rollout.node_id, train.node_id
    cluster.shutdown()


def test_ppo_places_samplers_and_trainer_workers_on_their_labelled_nodes(cluster, tiny_model, pattern_reward, tmp_path):
    address, rollout_node, train_node = cluster
    reward_model, _ = pattern_reward
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Human: Question {i}?\n\nAssistant:"}) + "\n" for i in range(16)))
    out = tmp_path / "runs"
    command = [
        Path(sys.executable).with_name("alignray"), "train", "ppo", f"model.name={tiny_model}", f"output_dir={out}",
        f"data.source={prompts}", f"reward.models=[{reward_model}]", "tracking.experiment=multinode",
        "sampler.num_samplers=2", "sampler.max_model_len=256", "sampler.max_tokens=8", "sampler.prompts_per_request=4",
        "sampler.node_labels={role: rollout}", "trainer.node_labels={role: train}", "trainer.num_workers=2",
        "ppo.iterations=3", "ppo.prompts_per_step=4", "ppo.samples_per_prompt=2", "ppo.minibatch_per_worker=4",
        "ppo.checkpoint_every=3", "model.dtype=float32", "trainer.precision=fp32", "--address", address,
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{(out / 'mlflow.db').resolve()}")
    [run] = client.search_runs([client.get_experiment_by_name("multinode").experiment_id])
    tags = run.data.tags
    assert tags["placement"] == "separate"  # labels name where each part goes
    assert tags["placement.sampler_nodes"] == rollout_node and tags["placement.trainer_nodes"] == train_node
    # after every sync, each of the 2 samplers on the other node scored the probe as the trainer did
    diffs = [m.value for m in client.get_metric_history(run.info.run_id, "sync_probe_diff")]
    assert len(diffs) == 3 and max(diffs) < 1e-4
