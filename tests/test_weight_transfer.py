"""The collective weight transport (sampler.weight_transfer=collective): vLLM's weight-transfer
engine API with our gloo engine, between this process (the sender) and real vLLM sampler actors
on a real local Ray. PPO on it is compared with the object-store transport in test_ppo."""

from __future__ import annotations

import pytest
import ray
import torch
from alignray.sampling.gloo_engine import buckets
from alignray.sampling.pool import SamplerPool, WeightSyncError
from alignray.sampling.types import Probe, SamplingSpec
from test_sampler import CONTINUATIONS, PROMPTS, hf_token_logprobs
from transformers import AutoModelForCausalLM, AutoTokenizer


def test_buckets_are_consecutive_bounded_and_keep_large_tensors_whole():
    assert buckets([4, 4, 4], 8) == [range(0, 2), range(2, 3)]
    assert buckets([3, 20, 1, 1], 8) == [range(0, 1), range(1, 2), range(2, 4)]  # 20 > 8 travels alone
    assert buckets([], 8) == []
    assert buckets([8, 8], 8) == [range(0, 1), range(1, 2)]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_two_samplers_receive_broadcast_weights_and_stale_ones_fail_the_probe(tiny_model, sampler_cfg):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)

    def probe():
        return Probe(PROMPTS[0], CONTINUATIONS[0], tuple(hf_token_logprobs(model, tokenizer, PROMPTS[0], CONTINUATIONS[0])))

    def perturbed(seed):
        torch.manual_seed(seed)
        return {k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}

    # 1 MiB buckets: the tiny model's ~8 MB of weights go in several broadcasts
    cfg = sampler_cfg.model_copy(update={"num_samplers": 2, "weight_transfer": "collective", "weight_bucket_mb": 1})
    with SamplerPool(tiny_model, cfg, dtype="float32") as pool:
        initial = probe()
        for version, seed in ((1, 1), (2, 2)):  # the group is formed once, then reused
            new = perturbed(seed)
            model.load_state_dict(new)
            assert pool.update_weights(new, probe=probe()) == version
            assert pool.last_probe_diff < 1e-4  # both samplers, float32: the same weights
        assert [h["weights_version"] for h in pool.health()] == [2, 2]
        with pytest.raises(WeightSyncError, match="does not reproduce the trainer's log-probs"):
            pool.update_weights(perturbed(3), probe=initial)  # the samplers hold v3, the probe is of v0
        with pytest.raises(WeightSyncError, match="missing tensors|wrong shapes"):
            pool.update_weights({"model.embed_tokens.weight": torch.zeros(3, 3)})  # refused before any broadcast
        assert pool.weights_version == 3

        # a lost sampler: its replacement loads the last weights (from the object store), and the
        # next update forms the group again with it
        ray.kill(pool.actors[1], no_restart=True)
        assert len(pool.generate(PROMPTS * 4, SamplingSpec(max_tokens=4, seed=0))) == 8
        assert pool.restarts == 1 and [h["weights_version"] for h in pool.health()] == [3, 3]
        new = perturbed(4)
        model.load_state_dict(new)
        assert pool.update_weights(new, probe=probe()) == 4 and pool.last_probe_diff < 1e-4


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_broadcast_past_its_deadline_raises_then_the_pool_recovers(tiny_model, sampler_cfg):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    cfg = sampler_cfg.model_copy(update={"weight_transfer": "collective"})
    with SamplerPool(tiny_model, cfg) as pool:
        pool.cfg.weight_sync_timeout_s = 0.001  # no group can form that fast
        with pytest.raises(WeightSyncError, match="gloo broadcast of weights v1 to 1 samplers"):
            pool.update_weights(model.state_dict())
        pool.cfg.weight_sync_timeout_s = 120
        assert len(pool.generate(PROMPTS, SamplingSpec(max_tokens=4, seed=0))) == 2
        assert pool.restarts == 1 and pool.health()[0]["weights_version"] == 1  # restarted with v1
        assert pool.update_weights(model.state_dict()) == 2  # and a new group forms
