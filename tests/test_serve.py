"""The Serve applications of serving/config.yaml over real HTTP on 127.0.0.1, deployed as a user
deploys them: `alignray serve` (which adapts the config and runs `serve run`, applying it as
`serve deploy` and KubeRay do) against a running cluster, with the bearer token set in the user's
shell (the replicas refuse to start without it, so every test here sees that it reached them).
Then the policy through the official `openai` client, the reward scores, bearer auth, 4xx JSON
errors, concurrent load, and model switches under load (the policy's by rolling its replicas,
the reward's through user_config)."""

import copy
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests
import torch
import yaml
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-token"
TOKEN_ENV = "ALIGNRAY_SERVE_TOKEN"  # serving/config.yaml's
NAME = "alignray-policy"
PROMPTS = ["Human: Hi?\n\nAssistant:", "Human: Tell me about words.\n\nAssistant:"]
RESPONSES = ["word word word", "no."]
CHAT = [{"role": "user", "content": "Tell me about words."}]
MARKER = "MARKER-7f3a9c"  # sent in invalid bodies: it must never come back
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def local_config(port: int, policy: Path, rewards: list[str]) -> dict:
    """serving/config.yaml as `alignray serve --cpu` adapts it, with small limits."""
    from alignray.serve.deploy import adapt, load

    cfg = adapt(load(ROOT / "serving" / "config.yaml"), policy=str(policy), rewards=rewards, cpu=True,
                host="127.0.0.1", port=port)
    apps = {app["name"]: app for app in cfg["applications"]}
    assert {app["args"]["token_env"] for app in apps.values()} == {TOKEN_ENV}
    apps["policy"]["args"].pop("tracking_uri")
    apps["reward"]["deployments"][0]["user_config"].pop("tracking_uri")
    # max_model_len as the shipped config has it (4096): the replica lowers it to the tiny model's 1024
    apps["policy"]["args"].update(max_tokens=64, kvcache_gib=1, max_body_bytes=65536)
    apps["reward"]["args"].update(max_batch=16, max_body_bytes=65536)
    apps["reward"]["deployments"][0]["user_config"]["scalarize"] = "min"
    return cfg


@pytest.fixture(scope="module")
def second_reward_model(tiny_model, tmp_path_factory):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path_factory.mktemp("rewards") / "random-head"
    torch.manual_seed(7)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    model.config.pad_token_id = AutoTokenizer.from_pretrained(tiny_model).pad_token_id
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def served(ray_cluster, tiny_model, pattern_reward, second_reward_model, tmp_path_factory):
    """(base URL, deploy(config), the config deployed first): `alignray serve` runs for the whole
    module with the token in its environment; `deploy` applies another config to the same apps."""
    import ray
    from alignray.serve.deploy import carry_tokens
    from ray import serve

    folder = tmp_path_factory.mktemp("serving")
    port = free_port()
    cfg = local_config(port, tiny_model, [str(pattern_reward[0]), str(second_reward_model)])
    (folder / "first.yaml").write_text(yaml.safe_dump(cfg))
    address = ray.get_runtime_context().gcs_address
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {TOKEN_ENV: TOKEN}
    log = folder / "alignray-serve.log"
    with log.open("w") as out:
        server = subprocess.Popen([Path(sys.executable).with_name("alignray"), "serve", "--config",
                                   str(folder / "first.yaml"), "--cpu", "--address", address],
                                  cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def deploy(config: dict, check: bool = True) -> None:
        path = folder / "config.yaml"  # as `alignray serve` writes it: the token carried to the replicas
        path.write_text(yaml.safe_dump(carry_tokens(config, {TOKEN_ENV: TOKEN})))
        done = subprocess.run([Path(sys.executable).parent / "serve", "run", str(path), "--address", address,
                               "--non-blocking"], capture_output=True, text=True, timeout=300, env=os.environ)
        assert done.returncode == 0 or not check, done.stdout[-2000:] + done.stderr[-3000:]

    url = f"http://127.0.0.1:{port}"

    def ready(app: str) -> bool:
        assert server.poll() is None, f"alignray serve exited; {log}:\n{log.read_text()[-3000:]}"
        return requests.get(f"{url}/{app}/readyz", timeout=10).status_code == 200

    try:
        for app in ("policy", "reward"):
            wait_for(lambda app=app: ready(app), 420, log)
        yield url, deploy, cfg
    finally:  # only the process group this module started
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        serve.shutdown()  # whatever `serve run` left on this worker's cluster


def wait_for(condition, timeout_s: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except requests.RequestException:  # not up yet, or busy loading
            pass
        assert time.monotonic() < deadline, f"not true after {timeout_s} s" + (f"; {log}:\n{log.read_text()[-3000:]}" if log else "")
        time.sleep(1)


def client(url: str, token: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/policy/v1", api_key=token, max_retries=0, timeout=120)


def score(url, body, token=TOKEN, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{url}/reward/v1/score", json=body, headers=headers, timeout=60, **kw)


# --- policy ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_completion_equals_greedy_decoding_of_the_model(served, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    url, _, _ = served
    api = client(url)
    assert [m.id for m in api.models.list().data] == [NAME]
    reply = api.completions.create(model=NAME, prompt=PROMPTS[1], max_tokens=8, temperature=0)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    ids = tok(PROMPTS[1], return_tensors="pt").input_ids
    expected = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=tok.eos_token_id)[0, ids.shape[1]:]
    assert reply.choices[0].text == tok.decode(expected, skip_special_tokens=True)
    assert reply.usage.prompt_tokens == ids.shape[1] and 1 <= reply.usage.completion_tokens <= 8
    assert reply.choices[0].finish_reason in ("stop", "length")


@pytest.mark.slow
def test_streams_carry_the_same_text_as_whole_replies(served):
    url, _, _ = served
    api = client(url)
    whole = api.chat.completions.create(model=NAME, messages=CHAT, max_tokens=12, temperature=0)
    chunks = list(api.chat.completions.create(model=NAME, messages=CHAT, max_tokens=12, temperature=0, stream=True,
                                              stream_options={"include_usage": True}))
    choice_chunks = [c for c in chunks if c.choices]
    assert choice_chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in choice_chunks) == whole.choices[0].message.content
    assert choice_chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    text = api.completions.create(model=NAME, prompt=PROMPTS[0], max_tokens=12, temperature=0).choices[0].text
    streamed = api.completions.create(model=NAME, prompt=PROMPTS[0], max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == text


@pytest.mark.slow
def test_echoed_and_sampled_logprobs_are_the_models(served, tiny_model):
    """Completions with echo and logprobs: every token's log-prob equals transformers' float32
    log-softmax of the same model; chat top_logprobs: sorted, the greedy token first, and a
    stream carries the same log-probs as the whole reply."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    url, _, _ = served
    api = client(url)
    reply = api.completions.create(model=NAME, prompt=PROMPTS[1], max_tokens=4, temperature=0, echo=True, logprobs=2)
    choice = reply.choices[0]
    assert choice.text.startswith(PROMPTS[1])
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt_ids = tok(PROMPTS[1]).input_ids
    lp = choice.logprobs
    assert len(lp.tokens) == len(prompt_ids) + reply.usage.completion_tokens and lp.token_logprobs[0] is None
    # vLLM's: the 2 likeliest and the sampled token, keyed by text (tokens that decode alike share a key)
    assert lp.top_logprobs[0] is None and all(1 <= len(t) <= 3 for t in lp.top_logprobs[1:])
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    greedy = model.generate(torch.tensor([prompt_ids]), max_new_tokens=4, do_sample=False, eos_token_id=tok.eos_token_id)
    ids = greedy[0, : len(lp.tokens)].tolist()  # the prompt and what the server sampled (greedy, as here)
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    expected = [logp[j - 1, ids[j]].item() for j in range(1, len(ids))]
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-3)

    kwargs = dict(model=NAME, messages=CHAT, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    whole = api.chat.completions.create(**kwargs)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens
    for position in content:
        values = [t.logprob for t in position.top_logprobs]
        assert len(values) == 3 and values == sorted(values, reverse=True)
        assert (position.token, position.logprob) == (position.top_logprobs[0].token, values[0])  # greedy
    streamed = [c.choices[0].logprobs for c in api.chat.completions.create(**kwargs, stream=True) if c.choices]
    assert [p.logprob for s in streamed if s for p in s.content] == pytest.approx([p.logprob for p in content], abs=1e-4)
    no_logprobs = api.chat.completions.create(model=NAME, messages=CHAT, max_tokens=2, temperature=0)
    assert no_logprobs.choices[0].logprobs is None


@pytest.mark.slow
def test_several_prompts_and_samples_each(served):
    url, _, _ = served
    reply = client(url).completions.create(model=NAME, prompt=PROMPTS, n=3, max_tokens=6, temperature=1.0, seed=1)
    assert [c.index for c in reply.choices] == list(range(6))
    assert all(c.finish_reason in ("stop", "length") for c in reply.choices)


@pytest.mark.slow
def test_tokenize_gives_the_models_token_ids_and_detokenize_undoes_it(served, tiny_model):
    """vLLM's /tokenize and /detokenize, which Ray Serve LLM 2.60 alone answers with 400 on vLLM 0.32."""
    from transformers import AutoTokenizer

    url, _, _ = served
    headers = {"Authorization": f"Bearer {TOKEN}"}
    reply = requests.post(f"{url}/policy/tokenize", json={"model": NAME, "prompt": PROMPTS[1]}, headers=headers, timeout=60)
    assert reply.status_code == 200, reply.text
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = tok(PROMPTS[1]).input_ids
    assert reply.json()["tokens"] == ids and reply.json()["count"] == len(ids)
    back = requests.post(f"{url}/policy/detokenize", json={"model": NAME, "tokens": ids}, headers=headers, timeout=60)
    assert back.status_code == 200 and PROMPTS[1] in back.json()["prompt"], back.text
    assert requests.post(f"{url}/policy/tokenize", json={"model": NAME, "prompt": "x"}, timeout=60).status_code == 401


@pytest.mark.slow
@pytest.mark.parametrize(
    "body, status",
    [
        ({"model": NAME, "prompt": "Hi", "max_tokens": 65}, 400),
        ({"model": "other-model", "prompt": "Hi"}, 404),
        ({"model": NAME}, 400),
        ({"model": NAME, "prompt": "Hi", "temperature": -1}, 400),
        ({"model": NAME, "prompt": "word " * 1100, "max_tokens": 8}, 400),
        ({"model": NAME, "prompt": "x" * 70000}, 413),
        ({"model": NAME, "prompt": ["Hi"] * 65, "max_tokens": 1}, 400),
        ({"model": NAME, "prompt": ["Hi"] * 9, "n": 8, "max_tokens": 1}, 400),
    ],
    ids=["max-tokens-above-cap", "unknown-model", "missing-prompt", "bad-temperature",
         "prompt-too-long", "body-too-large", "too-many-prompts", "prompts-times-n"],
)
def test_bad_policy_requests_get_4xx_json_errors(served, body, status):
    url, _, _ = served
    reply = requests.post(f"{url}/policy/v1/completions", json=body, timeout=60,
                          headers={"Authorization": f"Bearer {TOKEN}"})
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["message"] and TOKEN not in reply.text
    if body.get("prompt") == "word " * 1100:  # the context is the model's (1024), not the config's 4096
        assert "1024" in reply.json()["error"]["message"]


def chunks(total: int, size: int = 8192):
    """A body sent with Transfer-Encoding: chunked (no Content-Length)."""
    for start in range(0, total, size):
        yield b"x" * min(size, total - start)


@pytest.mark.slow
@pytest.mark.parametrize("route", ["/policy/v1/completions", "/reward/v1/score"])
def test_the_token_is_checked_before_the_body_and_chunked_bodies_are_counted(served, route):
    url, _, _ = served
    bad_body = {"model": NAME, "no-such-field": "SECRET-SHAPE"}
    for headers in ({}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}):  # no Bearer scheme
        reply = requests.post(f"{url}{route}", json=bad_body, headers=headers, timeout=30)
        assert reply.status_code == 401 and "SECRET-SHAPE" not in reply.text and "no-such-field" not in reply.text
    started = time.monotonic()
    reply = requests.post(f"{url}{route}", data=chunks(10 << 20), timeout=120,
                          headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert reply.status_code == 413 and "65536 bytes" in reply.text, reply.text[:300]
    assert time.monotonic() - started < 30
    models = requests.get(f"{url}/policy/v1/models", headers={"Authorization": f"bearer {TOKEN}"}, timeout=30)
    assert models.status_code == 200  # the scheme is case-insensitive (RFC 7235)


@pytest.mark.slow
def test_policy_auth_and_invalid_json(served):
    url, _, _ = served
    with pytest.raises(openai.AuthenticationError):
        client(url, "wrong").completions.create(model=NAME, prompt="Hi", max_tokens=2)
    missing = requests.post(f"{url}/policy/v1/completions", json={"model": NAME, "prompt": "Hi"}, timeout=30)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.NotFoundError):
        client(url).chat.completions.create(model="gpt-4", messages=CHAT)
    reply = requests.post(f"{url}/policy/v1/chat/completions", data=b"{not json", timeout=30,
                          headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert reply.status_code == 400 and "error" in reply.json()
    assert requests.get(f"{url}/policy/healthz", timeout=10).json() == {"status": "live"}


@pytest.mark.slow
def test_the_max_tokens_cap_bounds_requests_that_leave_it_out(served):
    """The cap (64 here) bounds every completion: a chat request without a length (vLLM's default is
    the rest of the 1024-token context) or with null runs to 64 tokens (ignore_eos), not past it."""
    url, _, _ = served
    chat = {"model": NAME, "messages": CHAT, "temperature": 0, "ignore_eos": True}
    for extra in ({}, {"max_tokens": None}, {"max_completion_tokens": None}):
        reply = requests.post(f"{url}/policy/v1/chat/completions", json=chat | extra, headers=AUTH, timeout=120)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 64, (extra, reply.text[:300])
    # max_completion_tokens wins over max_tokens (vLLM's precedence), and is the one checked
    reply = requests.post(f"{url}/policy/v1/chat/completions", headers=AUTH, timeout=120,
                          json=chat | {"max_completion_tokens": 8, "max_tokens": 65})
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 8, reply.text[:300]
    for extra, field in (({"max_completion_tokens": 65}, "max_completion_tokens"), ({"max_tokens": 65}, "max_tokens")):
        reply = requests.post(f"{url}/policy/v1/chat/completions", json=chat | extra, headers=AUTH, timeout=60)
        assert reply.status_code == 400 and reply.json()["error"]["message"] == f"{field} 65 is above this server's cap of 64"
    reply = requests.post(f"{url}/policy/v1/completions", headers=AUTH, timeout=120,
                          json={"model": NAME, "prompt": PROMPTS[0], "max_tokens": None, "ignore_eos": True})
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] <= 64, reply.text[:300]


@pytest.mark.slow
@pytest.mark.parametrize("route, body, field", [
    ("/v1/completions", {"model": NAME, "prompt": "Hi", "max_tokens": MARKER}, "max_tokens"),
    ("/v1/chat/completions", {"model": NAME, "messages": CHAT, "temperature": MARKER}, "temperature"),
    ("/v1/chat/completions", {"model": NAME, "messages": MARKER}, "messages"),
], ids=["completions-max-tokens", "chat-temperature", "chat-messages"])
def test_invalid_policy_bodies_name_the_field_and_never_echo_the_request(served, route, body, field):
    url, _, _ = served
    reply = requests.post(f"{url}/policy{route}", json=body, headers=AUTH, timeout=60)
    assert reply.status_code == 400 and reply.json()["error"]["type"] == "invalid_request_error", reply.text
    assert field in reply.json()["error"]["message"] and MARKER not in reply.text, reply.text


@pytest.mark.slow
def test_readyz_shows_details_only_with_the_token_and_only_exact_paths_are_open(served, tiny_model):
    url, _, _ = served
    for app in ("policy", "reward"):
        for headers in ({}, {"Authorization": "Bearer not-the-token"}):
            reply = requests.get(f"{url}/{app}/readyz", headers=headers, timeout=30)
            assert reply.status_code == 200 and reply.json() == {"ready": True}, reply.text
    policy = requests.get(f"{url}/policy/readyz", headers=AUTH, timeout=30).json()
    assert policy == {"ready": True, "model": NAME, "source": str(tiny_model), "last_load_error": None}
    reward = requests.get(f"{url}/reward/readyz", headers=AUTH, timeout=30).json()
    assert len(reward["principles"]) == 2 and reward["last_load_error"] is None
    # a route that only ends like an open one needs the token
    assert requests.get(f"{url}/policy/v1/models/healthz", timeout=30).status_code == 401
    assert requests.get(f"{url}/policy/v1/models/{NAME}/readyz", timeout=30).status_code == 401
    assert requests.post(f"{url}/reward/v1/score/healthz", json={}, timeout=30).status_code == 401
    missing = requests.get(f"{url}/reward/no-such-route", headers=AUTH, timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


@pytest.mark.slow
def test_64_policy_requests_at_concurrency_8_each_get_the_greedy_reply_of_their_own_prompt(served):
    """Batched together, replies must not mix: each equals its prompt's greedy reply asked alone."""
    url, _, _ = served
    api = client(url)
    prompts = [f"Question {i}: what is {i} plus {i}?" for i in range(16)]

    def ask(prompt):
        return api.completions.create(model=NAME, prompt=prompt, max_tokens=8, temperature=0).choices[0].text

    alone = [ask(p) for p in prompts]
    assert len(set(alone)) > 4  # the prompts get different replies, so a mix-up would show
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, prompts * 4))
    assert together == alone * 4


# --- reward ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_scores_are_the_local_models_and_scalar_is_the_scalarization(served):
    from alignray.rewards.scorers import LocalRewardModels

    url, _, cfg = served
    reply = score(url, {"prompts": PROMPTS, "responses": RESPONSES})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    local = LocalRewardModels(cfg["applications"][1]["deployments"][0]["user_config"]["models"])
    expected = local(PROMPTS, RESPONSES)
    assert body["principles"] == local.principles and len(body["principles"]) == 2
    assert torch.allclose(torch.tensor(body["rewards"]), expected, atol=1e-4)
    assert torch.allclose(torch.tensor(body["scalar"]), expected.min(dim=1).values, atol=1e-4)
    chat = score(url, {"messages": [CHAT], "responses": ["word"]})
    assert chat.status_code == 200 and len(chat.json()["rewards"][0]) == 2
    assert requests.get(f"{url}/reward/healthz", timeout=10).json() == {"status": "live"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "kwargs, status",
    [
        ({"body": {"prompts": PROMPTS, "responses": RESPONSES}, "token": None}, 401),
        ({"body": {"prompts": PROMPTS, "responses": RESPONSES}, "token": "wrong"}, 401),
        ({"body": {"prompts": PROMPTS}}, 400),
        ({"body": {"prompts": PROMPTS, "responses": ["one"]}}, 400),
        ({"body": {"prompts": PROMPTS, "messages": [[]], "responses": RESPONSES}}, 400),
        ({"body": {"prompts": PROMPTS, "responses": RESPONSES, "temperature": MARKER}}, 400),
        ({"body": {"prompts": ["p"] * 17, "responses": ["r"] * 17}}, 413),
        ({"body": {"messages": [[{"content": "Hi"}]], "responses": ["r"]}}, 400),
        ({"body": {"messages": [[{"role": MARKER, "content": "Hi"}]], "responses": ["r"]}}, 400),
        ({"body": {"messages": [[]], "responses": ["r"]}}, 400),
    ],
    ids=["no-token", "wrong-token", "missing-responses", "count-mismatch", "both-prompt-forms", "unknown-field",
         "too-many", "message-without-role", "unknown-role", "empty-conversation"],
)
def test_bad_reward_requests_get_4xx_json_errors(served, kwargs, status):
    url, _, _ = served
    reply = score(url, kwargs["body"], token=kwargs.get("token", TOKEN))
    error = reply.json()["error"]  # the policy's shape
    assert reply.status_code == status == error["code"] and error["message"], reply.text
    assert error["type"] == {400: "invalid_request_error", 401: "authentication_error", 413: "request_too_large"}[status]
    assert TOKEN not in reply.text and MARKER not in reply.text
    for value in kwargs["body"].get("prompts", []) + kwargs["body"].get("responses", []):
        assert f'"{value}"' not in reply.text  # the problems are named, the request is not echoed


@pytest.mark.slow
def test_ppo_reward_client_authenticates_to_the_served_reward_app(served, monkeypatch):
    """PPO's `reward.endpoint` is the served app: the client sends the token read from the variable
    `reward.endpoint_token_env` names, and gets the local models' scores."""
    from alignray.config import RewardConfig
    from alignray.rewards.scorers import HttpRewardModel, LocalRewardModels, RewardError

    url, _, cfg = served
    reward = RewardConfig(endpoint=f"{url}/reward/v1/score", endpoint_token_env="ALIGNRAY_TEST_REWARD_TOKEN",
                          endpoint_retries=0)
    monkeypatch.delenv("ALIGNRAY_TEST_REWARD_TOKEN", raising=False)
    with pytest.raises(RewardError, match="reward.endpoint_token_env: the environment variable ALIGNRAY_TEST_REWARD_TOKEN"):
        HttpRewardModel.of(reward)
    monkeypatch.setenv("ALIGNRAY_TEST_REWARD_TOKEN", "not-the-token-42")
    with pytest.raises(RewardError, match="answered HTTP 401") as refused:
        HttpRewardModel.of(reward)(PROMPTS, RESPONSES)
    assert "not-the-token-42" not in str(refused.value)
    monkeypatch.setenv("ALIGNRAY_TEST_REWARD_TOKEN", TOKEN)
    scorer = HttpRewardModel.of(reward)
    local = LocalRewardModels(cfg["applications"][1]["deployments"][0]["user_config"]["models"])
    assert torch.allclose(scorer(PROMPTS, RESPONSES), local(PROMPTS, RESPONSES), atol=1e-4)
    assert scorer.principles == local.principles


@pytest.mark.slow
def test_64_reward_requests_at_concurrency_8_all_succeed(served):
    url, _, _ = served
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: score(url, {"prompts": [PROMPTS[i % 2]], "responses": [f"word {i}"]}), range(64)))
    assert [r.status_code for r in replies] == [200] * 64


# --- model switches through user_config ----------------------------------------------------------


class Load:
    """Requests sent back to back from 4 threads until stopped; every status is kept."""

    def __init__(self, send):
        self.send, self.statuses, self.stop = send, [], threading.Event()
        self.threads = [threading.Thread(target=self._loop) for _ in range(4)]

    def _loop(self):
        while not self.stop.is_set():
            try:
                self.statuses.append(self.send())
            except Exception as exc:  # a connection error is a failure too
                self.statuses.append(repr(exc))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join()


@pytest.mark.slow
def test_reward_switches_models_under_load_and_keeps_them_when_a_load_fails(served, tmp_path):
    url, deploy, cfg = served
    readyz = lambda: requests.get(f"{url}/reward/readyz", headers=AUTH, timeout=10).json()  # noqa: E731
    send = lambda: score(url, {"prompts": PROMPTS, "responses": RESPONSES}).status_code  # noqa: E731
    models = cfg["applications"][1]["deployments"][0]["user_config"]["models"]
    switched = copy.deepcopy(cfg)
    switched["applications"][1]["deployments"][0]["user_config"]["models"] = models[:1]
    with Load(send) as load:
        deploy(switched)
        wait_for(lambda: len(readyz()["principles"]) == 1, 180)
    assert load.statuses and set(load.statuses) == {200}, load.statuses

    broken = copy.deepcopy(cfg)
    broken["applications"][1]["deployments"][0]["user_config"]["models"] = [str(tmp_path / "missing")]
    with Load(send) as load:
        deploy(broken)
        wait_for(lambda: readyz()["last_load_error"] is not None, 180)
    assert len(readyz()["principles"]) == 1 and set(load.statuses) == {200}
    deploy(cfg)
    wait_for(lambda: len(readyz()["principles"]) == 2, 180)


@pytest.mark.slow
def test_policy_switches_model_under_load_and_keeps_it_when_a_load_fails(served, tmp_path):
    from alignray.models.tiny import make_tiny_llama

    url, deploy, cfg = served
    new = make_tiny_llama(tmp_path / "policy-v2", seed=3)
    readyz = lambda: requests.get(f"{url}/policy/readyz", headers=AUTH, timeout=10).json()  # noqa: E731
    greedy = lambda: client(url).completions.create(  # noqa: E731
        model=NAME, prompt=PROMPTS[1], max_tokens=8, temperature=0).choices[0].text
    before = greedy()
    def send():
        reply = requests.post(f"{url}/policy/v1/completions", timeout=120, headers={"Authorization": f"Bearer {TOKEN}"},
                              json={"model": NAME, "prompt": "Hello", "max_tokens": 24, "temperature": 1.0})
        return reply.status_code if reply.ok else reply.text

    switched = copy.deepcopy(cfg)
    switched["applications"][0]["args"]["model"] = str(new)
    with Load(send) as load:  # the replicas roll; the old ones serve until the new ones are up
        deploy(switched)
        wait_for(lambda: readyz()["source"] == str(new) and greedy() != before, 300)
        time.sleep(2)
    assert load.statuses and set(load.statuses) == {200}, set(load.statuses)

    broken = copy.deepcopy(switched)
    broken["applications"][0]["args"]["model"] = str(tmp_path / "missing")
    with Load(send) as load:
        deploy(broken, check=False)  # the app's build fails: nothing is rolled
        wait_for(lambda: readyz()["last_load_error"] is not None, 180)
    state = readyz()
    assert state["ready"] and state["source"] == str(new) and "missing" in state["last_load_error"]
    assert set(load.statuses) == {200}, load.statuses
    # the last test on `served` (the module's teardown stops Serve): no rolling back to the first model


def test_alignray_serve_writes_the_adapted_config(tmp_path):
    from alignray.cli import main
    from ray.serve.schema import ServeDeploySchema

    out = tmp_path / "serve.yaml"
    assert main(["serve", "--config", str(ROOT / "serving" / "config.yaml"), "--cpu", "--policy", "models:/p@champion",
                 "--reward", "a", "--reward", "b", "--port", "9001", "--tracking-uri", "sqlite:///x.db",
                 "--write", str(out)]) == 0
    schema = ServeDeploySchema.model_validate(yaml.safe_load(out.read_text()))
    policy, reward = schema.applications[0].args, schema.applications[1].deployments[0]
    assert schema.http_options.port == 9001 and policy["model"] == "models:/p@champion"
    assert policy["tracking_uri"] == "sqlite:///x.db" and policy["accelerator"] == "cpu"
    assert policy["deployment"] == {"max_ongoing_requests": 64, "num_replicas": 1}
    assert reward.user_config == {"models": ["a", "b"], "scalarize": "linear", "tracking_uri": "sqlite:///x.db"}
    assert reward.ray_actor_options.num_gpus == 0 and reward.num_replicas == 1
    assert main(["serve", "--config", str(tmp_path / "missing.yaml")]) == 2
