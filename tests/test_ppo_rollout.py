"""PPO rollouts in the shipped pipeline settings, on the real SmolLM2-135M-Instruct and vLLM: they
stop where the model starts the user's next turn, the reward sees replies cleaned as simulation
cleans them, and the samplers' log-probs match the trainer's."""

from pathlib import Path

import pytest
import torch
from alignray.config import ConfigError, PipelineConfig, PPOConfig, load_config
from alignray.models.precision import torch_dtype
from alignray.models.registry import resolve
from alignray.pipelines.recipes import RECIPES
from alignray.pipelines.run import stage_config
from alignray.sampling.pool import SamplerPool
from alignray.train.data import load_tokenizer
from alignray.train.ppo_loop import probe_tolerance, rollout
from alignray.train.ppo_parts import pack, token_logps
from transformers import AutoModelForCausalLM

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "pipelines"
# Transcripts whose next turn SmolLM2 often starts itself (~1 sample in 5 with stops off)
PROMPTS = [
    "Human: hi\n\nAssistant: Hello!\n\nHuman: what is 2+2?\n\nAssistant: 4\n\nHuman: and 3+3?\n\nAssistant:",
    "Human: Name a colour.\n\nAssistant: Blue.\n\nHuman: Another one?\n\nAssistant: Red.\n\nHuman: One more?\n\nAssistant:",
]


def shipped_ppo_config(tmp_path) -> PPOConfig:
    cfg = load_config(CONFIGS / "rlcd_smollm2.yaml", [f"output_dir={tmp_path}"], PipelineConfig)
    assert cfg.sampler.top_p == 0.95  # what simulation and evaluation sample with
    stage = next(s for s in RECIPES["rlcd"] if s.kind == "ppo")
    return stage_config(cfg, stage, {("preference", "output"): "models:/rlcd-smollm2-preference/1"})


def test_ppo_samples_the_whole_distribution(tmp_path):
    assert shipped_ppo_config(tmp_path).sampler.top_p == 1.0
    with pytest.raises(ConfigError, match=r"sampler.top_p = 0.9: PPO samples at top_p = 1"):
        load_config(None, ["reward.models=[a]", "sampler.top_p=0.9"], PPOConfig)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize(("dtype", "precision"), [("float32", "fp32"), ("auto", "auto")], ids=["fp32", "shipped"])
def test_rollouts_stop_at_the_next_turn_and_match_the_trainer(tmp_path, dtype, precision):
    cfg = shipped_ppo_config(tmp_path)
    sampler = cfg.sampler.model_copy(update={"max_tokens": 40, "num_samplers": 1})
    cfg = cfg.model_copy(update={
        "sampler": sampler,
        "model": cfg.model.model_copy(update={"dtype": dtype}),
        "trainer": cfg.trainer.model_copy(update={"precision": precision}),
        "ppo": cfg.ppo.model_copy(update={"samples_per_prompt": 12}),
    })
    policy = resolve(cfg.model.name)
    tok = load_tokenizer(policy)
    with SamplerPool(policy, sampler, dtype=dtype, seed=0) as pool:
        ro = rollout(pool, tok, PROMPTS, cfg, iteration=0)
        sampler_dtype = pool.dtype

    stopped = 0
    for text, ids in zip(ro.responses, ro.response_ids, strict=True):
        assert "Human:" not in text and text == text.strip()  # cleaned as simulation cleans
        full = tok.decode(ids)
        if full.rstrip().endswith("Human:"):  # stopped at the user's next turn: the marker is trained on
            stopped += 1
            assert full.rstrip().removesuffix("Human:").strip() == text
    assert stopped >= 2, ro.responses

    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch_dtype(precision)).eval()
    with torch.no_grad():
        _, raw, _ = token_logps(model, pack(ro.prompt_ids, ro.response_ids, tok.pad_token_id), 1.0)
    gaps = [abs(raw[i, j].item() - lp) for i, lps in enumerate(ro.sampler_logps) for j, lp in enumerate(lps)]
    # the weight-sync probe's bound for the dtypes in play (why: ppo_loop.PROBE_TOLERANCE)
    assert sum(gaps) / len(gaps) < probe_tolerance(cfg, sampler_dtype), (sum(gaps) / len(gaps), sampler_dtype)
