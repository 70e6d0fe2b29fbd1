"""The reward-model Serve application over real HTTP on 127.0.0.1: scores equal the local
models', bearer auth, 4xx JSON errors, concurrent load; serving/config.yaml validates and imports."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch
from conftest import free_port

TOKEN = "s3cret-token"
PROMPTS = ["Human: Hi?\n\nAssistant:", "Human: Tell me about words.\n\nAssistant:"]
RESPONSES = ["word word word", "no."]


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
def reward_app(ray_cluster, pattern_reward, second_reward_model, tmp_path_factory):
    from alignray.serve.reward import RewardServer
    from ray import serve

    token_file = tmp_path_factory.mktemp("secret") / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    models = [str(pattern_reward[0]), str(second_reward_model)]

    def deploy(user_config):
        app = RewardServer.options(user_config=user_config).bind(token_file=str(token_file), max_batch=16)
        serve.run(app, name="reward", route_prefix="/")

    deploy({"models": models, "scalarize": "min"})
    yield f"http://127.0.0.1:{port}", deploy, models
    serve.delete("reward")
    serve.shutdown()


def post(url, body, token=TOKEN, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{url}/v1/score", json=body, headers=headers, timeout=60, **kw)


def test_scores_are_the_local_models_and_scalar_is_the_scalarization(reward_app):
    from alignray.rewards.scorers import LocalRewardModels

    url, _, models = reward_app
    reply = post(url, {"prompts": PROMPTS, "responses": RESPONSES})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    local = LocalRewardModels(models)
    expected = local(PROMPTS, RESPONSES)
    assert body["principles"] == local.principles and len(body["principles"]) == 2
    assert torch.allclose(torch.tensor(body["rewards"]), expected, atol=1e-4)
    assert torch.allclose(torch.tensor(body["scalar"]), expected.min(dim=1).values, atol=1e-4)
    chat = post(url, {"messages": [[{"role": "user", "content": "Hi?"}]], "responses": ["word"]})
    assert chat.status_code == 200 and len(chat.json()["rewards"][0]) == 2
    assert requests.get(f"{url}/healthz", timeout=10).json() == {"status": "live"}
    assert requests.get(f"{url}/readyz", timeout=10).json()["ready"] is True


@pytest.mark.parametrize(
    "kwargs, status",
    [
        ({"body": {"prompts": PROMPTS, "responses": RESPONSES}, "token": None}, 401),
        ({"body": {"prompts": PROMPTS, "responses": RESPONSES}, "token": "wrong"}, 401),
        ({"body": {"prompts": PROMPTS}}, 422),
        ({"body": {"prompts": PROMPTS, "responses": ["one"]}}, 422),
        ({"body": {"prompts": PROMPTS, "messages": [[]], "responses": RESPONSES}}, 422),
        ({"body": {"prompts": PROMPTS, "responses": RESPONSES, "temperature": 1}}, 422),
        ({"body": {"prompts": ["p"] * 17, "responses": ["r"] * 17}}, 413),
    ],
    ids=["no-token", "wrong-token", "missing-responses", "count-mismatch", "both-prompt-forms", "unknown-field", "too-many"],
)
def test_bad_requests_get_4xx_json_errors(reward_app, kwargs, status):
    url, _, _ = reward_app
    reply = post(url, kwargs["body"], token=kwargs.get("token", TOKEN))
    assert reply.status_code == status and "detail" in reply.json()
    assert TOKEN not in reply.text


def test_invalid_json_is_a_422(reward_app):
    url, _, _ = reward_app
    reply = requests.post(f"{url}/v1/score", data=b"{not json", timeout=30,
                          headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert reply.status_code == 422 and "detail" in reply.json()


def test_64_requests_at_concurrency_8_all_succeed(reward_app):
    url, _, _ = reward_app
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: post(url, {"prompts": [PROMPTS[i % 2]], "responses": [f"word {i}"]}), range(64)))
    assert [r.status_code for r in replies] == [200] * 64


def test_serving_config_imports_and_validates():
    import importlib
    from pathlib import Path

    import yaml
    from alignray.config import RewardConfig
    from ray.serve.schema import ServeDeploySchema

    text = (Path(__file__).resolve().parents[1] / "serving" / "config.yaml").read_text()
    schema = ServeDeploySchema.model_validate(yaml.safe_load(text))
    for app in schema.applications:
        module, _, attr = app.import_path.partition(":")
        built = getattr(importlib.import_module(module), attr)(app.args)
        assert built is not None
        for deployment in app.deployments:
            config = {k: v for k, v in deployment.user_config.items() if k != "tracking_uri"}
            RewardConfig.model_validate(config)
