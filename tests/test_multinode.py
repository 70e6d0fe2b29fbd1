"""PPO on a Ray cluster of several nodes (real raylets on this machine, started with
`ray.cluster_utils.Cluster`): the sampler and the trainer workers go to the nodes their
`node_labels` name, every weight sync reaches the sampler, and a run that loses both nodes it
uses recovers on the spare ones."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


@pytest.fixture
def spare_cluster():
    """Two `rollout` and two `train` nodes (2 CPUs each): when one of each dies, the other can
    take its work."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    nodes = {f"{role}-{k}": cluster.add_node(num_cpus=2, labels={"role": role}, object_store_memory=300 << 20)
             for role in ("rollout", "train") for k in range(2)}
    cluster.wait_for_nodes()
    yield cluster, nodes
    cluster.shutdown()


def ppo_command(tiny_model, reward_model, prompts, out, address, *extra):
    return [
        Path(sys.executable).with_name("alignray"), "train", "ppo", f"model.name={tiny_model}", f"output_dir={out}",
        f"data.source={prompts}", f"reward.models=[{reward_model}]", "tracking.experiment=recovery",
        "sampler.num_samplers=1", "sampler.max_model_len=256", "sampler.max_tokens=8", "sampler.prompts_per_request=4",
        "sampler.node_labels={role: rollout}", "trainer.node_labels={role: train}", "trainer.num_workers=2",
        "trainer.max_failures=2", "ppo.iterations=4", "ppo.prompts_per_step=4", "ppo.samples_per_prompt=2",
        "ppo.minibatch_per_worker=4", "ppo.checkpoint_every=2", "model.dtype=float32", "trainer.precision=fp32",
        "--address", address, *extra,
    ]


def test_a_node_killed_mid_ppo_the_run_recovers_from_its_checkpoint(spare_cluster, tiny_model, pattern_reward, tmp_path):
    """Both nodes in use (the sampler's and the trainer workers') are removed after iteration 3;
    Ray Train starts the workers again on the spare train node from the checkpoint of iteration
    2, the pool starts its sampler again on the spare rollout node, and every curve from the
    checkpoint on equals the one of a run that nothing interrupted."""
    import time

    cluster, nodes = spare_cluster
    reward_model, _ = pattern_reward
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Human: Question {i}?\n\nAssistant:"}) + "\n" for i in range(16)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    keys = ("reward", "kl", "policy_loss", "value_loss")

    def curves(out):
        client = MlflowClient(f"sqlite:///{(out / 'mlflow.db').resolve()}")
        [run] = client.search_runs([client.get_experiment_by_name("recovery").experiment_id])
        by_step = {k: {m.step: m.value for m in sorted(client.get_metric_history(run.info.run_id, k),
                                                          key=lambda m: m.timestamp)} for k in keys}
        return run, by_step  # a step logged twice (before and after the restart) keeps its last value

    straight = tmp_path / "straight"
    done = subprocess.run(ppo_command(tiny_model, reward_model, prompts, straight, cluster.address), capture_output=True,
                          text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "policy:      models:/alignray-ppo/1" in done.stdout  # the command's summary names the registered policy
    run, expected = curves(straight)
    tags = run.data.tags  # labels name where each part goes
    assert tags["placement"] == "separate"
    assert tags["placement.sampler_nodes"] in {nodes[f"rollout-{k}"].node_id for k in range(2)}
    assert set(tags["placement.trainer_nodes"].split(",")) <= {nodes[f"train-{k}"].node_id for k in range(2)}
    client = MlflowClient(f"sqlite:///{(straight / 'mlflow.db').resolve()}")
    diffs = [m.value for m in client.get_metric_history(run.info.run_id, "sync_probe_diff")]
    assert len(diffs) == 4 and max(diffs) < 1e-4  # after every sync the sampler on the other node scored as the trainer

    out = tmp_path / "killed"
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(ppo_command(tiny_model, reward_model, prompts, out, cluster.address), stdout=log,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 600
        while not list(out.glob("train/*/checkpoint_*")):  # the checkpoint of iteration 2: kill during the 3rd
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
            time.sleep(0.2)
        run, _ = curves(out)
        used = {run.data.tags["placement.sampler_nodes"], *run.data.tags["placement.trainer_nodes"].split(",")}
        killed = [name for name, node in nodes.items() if node.node_id in used]
        assert {n.split("-")[0] for n in killed} == {"rollout", "train"}, (used, killed)
        tick = time.monotonic()
        for name in killed:
            cluster.remove_node(nodes[name])
        assert proc.wait(timeout=900) == 0, (tmp_path / "killed.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    recovered = time.monotonic() - tick
    _, got = curves(out)
    for key in keys:
        steps = sorted(expected[key])
        assert len(steps) == 4 and sorted(got[key]) == steps, key
        for step in steps[2:]:  # from the restored checkpoint on
            assert abs(got[key][step] - expected[key][step]) < 1e-4, (key, step, got[key], expected[key])
    print(f"removed {killed}; the run finished {recovered:.0f} s later")
