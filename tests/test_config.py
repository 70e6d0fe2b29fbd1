"""Typed config: YAML plus dotted overrides, and errors that name the file and field."""

import pytest
from alignray.config import ConfigError, PPOConfig, SimulateConfig, load_config


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides_are_typed(tmp_path):
    path = write(tmp_path, "sampler:\n  temperature: 0.5\ndata:\n  limit: 4\n")
    cfg = load_config(path, ["sampler.temperature=0.7", "sampler.max_tokens=12", "data.format=chat"])
    assert isinstance(cfg, SimulateConfig)
    assert cfg.sampler.temperature == 0.7 and cfg.sampler.max_tokens == 12
    assert cfg.data.limit == 4 and cfg.data.format == "chat"
    assert cfg.simulation.principles == "harmlessness"  # default kept
    assert load_config(None, ["tracking.run_name=2024"]).tracking.run_name == "2024"


def test_unknown_field_names_file_field_and_allowed(tmp_path):
    path = write(tmp_path, "sampler:\n  temprature: 0.5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "sampler.temprature" in msg and "temperature" in msg


def test_mistyped_value_names_the_override(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["sampler.max_tokens=many"])
    assert "sampler.max_tokens=many" in str(err.value) and "integer" in str(err.value)


def test_literal_field_says_what_is_allowed():
    with pytest.raises(ConfigError, match="'transcript' or 'chat'"):
        load_config(None, ["data.format=xml"])


def test_unknown_section_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown field 'samplers'"):
        load_config(None, ["samplers.n=2"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "sampler: [unclosed\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected dotted.field=value"):
        load_config(None, ["sampler.=3"])


def test_shipped_job_configs_validate():
    from pathlib import Path

    from alignray.config import PPOConfig, TrainConfig

    configs = sorted(Path(__file__).parents[1].glob("jobs/configs/*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        ppo = path.name.startswith(("ppo_", "morlaif_"))
        overrides = [] if ppo or path.name.startswith("rlcd") else ["dataset=x.parquet"]
        schema = PPOConfig if ppo else TrainConfig if overrides else SimulateConfig
        load_config(path, overrides, schema)


def test_rrhf_sft_reduction_defaults_to_the_papers_sum_and_rejects_others():
    from alignray.config import TrainConfig

    assert load_config(None, ["dataset=x.parquet"], TrainConfig).rrhf.sft_reduction == "sum"
    cfg = load_config(None, ["dataset=x.parquet", "rrhf.sft_reduction=mean"], TrainConfig)
    assert cfg.rrhf.sft_reduction == "mean"
    with pytest.raises(ConfigError, match="rrhf.sft_reduction"):
        load_config(None, ["dataset=x.parquet", "rrhf.sft_reduction=token"], TrainConfig)


def test_reward_fit_weights_is_a_file_for_ppo_and_excludes_given_weights():
    from pathlib import Path

    from alignray.config import PPOConfig

    cfg = load_config(None, ["reward.models=[rm]", "reward.fit_weights=pairs.jsonl"], PPOConfig)
    assert cfg.reward.fit_weights == Path("pairs.jsonl") and cfg.reward.fit_weights_l2 == 1e-3
    assert load_config(None, ["reward.models=[rm]"], PPOConfig).reward.fit_weights is None
    with pytest.raises(ConfigError, match=r"at most one of reward.weights \(given\) and reward.fit_weights"):
        load_config(None, ["reward.models=[rm]", "reward.fit_weights=pairs.jsonl", "reward.weights=[1, 2]"], PPOConfig)
    with pytest.raises(ConfigError, match="field 'reward.fit_weights_l2'"):
        load_config(None, ["reward.models=[rm]", "reward.fit_weights=p.jsonl", "reward.fit_weights_l2=-1"], PPOConfig)
    with pytest.raises(ConfigError, match="reward.fit_weights is fitted by PPO only"):
        load_config(None, ["simulation.method=rrhf", "reward.models=[rm]", "reward.fit_weights=p.jsonl"], SimulateConfig)


@pytest.mark.parametrize("extra, message", [
    (["simulation.method=rdpo"], "rdpo samples with simulation.teacher"),
    (["simulation.method=rrhf"], "rrhf samples with ranking.policies"),
    (["simulation.simulator=http://host:8000/v1"], "must be a local model"),
])
def test_simulator_is_a_local_model_for_pair_methods(extra, message):
    from alignray.config import SimulateConfig

    with pytest.raises(ConfigError, match=message):
        load_config(None, ["simulation.simulator=smollm2-135m-instruct", *extra], SimulateConfig)
    assert load_config(None, ["simulation.simulator=x"], SimulateConfig).simulation.simulator == "x"


def test_critic_free_algorithms_need_groups_and_only_they_take_the_kl_as_a_loss():
    base = ["reward.models=[a]"]
    with pytest.raises(ConfigError, match="ppo.samples_per_prompt = 1: rloo compares the samples of a prompt"):
        load_config(None, [*base, "ppo.algorithm=rloo", "ppo.samples_per_prompt=1"], PPOConfig)
    with pytest.raises(ConfigError, match="ppo.kl_in = loss is for rloo and grpo"):
        load_config(None, [*base, "ppo.kl_in=loss"], PPOConfig)
    grpo = load_config(None, [*base, "ppo.algorithm=grpo", "ppo.kl_in=loss"], PPOConfig).ppo
    assert not grpo.whiten and load_config(None, base, PPOConfig).ppo.whiten  # whitening: ppo's default only
    assert load_config(None, [*base, "ppo.algorithm=rloo", "ppo.whiten_advantages=true"], PPOConfig).ppo.whiten
