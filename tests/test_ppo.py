"""PPO on real Ray (Train workers + vLLM sampler actors), real DeepSpeed and a real MLflow store,
with tiny models whose reward optimum is known (see conftest.make_pattern_reward_model)."""

import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from alignray.config import ConfigError, PPOConfig, load_config
from alignray.models.mlflow_model import download as download_model
from alignray.train.launch import TrainingError
from alignray.train.ppo import fit
from conftest import (
    last_per_step,
    logged_metrics,
    make_pattern_reward_model,
    train_workers,
    when,
    with_dropout,
    word_tokens,
)
from mlflow.tracking import MlflowClient
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]


def write_prompts(folder):
    path = folder / "prompts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(
        json.dumps({"prompt": f"Human: Question number {i}, please?\n\nAssistant:"}) + "\n" for i in range(64)
    ))
    return path


def ppo_config(tiny_model, out, *extra):
    return load_config(None, [
        f"model.name={tiny_model}", f"output_dir={out}", "tracking.experiment=ppo",
        f"data.source={write_prompts(out.parent)}", "sampler.max_model_len=256", "sampler.max_tokens=12",
        "sampler.prompts_per_request=4", "sampler.request_timeout_s=120", "sampler.weight_sync_timeout_s=120",
        "trainer.num_workers=2", "trainer.learning_rate=1e-3", "trainer.lr_schedule=constant",
        "critic.learning_rate=1e-3", "ppo.prompts_per_step=16", "ppo.samples_per_prompt=4",
        "ppo.minibatch_per_worker=8", "ppo.ppo_epochs=2", "ppo.kl_coef=0.02", "ppo.checkpoint_every=4",
        "model.dtype=float32", "trainer.precision=fp32",  # exact comparisons; bf16 has its own test
        *extra,
    ], PPOConfig)


def client_of(out):
    return MlflowClient(f"sqlite:///{(out / 'mlflow.db').resolve()}")


def only_run(out, experiment):
    client = client_of(out)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])[0]


def history(out, run_id, key):
    client = client_of(out)
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def word_share(model_path, words, prompts) -> float:
    """The task's real target: the share of word tokens in sampled responses (seeded)."""
    import torch

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_path)
    torch.manual_seed(0)
    shares = []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=12, do_sample=True, temperature=1.0, top_p=1.0)[0, ids.shape[1]:]
        shares.append(sum(int(t) in words for t in out) / max(1, len(out)))
    return sum(shares) / len(shares)


def test_reward_rises_kl_bounded_and_samplers_match_trainer(tiny_model, pattern_reward, tmp_path):
    reward_model, words = pattern_reward
    out = tmp_path / "runs"
    result = fit(ppo_config(tiny_model, out, f"reward.models=[{reward_model}]", "ppo.iterations=16",
                            "ppo.kl_target=3", "ppo.kl_horizon=64"))
    reward = history(out, result.run_id, "reward")
    assert len(reward) == 16
    assert sum(reward[-3:]) / 3 > sum(reward[:3]) / 3 + 0.15, reward  # ~0.2 -> ~0.5 when measured
    assert max(history(out, result.run_id, "kl")) < 12.0  # summed over a response's tokens
    kl, coef = history(out, result.run_id, "kl"), history(out, result.run_id, "kl_coef")
    for i in range(15):  # the adaptive controller: up above the target KL (3), down below
        assert (coef[i + 1] > coef[i]) == (kl[i] > 3), (i, kl, coef)
    # every sync: each sampler reproduces the trainer's probe log-probs (fp32)
    assert max(history(out, result.run_id, "sync_probe_diff")) < 1e-4
    # rollouts after the first sync come from the trainer's weights: same log-probs per token
    assert max(history(out, result.run_id, "logprob_gap")[1:]) < 1e-3
    for key in ("entropy", "clip_fraction", "explained_variance", "approx_kl", "kl_coef", "response_length",
                "tokens_per_s", "time_rollout", "time_scoring", "time_training", "time_sync", "value_loss",
                f"reward_{reward_model.name}"):
        assert len(history(out, result.run_id, key)) == 16, key
    assert history(out, result.run_id, "rollout_samples") == [64.0] * 16
    for figure in ("distinct_1", "distinct_2", "repeated_ngrams", "non_alpha", "identical"):  # the rollouts' diversity
        values = history(out, result.run_id, f"diversity_{figure}")
        assert len(values) == 16 and all(0 <= v <= 1 for v in values), (figure, values)
    assert len(history(out, result.run_id, "diversity_mean_length")) == 16
    warned = client_of(out).get_run(result.run_id).data.tags.get("alignray.diversity_warning")
    assert result.warnings == ((warned,) if warned else ())  # at most once, and the driver got it
    policy = download_model(result.model_uri)
    # not only the reward model's score: the share of word tokens itself rises (held-out prompts)
    held_out = [f"Human: Another question, number {i}?\n\nAssistant:" for i in range(48)]
    before, after = word_share(tiny_model, set(words), held_out), word_share(policy, set(words), held_out)
    assert after > before + 0.1, (before, after)


def twelve_heads(pattern_model, folder):
    """A 12-head (MORLAIF) preference model from the pattern reward: head k scores 0.8 + 0.04 k
    times the pattern's score for k < 11, head 11 minus it: a principle that dislikes words."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(pattern_model)
    scales = torch.tensor([0.8 + 0.04 * k for k in range(11)] + [-1.0])
    head = model.score.weight.data[0]
    model.score = torch.nn.Linear(head.numel(), 12, bias=False)
    model.score.weight.data = scales[:, None] * head[None, :]
    model.config.num_labels = 12
    model.config.id2label = {k: f"p{k}" for k in range(12)}
    model.config.label2id = {f"p{k}": k for k in range(12)}
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(pattern_model).save_pretrained(folder)
    return folder


def test_a_12_head_preference_model_through_soft_min_weights_and_clip(tiny_model, pattern_reward, tmp_path):
    """MORLAIF's shape: one preference model with 12 principle heads, combined per sample by
    soft_min with per-principle weights, then clipped. Head 11 dislikes words; its weight -1
    turns it around. Ignoring the weights, soft_min would follow head 11 and the policy would
    lose words; with them, every weighted head likes words, and the share of words rises."""
    reward_model, words = pattern_reward
    heads = twelve_heads(reward_model, tmp_path / "twelve")
    out = tmp_path / "runs"
    clip = 0.4
    result = fit(ppo_config(tiny_model, out, f"reward.models=[{heads}]", "reward.scalarize=soft_min",
                            "reward.params={temperature: 2.0}", f"reward.weights=[{', '.join(['1'] * 11)}, -1]",
                            f"reward.clip={clip}", "ppo.iterations=16", "ppo.kl_target=3", "ppo.kl_horizon=64"))
    per_head = [history(out, result.run_id, f"reward_p{k}") for k in range(12)]
    reward = history(out, result.run_id, "reward")
    assert all(len(h) == 16 for h in per_head) and len(reward) == 16
    for step in range(16):  # the heads are what they were built to be
        assert abs(per_head[11][step] + per_head[0][step] / 0.8) < 1e-3, step
        assert abs(per_head[10][step] - per_head[0][step] * 1.2 / 0.8) < 1e-3, step
    assert max(reward) <= clip + 1e-6 and max(per_head[10]) > clip  # the clip bit
    assert sum(reward[-3:]) / 3 > sum(reward[:3]) / 3 + 0.05, reward
    held_out = [f"Human: Another question, number {i}?\n\nAssistant:" for i in range(48)]
    before = word_share(tiny_model, set(words), held_out)
    after = word_share(download_model(result.model_uri), set(words), held_out)
    assert after > before + 0.1, (before, after)


def test_colocated_and_separate_placements_and_both_weight_transports_give_the_same_curves(tiny_model, pattern_reward, tmp_path):
    reward_model, _ = pattern_reward
    curves, tags = {}, {}
    for placement, transport in (("colocated", "object_store"), ("separate", "collective")):
        out = tmp_path / placement / "runs"
        result = fit(ppo_config(tiny_model, out, f"reward.models=[{reward_model}]", "ppo.iterations=3",
                                f"ppo.placement={placement}", f"sampler.weight_transfer={transport}"))
        tags[placement] = client_of(out).get_run(result.run_id).data.tags
        curves[placement] = {k: history(out, result.run_id, k)
                             for k in ("reward", "kl", "policy_loss", "value_loss", "logprob_gap", "sync_probe_diff")}
    assert tags["colocated"]["placement"] == "colocated" and tags["separate"]["placement"] == "separate"
    assert tags["colocated"]["critic.head_start"] == "the reward head x 1"  # one model, linear, not normalised
    # this 4-CPU test cluster: colocated engines get all 4 CPUs' threads (capped at the cores they may
    # use), the 2 trainer workers 2 each; separate ones their 1 reserved CPU each
    assert (tags["colocated"]["sampler_threads"], tags["colocated"]["trainer_threads"]) == ("4", "2")
    assert (tags["separate"]["sampler_threads"], tags["separate"]["trainer_threads"]) == ("1", "1")
    # Both transports hand vLLM's layerwise reload the same float32 tensors, so the sampler holds the same
    # weights either way. Only thread counts differ, so at most float32 summation order: per-op
    # differences of ~1e-7 that could change a sampled token only if a random draw fell that close to a
    # boundary. Measured here: identical.
    for key, a in curves["colocated"].items():
        b = curves["separate"][key]
        assert len(a) == len(b) == 3 and max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (key, a, b)
    assert max(curves["separate"]["sync_probe_diff"]) < 1e-4  # every gloo broadcast passed the probe


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_exact_resume_after_a_trainer_worker_and_a_sampler_are_killed(algorithm, tiny_model, pattern_reward, tmp_path):
    """SIGKILL, not a graceful stop, of a Ray Train worker in iteration 4 (the last checkpoint is
    iteration 2's) and then of a sampler, with every piece of restored state in play: an
    adaptive KL target, reward normalisation, a cosine learning rate after warm-up, dropout on
    and ZeRO-3. The run restarts its workers by itself (trainer.max_failures) and replaces the
    sampler; every iteration's last logged values equal an uninterrupted run's. PPO, and GRPO (no
    critic), whose short iterations showed that Ray Train may not have recorded a checkpoint
    reported just before the kill: the workers then start over from iteration 0, and the
    samplers, which kept the lost iterations' weights, are reset to the actor's first."""
    from alignray.sampling.pool import SamplerPool

    reward_model, _ = pattern_reward
    model = with_dropout(tiny_model, tmp_path / "dropout-model")
    args = [f"reward.models=[{reward_model}]", f"model.name={model}", "ppo.iterations=6", "ppo.checkpoint_every=2",
            "ppo.kl_target=0.5", "ppo.kl_horizon=64", "reward.normalize=true", "trainer.lr_schedule=cosine",
            "trainer.warmup_steps=2", "trainer.zero_stage=3", "trainer.max_failures=1", f"ppo.algorithm={algorithm}"]
    fit(ppo_config(tiny_model, tmp_path / "a" / "runs", *args, "run_name=straight"))
    out = tmp_path / "b" / "runs"
    pids, killed = [], []

    def own_pool(*pool_args, **kwargs):
        """The run's pool, as fit makes it; its first sampler's PID, from that actor itself."""
        pool = SamplerPool(*pool_args, **kwargs)
        pids.append(pool.health()[0]["pid"])
        return pool

    def logged(key="reward"):
        return last_per_step(out, "ppo", "killed", key)

    def kill_a_sampler():
        os.kill(pids[0], signal.SIGKILL)  # that process only: never another pool's or program's
        killed.append("sampler")

    def kill_a_trainer_worker():
        train_workers()[0].send_signal(signal.SIGKILL)  # this session's own Ray Train worker
        killed.append("trainer")
        when(lambda: len(history_of(out, "killed", "reward")) >= 6, kill_a_sampler)  # iteration 5, after the restart

    killer = when(lambda: pids and 3 in logged() and train_workers(), kill_a_trainer_worker)
    resumed = fit(ppo_config(tiny_model, out, *args, "run_name=killed"), rollout_pool=own_pool)
    killer.join(timeout=5)
    assert killed == ["trainer", "sampler"] and resumed.model_uri is not None
    assert len(history_of(out, "killed", "reward")) > 6  # the iterations after the checkpoint ran twice
    assert logged("sampler_restarts")[6] >= 1
    assert list(logged("rollout_samples").values()) == [64.0] * 6  # none lost or doubled
    for key in ("reward", "kl", "kl_coef", "policy_loss", "entropy") + (("value_loss",) if algorithm == "ppo" else ()):
        a, b = last_per_step(tmp_path / "a" / "runs", "ppo", "straight", key), logged(key)
        assert sorted(a) == sorted(b) == list(range(1, 7)), key
        assert max(abs(a[i] - b[i]) for i in a) < 1e-4, (key, a, b)
    assert len(set(logged("kl_coef").values())) > 1  # the adaptive controller moved (and was restored)


def history_of(out, run_name, key):
    return logged_metrics(out, "ppo", run_name, key)


def test_fitted_reward_weights_are_recorded_used_by_the_workers_and_kept_on_resume(tiny_model, tmp_path, capsys):
    import random

    words = word_tokens(tiny_model)
    models = [make_pattern_reward_model(tmp_path / f"likes-{k}", tiny_model, words[k::2], seed=k, steps=150)
              for k in range(2)]
    tok = AutoTokenizer.from_pretrained(tiny_model)
    rng = random.Random(0)
    pairs = tmp_path / "pairs.jsonl"  # chosen: words principle 0 likes; rejected: words principle 1 likes
    pairs.write_text("".join(json.dumps({
        "prompt": f"Human: Question number {i}, please?\n\nAssistant:",
        "chosen": tok.decode(rng.sample(words[0::2], 8)), "rejected": tok.decode(rng.sample(words[1::2], 8)),
    }) + "\n" for i in range(40)))
    out = tmp_path / "runs"
    extra = (f"reward.models=[{models[0]}, {models[1]}]", f"reward.fit_weights={pairs}", "critic.init=policy",
             "ppo.iterations=2")
    first = fit(ppo_config(tiny_model, out, *extra, "ppo.stop_after_iterations=1"))
    assert first.model_uri is None  # stopped after one iteration, checkpointed
    assert "reward weights fitted on 40 pairs of" in capsys.readouterr().err
    result = fit(ppo_config(tiny_model, out, *extra))  # resumed: the same MLflow run, the weights it recorded
    assert result.run_id == first.run_id and result.model_uri is not None
    assert "reward weights recorded in this run: likes-0" in capsys.readouterr().err
    import mlflow

    run = client_of(out).get_run(result.run_id)
    params, record = run.data.params, mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/fitted_weights.json")
    w = record["weights"]
    assert list(w) == ["likes-0", "likes-1"] and record["pairs"] == 40 and record["l2"] == 1e-3
    assert w["likes-0"] > 0 > w["likes-1"]
    assert params["reward.fitted_weight.likes-0"] == f"{w['likes-0']:.6g}" and params["reward.fit_weights"] == str(pairs)
    # the workers scalarized with the fitted weights (linear): the mean reward is the weighted sum of the means
    reward = history(out, result.run_id, "reward")
    per_principle = [history(out, result.run_id, f"reward_likes-{k}") for k in range(2)]
    assert len(reward) == 2
    for step in range(2):
        expected = w["likes-0"] * per_principle[0][step] + w["likes-1"] * per_principle[1][step]
        assert abs(reward[step] - expected) < 1e-3 * max(1.0, abs(expected)), (step, reward, per_principle, w)


class Endpoint(BaseHTTPRequestHandler):
    """A reward endpoint: two principles (length, share of 'e'), and NaN from its 5th call."""

    calls = 0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Endpoint.calls += 1
        rows = [[len(r) / 40, r.count("e") / max(1, len(r))] for r in body["responses"]]
        if Endpoint.calls > 4:
            rows[0][0] = float("nan")
        payload = json.dumps({"rewards": rows, "principles": ["length", "e_share"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_http_reward_endpoint_and_a_non_finite_reward_stops_the_run(tiny_model, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "runs"
    cfg = ppo_config(tiny_model, out, f"reward.endpoint=http://127.0.0.1:{server.server_port}/score",
                     "critic.init=policy", "ppo.iterations=4", "ppo.checkpoint_every=1", "reward.normalize=true",
                     "reward.weights=[1.0, 2.0]")
    try:
        with pytest.raises(TrainingError, match=r"non-finite reward in the scoring phase of iteration 3.*"
                                                 r"last good checkpoint: .*checkpoint_"):
            fit(cfg)
    finally:
        server.shutdown()
    run = only_run(out, "ppo")
    assert len(history(out, run.info.run_id, "reward_length")) == 2
    assert len(history(out, run.info.run_id, "reward_e_share")) == 2
    assert not client_of(out).search_registered_models()


def test_config_errors_name_the_field(tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="exactly one of reward.models"):
        load_config(None, ["reward.endpoint=http://x", "reward.models=[a]"], PPOConfig)
    with pytest.raises(ConfigError, match="unknown scalarizer 'max'"):
        load_config(None, ["reward.models=[a]", "reward.scalarize=max"], PPOConfig)
    with pytest.raises(TrainingError, match="= 24 responses per iteration must be a multiple of"):
        fit(ppo_config(tiny_model, tmp_path, "reward.models=[a]", "ppo.prompts_per_step=6"))
    with pytest.raises(Exception, match="not a preference model"):
        fit(ppo_config(tiny_model, tmp_path, f"reward.models=[{tiny_model}]"))
