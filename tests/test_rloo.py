"""RLOO and GRPO (`ppo.algorithm`) on real Ray (Train workers + vLLM samplers), real DeepSpeed
and a real MLflow store, with the tiny models of tests/test_ppo.py: no critic is built or
logged, and the share of the words the reward likes rises under each reward source (a
preference model, a 12-head one through a scalarizer, a Python function, an HTTP endpoint)."""

import threading
from http.server import ThreadingHTTPServer

import pytest
from alignray.models.mlflow_model import download as download_model
from alignray.train.ppo import fit
from test_ppo import Endpoint, client_of, history, ppo_config, twelve_heads, word_share

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]
HELD_OUT = [f"Human: Another question, number {i}?\n\nAssistant:" for i in range(48)]
CRITIC_ONLY = ("value_loss", "explained_variance")

FUNCTION = """
from transformers import AutoTokenizer

TOKENIZER = AutoTokenizer.from_pretrained({policy!r})
WORDS = set({words!r})


def word_share(prompts, responses):
    shares = []
    for response in responses:
        ids = TOKENIZER(response, add_special_tokens=False).input_ids
        shares.append(sum(i in WORDS for i in ids) / max(1, len(ids)))
    return shares
"""


def rises(out, run_id, by=0.05):
    reward = history(out, run_id, "reward")
    assert sum(reward[-3:]) / 3 > sum(reward[:3]) / 3 + by, reward


@pytest.mark.parametrize("source", ["preference model", "python function"])
def test_rloo_learns_without_a_critic(source, tiny_model, pattern_reward, tmp_path):
    reward_model, words = pattern_reward
    if source == "python function":
        path = tmp_path / "word_reward.py"
        path.write_text(FUNCTION.format(policy=str(tiny_model), words=list(words)))
        reward = [f"reward.function={path}:word_share", "critic.init=policy"]
    else:
        reward = [f"reward.models=[{reward_model}]"]
    out = tmp_path / "runs"
    result = fit(ppo_config(tiny_model, out, *reward, "ppo.algorithm=rloo", "ppo.iterations=16", "ppo.kl_target=3",
                            "ppo.kl_horizon=64"))
    run = client_of(out).get_run(result.run_id)
    assert not set(CRITIC_ONLY) & set(run.data.metrics) and "critic.head_start" not in run.data.tags
    assert run.data.params["ppo.algorithm"] == "rloo"
    rises(out, result.run_id)
    before, after = word_share(tiny_model, set(words), HELD_OUT), word_share(download_model(result.model_uri),
                                                                              set(words), HELD_OUT)
    assert after > before + 0.1, (before, after)


def test_grpo_with_12_heads_the_kl_as_a_loss_and_a_higher_clip(tiny_model, pattern_reward, tmp_path):
    """The 12-head model of tests/test_ppo.py through soft_min with weights (head 11 turned around),
    GRPO's group-normalised advantage, the k3 KL as a loss term, per-response loss and an
    asymmetric clip."""
    reward_model, words = pattern_reward
    heads = twelve_heads(reward_model, tmp_path / "twelve")
    out = tmp_path / "runs"
    result = fit(ppo_config(tiny_model, out, f"reward.models=[{heads}]", "reward.scalarize=soft_min",
                            "reward.params={temperature: 2.0}", f"reward.weights=[{', '.join(['1'] * 11)}, -1]",
                            "ppo.algorithm=grpo", "ppo.kl_in=loss", "ppo.kl_coef=0.05", "ppo.loss_aggregation=sequence",
                            "ppo.clip_eps_high=0.28", "ppo.iterations=16"))
    metrics = client_of(out).get_run(result.run_id).data.metrics
    assert not set(CRITIC_ONLY) & set(metrics)
    kl_loss = history(out, result.run_id, "kl_loss")
    assert len(kl_loss) == 16 and all(v >= 0 for v in kl_loss) and max(kl_loss) > 0  # k3 is never negative
    rises(out, result.run_id)
    after = word_share(download_model(result.model_uri), set(words), HELD_OUT)
    assert after > word_share(tiny_model, set(words), HELD_OUT) + 0.1


class SteadyEndpoint(Endpoint):
    """The endpoint of tests/test_ppo.py without its NaN."""

    def do_POST(self):
        Endpoint.calls = -100
        super().do_POST()


def test_grpo_on_an_http_reward_endpoint_in_one_update_per_iteration(tiny_model, tmp_path):
    """Also GRPO's single update (one epoch, one minibatch per worker, the KL as a loss): the
    experience skips the actor's forward pass and the update's own log-probs are the old ones."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), SteadyEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "runs"
    try:
        result = fit(ppo_config(tiny_model, out, f"reward.endpoint=http://127.0.0.1:{server.server_port}/score",
                                "critic.init=policy", "ppo.algorithm=grpo", "ppo.group_std=false",
                                "reward.weights=[1.0, 2.0]", "ppo.iterations=2", "ppo.kl_in=loss", "ppo.ppo_epochs=1",
                                "ppo.minibatch_per_worker=32"))
    finally:
        server.shutdown()
    assert result.model_uri is not None
    for principle in ("length", "e_share"):
        assert len(history(out, result.run_id, f"reward_{principle}")) == 2
    assert client_of(out).get_run(result.run_id).data.params["ppo.group_std"] == "False"
    assert history(out, result.run_id, "approx_kl") == [0.0, 0.0]  # the ratio is exactly 1: old = this pass
    assert history(out, result.run_id, "kl")[0] < 1e-6 < history(out, result.run_id, "kl")[1]  # filled by the update
    assert max(history(out, result.run_id, "logprob_gap")) < 1e-3  # the update's raw log-probs against the sampler's
