"""PPO building blocks without Ray: KL controller, reward normaliser, packing and log-probs."""

import math
import random

import pytest
import torch
from alignray.train.ppo_loop import prompt_indices
from alignray.train.ppo_parts import (
    DiversityWatch,
    KLController,
    RunningMoments,
    critic_head_scale,
    critic_model,
    one_head_reward_model,
    pack,
    token_logps,
)
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification


def test_fixed_kl_controller_never_moves():
    ctl = KLController(0.1)
    ctl.update(kl=50.0, samples=1000)
    assert ctl.coef == 0.1


def test_adaptive_kl_controller_follows_the_target_with_clipped_steps():
    ctl = KLController(0.1, target=2.0, horizon=100)
    ctl.update(kl=3.0, samples=10)  # error 0.5, clipped to 0.2
    assert ctl.coef == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    ctl.update(kl=1.8, samples=10)  # error -0.1
    assert ctl.coef == pytest.approx(0.1 * 1.02 * (1 - 0.1 * 10 / 100))
    assert KLController(**ctl.state()) == ctl  # what a checkpoint carries


def test_running_moments_equal_the_moments_of_everything_seen():
    rng = random.Random(0)
    batches = [[rng.gauss(3, 2) for _ in range(rng.randint(1, 9))] for _ in range(7)]
    moments = RunningMoments()
    for b in batches:
        moments.update(len(b), sum(b), sum(x * x for x in b))
    seen = [x for b in batches for x in b]
    mean = sum(seen) / len(seen)
    assert moments.mean == pytest.approx(mean)
    assert moments.std == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in seen) / len(seen)))
    assert RunningMoments().std == 1.0  # nothing seen yet: no scaling


def test_diversity_watch_compares_with_the_first_iteration_and_warns_once():
    from test_diversity import brief, emoji_policy, healthy, refusal_policy

    watch = DiversityWatch()
    figures, reasons = watch.observe(healthy(0))  # the first iteration: the starting policy's rollouts
    assert reasons == [] and set(figures) == {"diversity_distinct_1", "diversity_distinct_2", "diversity_repeated_ngrams",
                                              "diversity_non_alpha", "diversity_identical", "diversity_mean_length"}
    assert watch.observe(healthy(1))[1] == [] and watch.observe(brief(1))[1] == []  # a normal policy, a briefer one
    figures, reasons = watch.observe(refusal_policy(1))
    assert figures["diversity_identical"] == pytest.approx(0.9) and reasons and "identical answers" in reasons[0]
    later = watch.observe(emoji_policy(1))  # worse still, but the run has warned already
    assert later[1] == [] and later[0]["diversity_non_alpha"] == 1.0
    resumed = DiversityWatch(**watch.state())  # what a checkpoint carries: the start and that it warned
    assert resumed == watch and resumed.observe(emoji_policy(2))[1] == []
    # resumed before any warning: still measured against the first iteration's figures, not the resumed one's
    fresh = DiversityWatch()
    fresh.observe(healthy(0))
    assert DiversityWatch(**fresh.state()).observe(emoji_policy(1))[1]


def test_the_driver_shows_each_worker_warning_once_while_training(capsys):
    """The Progress actor's warnings (e.g. PPO's diversity warning) reach the terminal as they
    come, once each, and the run's result keeps them."""
    import time

    from alignray.train.launch import _fit_with_progress

    class Trainer:
        def fit(self):
            time.sleep(2.5)  # three polls
            return "result"

    polls = iter([(1, 0.5, []), (2, 0.6, ["rollouts look degenerate"]), (3, 0.7, ["rollouts look degenerate"])])
    shown: list[str] = []
    assert _fit_with_progress(Trainer(), lambda: next(polls, (3, 0.7, ["rollouts look degenerate"])), 3, 0, "ppo",
                              "reward", shown) == "result"
    assert shown == ["rollouts look degenerate"]
    assert capsys.readouterr().err.count("warning: rollouts look degenerate") == 1


def test_pack_aligns_responses_and_counts_positions_over_real_tokens():
    b = pack([[5, 6, 7], [8]], [[1, 2], [3, 4, 9]], pad_id=0)
    assert b.prompt_width == 3
    assert b.input_ids.tolist() == [[5, 6, 7, 1, 2, 0], [0, 0, 8, 3, 4, 9]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert b.position_ids[1, 2:].tolist() == [0, 1, 2, 3]
    assert b.response_mask.tolist() == [[1, 1, 0], [1, 1, 1]]


def test_token_logps_of_a_padded_batch_equal_each_sequence_alone(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    prompts, responses = [[10, 11, 12, 13], [14]], [[20, 21], [22, 23, 24]]
    with torch.no_grad():
        tempered, raw, entropy = token_logps(model, pack(prompts, responses, pad_id=0), temperature=0.7)
        for row, (p, r) in enumerate(zip(prompts, responses)):
            logits = model(torch.tensor([p + r])).logits[0, len(p) - 1 : -1]
            expect_raw = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r)[:, None])[:, 0]
            expect_t = torch.log_softmax(logits / 0.7, -1).gather(-1, torch.tensor(r)[:, None])[:, 0]
            assert torch.allclose(raw[row, : len(r)], expect_raw, atol=1e-5)
            assert torch.allclose(tempered[row, : len(r)], expect_t, atol=1e-5)
    assert (entropy > 0).all()


def test_every_epoch_visits_each_prompt_once():
    seen = [i for it in range(6) for i in prompt_indices(it, per_step=5, n=10, seed=3)]
    assert sorted(seen[:10]) == sorted(seen[10:20]) == list(range(10))
    assert seen[:10] != seen[10:20]  # a fresh order per epoch
    assert prompt_indices(4, 5, 10, 3) == seen[20:25]  # the position follows from the iteration


def preference_model(tiny_model, folder, heads: int):
    torch.manual_seed(heads)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=heads)
    with torch.no_grad():
        model.score.weight.normal_()
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("source", ["morlaif", "policy", "reward"])
def test_critic_gets_the_backbone_and_a_scaled_or_zero_head(tiny_model, tmp_path, source):
    if source == "policy":
        folder, original = tiny_model, AutoModelForCausalLM.from_pretrained(tiny_model)
    else:
        folder = tmp_path / source
        original = preference_model(tiny_model, folder, heads=12 if source == "morlaif" else 1)
    critic = critic_model(str(folder), pad_id=0, head_scale=0.5)
    assert critic.score.weight.shape == (1, critic.config.hidden_size)
    if source == "reward":  # values start at the trained reward: 0.5 times the reward model's score
        assert torch.allclose(critic.score.weight, 0.5 * original.score.weight)
        assert not critic_model(str(folder), pad_id=0, head_scale=0.0).score.weight.any()
    else:  # a policy or a 12-head MORLAIF model: V = 0 at the start, not random
        assert not critic.score.weight.any()
    layer = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(critic.state_dict()[layer], original.state_dict()[layer])


@pytest.mark.parametrize(("fields", "scale"), [
    ({}, 1.0),
    ({"weights": [2.0]}, 2.0),
    ({"scalarize": "soft_min", "weights": [0.5]}, 0.5),  # one principle: soft_min is w·r
    ({"scalarize": "median"}, 1.0),
    ({"normalize": True}, 0.0),  # returns are centred near 0, the head's scores are not
    ({"clip": 1.0}, 0.0),
    ({"scalarize": "bernoulli_nash"}, 0.0),  # log σ(r) is not a multiple of r
])
def test_the_value_head_starts_where_the_trained_reward_is(fields, scale):
    from alignray.config import RewardConfig

    reward = RewardConfig(models=["a"], **fields)
    assert critic_head_scale(reward, one_head=True) == pytest.approx(scale)
    assert critic_head_scale(reward, one_head=False) == 0.0  # several models or heads: zeros


def test_the_critic_values_start_at_the_reward_ppo_trains_on(tiny_model, tmp_path):
    """On the real modules: with weight 3, the critic's head on the answer's final state gives 3 x
    the reward model's score of the answer, the reward PPO trains on."""
    from alignray.config import RewardConfig

    folder = tmp_path / "reward"
    reward_model = preference_model(tiny_model, folder, heads=1).eval()
    scale = critic_head_scale(RewardConfig(models=[str(folder)], weights=[3.0]), one_head_reward_model(str(folder)))
    critic = critic_model(str(folder), pad_id=0, head_scale=scale).eval()
    batch = pack([[5, 6, 7]], [[8, 9, 10, 11]], pad_id=0)
    with torch.no_grad():
        hidden = critic.base_model(input_ids=batch.input_ids).last_hidden_state[:, -1]
        score = reward_model(input_ids=batch.input_ids).logits[0, 0]
    assert scale == 3.0
    assert float(critic.score(hidden)[0, 0]) == pytest.approx(3.0 * float(score), rel=1e-4, abs=1e-5)


def test_driver_fits_reward_weights_records_them_and_a_resumed_run_reuses_them(tmp_path, capsys):
    """The PPO driver's reward.fit_weights step against a real HTTP reward endpoint and a real
    MLflow store (no Ray): fitted, recorded, handed to the workers as plain weights, reused."""
    import hashlib
    import json

    import mlflow
    from reward_server import serve
    from alignray.config import PPOConfig, load_config
    from alignray.train.ppo import FITTED, _use_fitted_weights

    calls = []

    def reply(body):  # principles: politeness, and noise unrelated to the labels
        responses = body["responses"]
        calls.append(len(responses))
        rows = [[r.count("please"), int.from_bytes(hashlib.sha256(r.encode()).digest()[:4]) / 2**31 - 1]
                for r in responses]
        return {"rewards": rows, "principles": ["polite", "noise"]}

    rng = random.Random(0)
    pairs = tmp_path / "pairs.jsonl"
    with pairs.open("w") as fh:
        for i in range(400):
            low, high = sorted(rng.sample(range(5), 2))
            better, worse = (high, low) if rng.random() < 0.85 else (low, high)  # noisy labels
            fh.write(json.dumps({"prompt": f"Human: question {i}\n\nAssistant:", "chosen": "please " * better + f"a{i}",
                                 "rejected": "please " * worse + f"b{i}"}) + "\n")
    server, url = serve(reply)
    cfg = load_config(None, [f"reward.endpoint={url}",
                             f"reward.fit_weights={pairs}", "critic.init=policy"], PPOConfig)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'm.db'}")
    experiment = mlflow.create_experiment("fit", artifact_location=(tmp_path / "artifacts").as_uri())
    try:
        with mlflow.start_run(experiment_id=experiment) as run:
            used = _use_fitted_weights(cfg, [], run)
        w = used.reward.weights
        assert w[0] > 0.5 and abs(w[1]) < 0.25 * w[0] and used.reward.fit_weights is None
        assert cfg.reward.weights is None and cfg.reward.fit_weights == pairs  # the given config is left as it was
        assert PPOConfig.model_validate(used.model_dump(mode="json")).reward.weights == w  # what the workers get
        assert max(calls) == 64 and sum(calls) == 800  # both sides of 400 pairs, 64 pairs a request
        params = mlflow.MlflowClient().get_run(run.info.run_id).data.params
        assert params["reward.fitted_weight.polite"] == f"{w[0]:.6g}" and params["reward.fitted_weight.noise"] == f"{w[1]:.6g}"
        record = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{FITTED}")
        assert record == {"weights": {"polite": w[0], "noise": w[1]}, "pairs": 400, "l2": 1e-3, "file": str(pairs)}
        assert f"reward weights fitted on 400 pairs of {pairs}: polite {w[0]:+.4f}  noise {w[1]:+.4f}" in capsys.readouterr().err
        with mlflow.start_run(run_id=run.info.run_id) as resumed:  # a resumed run: no new fit, the same reward
            assert _use_fitted_weights(cfg, [], resumed).reward.weights == w
        assert sum(calls) == 800 and "reward weights recorded in this run: polite" in capsys.readouterr().err
    finally:
        server.shutdown()
