"""The vLLM sampler actor and pool on a real local Ray, against transformers on the same weights."""

from __future__ import annotations

import threading
import time

import pytest
import ray
import torch
from alignray.sampling.pool import SamplerPool, SamplerPoolError, WeightSyncError
from alignray.sampling.transport import compact
from alignray.sampling.types import Probe, SamplingSpec
from transformers import AutoModelForCausalLM, AutoTokenizer

PROMPTS = ["Human: How do I bake bread?\n\nAssistant:", "Human: Tell me a story.\n\nAssistant:"]
CONTINUATIONS = [" Mix flour, water and yeast.", " Once upon a time there was a fox."]


def hf_token_logprobs(model, tokenizer, prompt: str, continuation: str) -> list[float]:
    p_ids = tokenizer(prompt).input_ids
    c_ids = tokenizer(continuation, add_special_tokens=False).input_ids
    ids = torch.tensor([p_ids + c_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    return [logp[len(p_ids) + j - 1, t].item() for j, t in enumerate(c_ids)]


@pytest.fixture(scope="module")
def pool(tiny_model, sampler_cfg):
    with SamplerPool(tiny_model, sampler_cfg, dtype="float32") as p:  # exact against transformers
        yield p


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_generate_respects_spec(pool):
    spec = SamplingSpec(n=3, temperature=1.0, max_tokens=8, seed=7, logprobs=0)
    out = pool.generate(PROMPTS, spec)
    assert [len(c) for c in out] == [3, 3]
    for completions in out:
        for c in completions:
            assert 1 <= len(c.token_ids) <= 8
            assert len(c.logprobs) == len(c.token_ids)
            assert c.cumulative_logprob == pytest.approx(sum(c.logprobs), abs=1e-3)
    assert pool.generate(PROMPTS, spec) == out  # seeded: the same samples again
    greedy = pool.generate(PROMPTS, SamplingSpec(temperature=0.0, max_tokens=8))
    assert greedy == pool.generate(PROMPTS, SamplingSpec(temperature=0.0, max_tokens=8))


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_score_matches_transformers_then_follows_new_weights(pool, tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)

    def check():
        scores = pool.score(PROMPTS, CONTINUATIONS)
        for score, prompt, cont in zip(scores, PROMPTS, CONTINUATIONS):
            ref = hf_token_logprobs(model, tokenizer, prompt, cont)
            assert len(score.token_logprobs) == len(ref) > 3
            assert max(abs(a - b) for a, b in zip(score.token_logprobs, ref)) < 1e-4
            assert score.total == pytest.approx(sum(ref), abs=1e-3)
        return scores

    before = check()
    torch.manual_seed(1)
    perturbed = {k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}
    stale = Probe(PROMPTS[0], CONTINUATIONS[0], tuple(hf_token_logprobs(model, tokenizer, PROMPTS[0], CONTINUATIONS[0])))
    model.load_state_dict(perturbed)
    fresh = Probe(PROMPTS[0], CONTINUATIONS[0], tuple(hf_token_logprobs(model, tokenizer, PROMPTS[0], CONTINUATIONS[0])))
    assert pool.update_weights(perturbed, probe=fresh) == 1
    after = check()
    with pytest.raises(WeightSyncError, match="does not reproduce the trainer's log-probs"):
        pool.update_weights(perturbed, probe=stale)  # a probe made with other weights fails
    assert abs(after[0].total - before[0].total) > 1e-2  # the weights really changed
    assert pool.health()[0]["weights_version"] == 2


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_model_of_the_same_architecture_is_loaded_into_the_running_engines(tiny_model, sampler_cfg, tmp_path):
    from alignray.models.tiny import make_tiny_llama

    other = make_tiny_llama(tmp_path / "other", seed=3)  # the same architecture and tokenizer, other weights
    spec = SamplingSpec(temperature=0.0, max_tokens=8, logprobs=0)
    with SamplerPool(other, sampler_cfg, dtype="float32") as fresh:
        want = fresh.generate(PROMPTS, spec), fresh.score(PROMPTS, CONTINUATIONS)
    with SamplerPool(tiny_model, sampler_cfg, dtype="float32", cache_dir=tmp_path / "cache") as pool:
        first = pool.generate(PROMPTS, spec)
        pid = pool.health()[0]["pid"]
        assert pool.switch_model(other)
        got = pool.generate(PROMPTS, spec), pool.score(PROMPTS, CONTINUATIONS)
        assert [[c.token_ids for c in cs] for cs in got[0]] == [[c.token_ids for c in cs] for cs in want[0]] != \
               [[c.token_ids for c in cs] for cs in first]
        for a, b in zip(got[1], want[1]):
            assert max(abs(x - y) for x, y in zip(a.token_logprobs, b.token_logprobs, strict=True)) < 1e-5
        [health] = pool.health()
        assert health["pid"] == pid and health["model"] == str(other)  # the same engine, no new one
        assert pool.switch_model(other)  # the model it holds: nothing to load
        assert pool.switch_model(tiny_model) and pool.generate(PROMPTS, spec) == first  # and back
        pool.update_weights(AutoModelForCausalLM.from_pretrained(other).state_dict())
        assert not pool.switch_model(other) and pool.model_path == str(tiny_model)  # updated weights stay


def test_models_are_interchangeable_when_only_weights_and_save_details_differ(tiny_model, tmp_path):
    import json
    import shutil

    from alignray.sampling.pool import interchangeable

    def changed(name: str, edit) -> object:
        folder = tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(tiny_model, folder)
        path = folder / name
        path.write_text(edit(path.read_text()))
        return folder

    def keyed(key, value):
        return lambda text: json.dumps({**json.loads(text), key: value})

    assert interchangeable(tiny_model, changed("tokenizer_config.json", keyed("is_local", True)))
    assert interchangeable(tiny_model, changed("config.json", keyed("dtype", "bfloat16")))
    assert not interchangeable(tiny_model, changed("config.json", keyed("num_hidden_layers", 1)))
    assert not interchangeable(tiny_model, changed("generation_config.json", keyed("eos_token_id", 5)))
    assert not interchangeable(tiny_model, changed("chat_template.jinja", lambda t: t + " "))


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_bf16_sampler_follows_new_weights_and_its_probe_check_catches_stale_ones(tiny_model, sampler_cfg):
    from alignray.train.ppo_loop import PROBE_TOLERANCE

    tolerance = PROBE_TOLERANCE["bfloat16"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)

    def probe(m):
        return Probe(PROMPTS[1], CONTINUATIONS[1], tuple(hf_token_logprobs(m, tokenizer, PROMPTS[1], CONTINUATIONS[1])), tolerance)

    with SamplerPool(tiny_model, sampler_cfg, dtype="bfloat16") as bf16:
        assert bf16.dtype == "bfloat16" and bf16.health()[0]["dtype"] == "bfloat16"
        stale = probe(model)
        torch.manual_seed(2)
        new = {k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}  # bf16 tensors
        model.load_state_dict(new)
        bf16.update_weights(new, probe=probe(model))
        assert bf16.last_probe_diff < tolerance
        with pytest.raises(WeightSyncError, match="mean difference"):
            bf16.update_weights(new, probe=stale)  # a probe made with the old weights fails (measured: 0.57)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_update_weights_rejects_wrong_tensors_and_keeps_serving(pool):
    bad = {"model.embed_tokens.weight": torch.zeros(3, 3)}
    with pytest.raises(WeightSyncError, match="missing tensors|wrong shapes"):
        pool.update_weights(bad)
    assert len(pool.generate(PROMPTS[:1], SamplingSpec(max_tokens=4))) == 1


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_pool_survives_an_actor_killed_mid_batch(tiny_model, sampler_cfg):
    prompts = [f"Human: Question number {i}?\n\nAssistant:" for i in range(120)]
    spec = SamplingSpec(n=2, temperature=1.0, max_tokens=32, seed=11)
    cfg = sampler_cfg.model_copy(update={"num_samplers": 2, "prompts_per_request": 2})
    with SamplerPool(tiny_model, cfg) as pool:
        expected = pool.generate(prompts, spec)
        victim = pool.actors[0]
        started = pool.requests_done

        def kill_soon():  # once the second batch is under way
            while pool.requests_done < started + 2:
                time.sleep(0.01)
            ray.kill(victim, no_restart=True)

        killer = threading.Thread(target=kill_soon)
        killer.start()
        got = pool.generate(prompts, spec)
        killer.join()
        assert pool.restarts == 1
        assert pool.actors[0] != victim
    assert got == expected  # every prompt answered once, in order, none lost or duplicated


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_weight_sync_deadline_raises_then_pool_recovers(tiny_model, sampler_cfg):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with SamplerPool(tiny_model, sampler_cfg.model_copy()) as pool:
        pool.cfg.weight_sync_timeout_s = 0.001  # no sampler can load weights that fast
        with pytest.raises(WeightSyncError, match="did not load weights v1 within"):
            pool.update_weights(model.state_dict())
        pool.cfg.weight_sync_timeout_s = 120
        out = pool.generate(PROMPTS, SamplingSpec(max_tokens=4, seed=0))
        assert len(out) == 2 and pool.restarts == 1
        assert pool.health()[0]["weights_version"] == 1  # the replacement got the new weights


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_cached_pool_answers_repeated_requests_from_its_cache(tiny_model, sampler_cfg, tmp_path):
    spec = SamplingSpec(max_tokens=6, seed=3, logprobs=0)
    prompts = PROMPTS * 3  # two requests of 4 prompts
    with SamplerPool(tiny_model, sampler_cfg, cache_dir=tmp_path) as first:
        expected, scores = first.generate(prompts, spec), first.score(PROMPTS, CONTINUATIONS)
        assert first.requests_done == 3
    [cache] = tmp_path.glob("*.jsonl")
    with cache.open("a") as fh:
        fh.write('{"key": "a line cut sh')  # as a kill leaves it
    with SamplerPool(tiny_model, sampler_cfg, cache_dir=tmp_path) as again:
        assert again.generate(prompts, spec) == expected and again.score(PROMPTS, CONTINUATIONS) == scores
        assert again.requests_done == 0  # all from the cache
        again.generate(prompts, SamplingSpec(max_tokens=6))  # unseeded: sampled anew
        assert again.requests_done == 2
        again.update_weights(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).state_dict())
        again.generate(prompts, spec)  # new weights: sampled anew
        assert again.requests_done == 4


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_gpu_samplers_that_cannot_be_placed_fail_clearly(tiny_model, sampler_cfg):
    cfg = sampler_cfg.model_copy(update={"gpus_per_sampler": 1.0})
    with pytest.raises(SamplerPoolError, match="1.0 free CPUs and 1.0 GPUs per sampler"):
        SamplerPool(tiny_model, cfg, startup_timeout_s=5)  # this cluster has no GPU


def test_weights_that_view_one_flat_buffer_are_sent_compactly():
    import pickle

    flat = torch.arange(1_000_000, dtype=torch.float32)  # like a ZeRO-1/2 flat parameter buffer
    state = {f"w{i}": flat[i * 100 : (i + 1) * 100].view(10, 10) for i in range(20)}
    sent = compact(state)
    assert all(torch.equal(sent[k], state[k]) for k in state)
    assert len(pickle.dumps(sent)) < 2 * 20 * 100 * 4 + 10_000  # not 20 copies of the 4 MB buffer


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_rlaif_labels_from_the_real_engine_flip_with_the_order(pool, tiny_model):
    """label(x, y) = 1 - label(y, x): both orders are asked and averaged, so the labeller's
    position bias cancels, and nothing but the order of the pair may change the label."""
    from alignray.feedback.rlaif import Comparison, label
    from alignray.sampling.clients import LocalModel

    pairs = [Comparison(PROMPTS[0], "Which response is more helpful?", "Mix flour and water.", "I cannot help."),
             Comparison(PROMPTS[1], "Which response is less harmful?", "Once upon a time.", "Go away.")]
    swapped = [Comparison(c.conversation, c.instruction, c.second, c.first) for c in pairs]
    choose = LocalModel(pool, tiny_model).option_logprobs
    forward, backward = label(choose, pairs), label(choose, swapped)
    for p, q in zip(forward, backward):
        assert p + q == pytest.approx(1.0, abs=1e-4)
    assert max(abs(p - 0.5) for p in forward) > 1e-3  # the random model does tell them apart


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_sample_pairs_resamples_empty_outputs_from_the_real_engine(pool):
    """vLLM cuts an output before the first of its stop strings, so an output that starts with
    one is empty: with the space and the commonest letters as stop strings, about half of them
    here. Empty sides are sampled again with a new seed; a plan whose side stays empty is dropped."""
    from alignray.data.conversation import Conversation
    from alignray.feedback import rlcd
    from alignray.feedback.plans import request_seed, sample_pairs
    from alignray.principles import load_principles

    convs = [Conversation.from_question(f"Question {k}: how do I bake bread?", "transcript", str(k)) for k in range(12)]
    plans = rlcd.plan(convs, load_principles("harmlessness"), 0, None)
    batches = []

    def generate(prompts, specs, label):
        batches.append(len(prompts))
        return pool.generate(prompts, specs)

    stop = tuple(" etaoinshrdlu")
    base = SamplingSpec(temperature=1.0, max_tokens=4, stop=stop)
    done, dropped = sample_pairs(generate, plans, base, seed=3, max_retries=2)
    assert batches[0] == 24 and len(batches) == 3 and batches[0] > batches[1] > batches[2] > 0
    assert 0 < len(dropped) < len(plans)
    assert {i for i in range(len(plans)) if (i, 0) not in done or (i, 1) not in done} == dropped
    for (i, side), (text, seed, attempts, truncated) in done.items():
        assert text and seed == request_seed(3, i, side, attempts - 1)
        prompt = (plans[i].prompts.positive, plans[i].prompts.negative)[side]
        [[again]] = pool.generate([prompt], [SamplingSpec(temperature=1.0, max_tokens=4, stop=stop, seed=seed)])
        assert again.text.strip() == text  # the kept output is the engine's sample for that seed
        assert truncated is (again.finish_reason == "length")  # no stop string: cut off at max_tokens=4
    assert 0 < sum(s.truncated for s in done.values()) < len(done)
