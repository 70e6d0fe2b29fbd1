"""Reward sources for PPO: local preference models and the HTTP contract (a real local server)."""


import pytest
import torch
from reward_server import serve
from alignray.models.tokens import Tokenize, pad
from alignray.rewards.scorers import HttpRewardModel, LocalRewardModels, RewardError
from transformers import AutoModelForSequenceClassification, AutoTokenizer


def preference_model(tiny_model, folder, heads):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=heads)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model.config.pad_token_id = tok.pad_token_id
    if heads > 1:
        model.config.id2label = {i: f"p{i}" for i in range(heads)}
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_local_models_score_like_preference_training_and_name_every_column(tiny_model, tmp_path):
    one = preference_model(tiny_model, tmp_path / "one", 1)
    two = preference_model(tiny_model, tmp_path / "two", 2)
    scorer = LocalRewardModels([one, two, one], ["harmless", "unused", "harmless"])
    prompts, responses = ["Human: hi\n\nAssistant:", "Human: why?\n\nAssistant:"], ["Hello there.", "Because."]
    rewards = scorer(prompts, responses)
    assert rewards.shape == (2, 4)
    assert scorer.principles == ["harmless", "p0", "p1", "harmless_3"]
    model = AutoModelForSequenceClassification.from_pretrained(one).eval()
    tok = AutoTokenizer.from_pretrained(one)
    batch = pad([Tokenize(tok, 1024, "left")(p, r) for p, r in zip(prompts, responses)], tok.pad_token_id)
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    assert torch.allclose(rewards[:, 0], expected, atol=1e-5)
    assert torch.allclose(rewards[:, 0], rewards[:, 3])


def test_http_endpoint_contract():
    server, url = serve(lambda b: {"rewards": [[len(r), 1.0] for r in b["responses"]], "principles": ["len", "one"]})
    try:
        scorer = HttpRewardModel(url, timeout_s=10)
        assert scorer(["p", "q"], ["ab", "abcd"]).tolist() == [[2.0, 1.0], [4.0, 1.0]]
        assert scorer.principles == ["len", "one"]
    finally:
        server.shutdown()


@pytest.mark.parametrize("reply, message", [
    ({"rewards": [[1.0]]}, "expected 'rewards' with 2 rows, got 1"),
    ({"scores": []}, "expected 'rewards' with 2 rows"),
    ({"rewards": [[1.0], [1.0, 2.0]]}, "same number"),
    ({"rewards": [["a"], ["b"]]}, "must hold numbers"),
])
def test_http_endpoint_errors_name_the_url_and_the_problem(reply, message):
    server, url = serve(lambda b: reply)
    try:
        with pytest.raises(RewardError, match=f"reward endpoint {url}: .*{message}"):
            HttpRewardModel(url, timeout_s=10)(["p", "q"], ["a", "b"])
    finally:
        server.shutdown()
    with pytest.raises(RewardError, match="reward endpoint http://127.0.0.1:9/x"):
        HttpRewardModel("http://127.0.0.1:9/x", timeout_s=5, retries=0)(["p"], ["a"])


REWARD_FILE = '''
def e_share(prompts, responses):
    return [r.count("e") / max(1, len(r)) for r in responses]

def two(prompts, responses):
    return [[len(r), len(p)] for p, r in zip(prompts, responses)]
two.principles = ["length", "prompt_length"]

def short(prompts, responses):
    return [1.0]

def nan(prompts, responses):
    return [float("nan")] * len(responses)

def words(prompts, responses):
    return ["a lot"] * len(responses)

def broken(prompts, responses):
    raise KeyError("no such key")
'''


def test_a_python_function_is_a_reward_from_a_file_or_a_module(tmp_path, monkeypatch):
    from alignray.config import ConfigError, RewardConfig
    from alignray.rewards.scorers import reward_source

    (tmp_path / "my_rewards.py").write_text(REWARD_FILE)
    monkeypatch.chdir(tmp_path)  # a relative file is made absolute when the config is read
    cfg = RewardConfig(function="my_rewards.py:e_share")
    assert cfg.function == f"{tmp_path / 'my_rewards.py'}:e_share"
    scorer = reward_source(cfg, 64)
    torch.testing.assert_close(scorer(["p", "q"], ["eee", "abcd"]), torch.tensor([[1.0], [0.0]]))
    assert scorer.principles == ["e_share"]
    monkeypatch.syspath_prepend(str(tmp_path))  # the same file as a module
    scorer = reward_source(RewardConfig(function="my_rewards:two"), 64)
    torch.testing.assert_close(scorer(["pp"], ["abc"]), torch.tensor([[3.0, 2.0]]))
    assert scorer.principles == ["length", "prompt_length"]

    for name, message in [("short", r"returned shape \(1, 1\) for 2 responses"), ("nan", "a NaN or infinite reward"),
                          ("words", "returned list, not numbers"), ("broken", "raised KeyError: 'no such key'")]:
        with pytest.raises(RewardError, match=message):
            reward_source(RewardConfig(function=f"my_rewards:{name}"), 64)(["p", "q"], ["a", "b"])
    for spec, message in [("nowhere.py:f", "no file"), ("no_such_module_here:f", "cannot import no_such_module_here"),
                          ("my_rewards:missing", "my_rewards has no function missing")]:
        with pytest.raises(ConfigError, match=message):
            reward_source(RewardConfig(function=spec), 64)
    for fields, message in [({"function": "e_share"}, "give \"module:function\""),
                            ({"function": "m:f", "models": ["a"]}, "exactly one of reward.models")]:
        with pytest.raises(ValueError, match=message):
            RewardConfig(**fields)
