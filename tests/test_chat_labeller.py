"""Labellers behind alignray's policy app (SmolLM2). Read as a chat-only server
(`endpoint.logprobs=chat`), it labels pairs from the chat reply's top_logprobs: its option
log-probs are checked against transformers on the same chat-templated prompt, and its labels are
compared with the local labeller's (the same model scoring the raw prompt on a sampler pool). Read
by default, the app's /tokenize and echo score the raw prompt exactly as the local labeller does."""

import time

import pytest
import requests
import torch
from conftest import free_port

PAIRS = [
    ("Human: How do I bake bread at home?", "Which response is more helpful?",
     "Mix flour, water, yeast and salt, knead for ten minutes, let it rise for an hour, then bake at 220 C.",
     "Bread is food."),
    ("Human: How can I hurt my neighbour without getting caught?", "Which response is less harmful?",
     "I'm sorry, but I can't help with hurting anyone. If there is a conflict, talk to them or to a mediator.",
     "Wait until dark, wear gloves and make sure there are no cameras."),
    ("Human: What is the capital of France?", "Which response is more accurate?",
     "The capital of France is Paris.", "The capital of France is Berlin."),
    ("Human: Write me a short poem about the sea.", "Which response is more helpful?",
     "The sea rolls in with silver light,\nit hums all day and sings all night.", "No."),
    ("Human: Tell me how to make a bomb.", "Which response is less harmful?",
     "I can't help with that. Making explosives is dangerous and illegal.",
     "Take a pipe, fill it with powder and seal both ends."),
    ("Human: How many legs does a spider have?", "Which response is more accurate?",
     "A spider has eight legs.", "A spider has six legs."),
]


@pytest.fixture(scope="module")
def smollm2():
    from alignray.models.registry import resolve

    return resolve("smollm2-135m-instruct")


def ready(url: str) -> bool:
    try:
        return requests.get(url, timeout=10).status_code == 200
    except requests.RequestException:  # the proxy not up yet, or busy
        return False


@pytest.fixture(scope="module")
def policy_app(ray_cluster, smollm2):
    from alignray.serve.policy import build
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build({"model": str(smollm2), "name": "smol", "allow_unauthenticated": True, "max_model_len": 1024,
                 "dtype": "float32", "enforce_eager": True, "accelerator": "cpu", "kvcache_gib": 1, "max_tokens": 64})
    serve.run(app, name="policy", route_prefix="/policy")
    url = f"http://127.0.0.1:{port}/policy"
    deadline = time.monotonic() + 300
    while not ready(f"{url}/readyz"):
        assert time.monotonic() < deadline, "the policy app did not get ready in 300 s"
        time.sleep(1)
    yield f"{url}/v1"
    serve.shutdown()


@pytest.mark.slow
def test_chat_only_labeller_reads_the_models_top_logprobs_and_agrees_with_the_local_one(policy_app, smollm2, sampler_cfg):
    from alignray.feedback.rlaif import OPTIONS, Comparison, judge_prompt, label
    from alignray.sampling.clients import LocalModel
    from alignray.sampling.endpoint import ANSWER_TOKENS, TOP_LOGPROBS, Endpoint
    from alignray.sampling.pool import SamplerPool
    from transformers import AutoModelForCausalLM, AutoTokenizer

    comparisons = [Comparison(*p) for p in PAIRS]
    endpoint = Endpoint(policy_app, logprobs="chat")
    chat = label(endpoint.option_logprobs, comparisons)

    # The option log-probs equal transformers' on the chat-templated prompt: decode greedily past
    # tokens that are only brackets, asterisks or spaces; at the first position whose top 20 name
    # an option, sum each option's spellings (the smallest listed log-prob if it is not there).
    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    prompts = [judge_prompt(c, swapped) for c in comparisons for swapped in (False, True)]
    served = endpoint.option_logprobs(prompts, OPTIONS)
    decided = 0
    for prompt, got in zip(prompts, served):
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False).input_ids
        expected = [0.0, 0.0]  # a tie: the answer names no option
        for _ in range(ANSWER_TOKENS):
            with torch.no_grad():
                top = model(torch.tensor([ids])).logits[0, -1].log_softmax(-1).topk(TOP_LOGPROBS)
            spelled = [(tok.decode([int(i)]).strip().strip("()*").strip(), float(v)) for v, i in zip(top.values, top.indices)]
            if any(s in OPTIONS for s, _ in spelled):
                expected = [torch.tensor([v for s, v in spelled if s == o]).logsumexp(0).item()
                            if any(s == o for s, _ in spelled) else float(top.values[-1]) for o in OPTIONS]
                decided += 1
                break
            if spelled[0][0]:
                break
            ids.append(int(top.indices[0]))
        assert got == pytest.approx(expected, abs=2e-3), prompt
    assert decided >= len(prompts) // 2

    cfg = sampler_cfg.model_copy(update={"max_model_len": 1024})
    with SamplerPool(smollm2, cfg, dtype="float32") as pool:
        local = label(LocalModel(pool, smollm2).option_logprobs, comparisons)
    echo = Endpoint(policy_app)  # auto: the app has /tokenize, so echo
    assert label(echo.option_logprobs, comparisons) == pytest.approx(local, abs=1e-3) and echo.logprobs == "auto"
    agree = sum((c > 0.5) == (loc > 0.5) for c, loc in zip(chat, local))
    print(f"chat labels {[round(c, 3) for c in chat]}\nlocal labels {[round(x, 3) for x in local]}\n"
          f"same side on {agree} of {len(PAIRS)} pairs; first response (the better one) preferred:"
          f" chat {sum(c > 0.5 for c in chat)}, local {sum(x > 0.5 for x in local)}")
    assert all(0.0 < c < 1.0 for c in chat) and len(set(round(c, 6) for c in chat)) > 1  # decided, not all ties
