"""LoRA training (`trainer.lora`) on real Ray Train + DeepSpeed, vLLM samplers and a real MLflow
store, with the tiny models of tests/test_train.py and tests/test_ppo.py: the adapters learn, the
registry holds the adapter naming its base, every consumer gets the merged model, checkpoints
leave the frozen base out, PPO's reference is the policy without its adapters, and the samplers
serve the adapter itself (vLLM's LoRA kernels) or the merged weights."""

import json

import pytest
from alignray.models.registry import local_folder
from alignray.models.mlflow_model import download as download_model
from alignray.train.ppo import fit as fit_ppo
from test_ppo import client_of, history, ppo_config, word_share
from test_rloo import HELD_OUT, rises
from test_train import generates_folder, pref_rows, prefers_good, train, write

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]
LORA = ["trainer.lora={rank: 8, alpha: 16}", "trainer.learning_rate=1e-2"]


def folder_bytes(folder, pattern="*"):
    return sum(f.stat().st_size for f in folder.rglob(pattern) if f.is_file())


def test_dpo_with_lora_registers_an_adapter_that_loads_as_its_full_model(tiny_model, tmp_path):
    rows = [dict(r, preference_prob=1.0) for r in pref_rows()]
    result, client = train("dpo", tiny_model, tmp_path, write(tmp_path, rows), "dpo.beta=0.5", *LORA)
    assert result.metrics["eval_reward_accuracy"] >= 0.9
    adapter = download_model(result.model_uri)
    assert sorted(p.name for p in adapter.glob("adapter_*")) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not (adapter / "config.json").exists()
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model)
    name, version = result.model_uri.removeprefix("models:/").split("/")
    assert client.get_model_version(name, version).tags["base_model"] == str(tiny_model)
    assert folder_bytes(adapter, "adapter_model.*") < folder_bytes(tiny_model, "*.safetensors") / 5
    # the engine state leaves the frozen base out: a few adapter-sized files, not the model again
    engine_state = folder_bytes(result.checkpoint / "deepspeed")
    assert engine_state < folder_bytes(tiny_model, "*.safetensors"), engine_state
    merged = local_folder(result.model_uri)  # what every stage, sampler and server loads
    assert (merged / "config.json").is_file() and generates_folder(merged)


def test_a_lora_preference_model_under_zero3_learns_and_scores_as_a_full_one(tiny_model, tmp_path):
    result, _ = train("preference", tiny_model, tmp_path, write(tmp_path, pref_rows()), "trainer.zero_stage=3", *LORA)
    assert result.metrics["eval_accuracy"] >= 0.9
    assert prefers_good(local_folder(result.model_uri))


@pytest.mark.parametrize("algorithm, sync", [("rloo", "adapter"), ("ppo", "auto")])
def test_lora_policies_learn_with_the_reference_inside_and_either_sync(algorithm, sync, tiny_model, pattern_reward,
                                                                        tmp_path):
    """RLOO with the adapter served by vLLM's LoRA kernels; PPO (its critic adapted too, its head
    trained whole) with merged weights (`auto` on CPU samplers), stopped half-way and resumed from
    the checkpoint without the frozen base."""
    reward_model, words = pattern_reward
    out = tmp_path / "runs"
    # the tiny model's output layer is a third of its weights: with adapters on the projections alone the
    # reward rose by 0.02-0.05 in 16 iterations (lr 2e-3 to 3e-2, rank 8 or 32); with lm_head too, by 0.1-0.3
    lora = "{rank: 8, alpha: 16, sync: %s, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj," \
           " down_proj, lm_head]}" % sync
    args = [f"reward.models=[{reward_model}]", f"ppo.algorithm={algorithm}", "ppo.iterations=12", "ppo.kl_target=3",
            "ppo.kl_horizon=64", f"trainer.lora={lora}", "trainer.learning_rate=1e-2", "critic.learning_rate=1e-3",
            "run_name=lora"]
    if algorithm == "ppo":
        fit_ppo(ppo_config(tiny_model, out, *args, "ppo.stop_after_iterations=6"))
    result = fit_ppo(ppo_config(tiny_model, out, *args))
    probe = history(out, result.run_id, "sync_probe_diff")
    assert len(probe) == 12 and max(probe) < 1e-3, probe  # every sampler served what the trainer computes
    assert history(out, result.run_id, "kl")[0] < 1e-6  # the reference is the starting policy: the adapters off
    rises(out, result.run_id)
    after = word_share(local_folder(result.model_uri), set(words), HELD_OUT)
    assert after > word_share(tiny_model, set(words), HELD_OUT) + 0.1
    assert client_of(out).get_run(result.run_id).data.metrics["trainer_peak_rss_gib"] > 0
