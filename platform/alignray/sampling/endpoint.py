"""An OpenAI-compatible HTTP endpoint (vLLM's server, a served alignray policy, a hosted API)
as a labeller, teacher or judge: the same `score` and `chat` the local sampler pool offers.

`score` needs a vLLM server (or one with its ``/tokenize`` route and ``echo`` of prompt
log-probs): prompt and continuation are tokenized apart, their ids sent to ``/v1/completions``
with ``echo``, and the continuation's echoed log-probs read back. `chat` calls
``/v1/chat/completions`` (any OpenAI-compatible server).

A request that fails (connection error, timeout, HTTP 429 or 5xx) is retried with exponential
backoff; when the retries are used up, `EndpointError` names the URL and the last error. Every
answered request is appended to a JSONL cache, so running again after a failure re-sends only
what had not been answered.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import requests
from tqdm.auto import tqdm

from alignray.sampling.types import SamplingSpec, Score

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class EndpointError(RuntimeError):
    """An endpoint kept failing; the message names its URL and the last error."""


class Endpoint:
    def __init__(
        self,
        url: str,
        model: str | None = None,
        timeout_s: float = 120.0,
        retries: int = 4,
        backoff_s: float = 1.0,
        concurrency: int = 8,
        cache: Path | None = None,
        api_key: str | None = None,
    ):
        self.base = url.rstrip("/").removesuffix("/v1")
        self.timeout_s, self.retries, self.backoff_s, self.concurrency = timeout_s, retries, backoff_s, concurrency
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.cache_path = cache
        self.cache: dict[str, dict] = _read_cache(cache) if cache else {}
        self.model = model or self._only_model()

    def _only_model(self) -> str:
        models = [m["id"] for m in self._request("GET", "/v1/models", None)["data"]]
        if len(models) != 1:
            raise EndpointError(f"{self.base}/v1/models serves {models}; set endpoint.model to the one to use")
        return models[0]

    def _request(self, method: str, path: str, body: dict | None) -> dict:
        url, last = f"{self.base}{path}", None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                reply = requests.request(method, url, json=body, headers=self.headers, timeout=self.timeout_s)
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if reply.status_code in RETRY_STATUS:
                last = f"HTTP {reply.status_code}: {reply.text[:200]}"
                continue
            if reply.status_code != 200:
                raise EndpointError(f"{method} {url} answered HTTP {reply.status_code}: {reply.text[:300]}")
            try:
                return reply.json()
            except ValueError:
                raise EndpointError(f"{method} {url} answered something that is not JSON: {reply.text[:200]!r}") from None
        raise EndpointError(f"{method} {url} failed {self.retries + 1} times (last: {last}); is the endpoint up?")

    def _post_all(self, path: str, bodies: list[dict], desc: str | None) -> list[dict]:
        """POST every body (concurrently), answering from and adding to the cache. On a failure
        the requests still in flight finish (and are cached) before the error is raised."""
        keys = [hashlib.sha256(json.dumps([path, b], sort_keys=True).encode()).hexdigest() for b in bodies]
        todo = {k: b for k, b in zip(keys, bodies) if k not in self.cache}
        failure = None
        with ThreadPoolExecutor(self.concurrency) as threads, tqdm(total=len(todo), desc=desc, disable=desc is None) as bar:
            futures = {threads.submit(self._request, "POST", path, body): key for key, body in todo.items()}
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                try:
                    self._remember(futures[future], future.result())
                except EndpointError as exc:
                    failure = failure or exc
                    for pending in futures:
                        pending.cancel()
                bar.update()
        if failure:
            raise failure
        return [self.cache[k] for k in keys]

    def _remember(self, key: str, reply: dict) -> None:
        self.cache[key] = reply
        if self.cache_path:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            with self.cache_path.open("a") as f:
                f.write(json.dumps({"key": key, "reply": reply}) + "\n")

    def _tokenize(self, texts: Sequence[str], special: bool) -> dict[str, list[int]]:
        unique = sorted(set(texts))
        bodies = [{"model": self.model, "prompt": t, "add_special_tokens": special} for t in unique]
        return {t: r["tokens"] for t, r in zip(unique, self._post_all("/tokenize", bodies, None))}

    def score(self, prompts: Sequence[str], continuations: Sequence[str], desc: str | None = None) -> list[Score]:
        """Log-probs of each continuation's tokens after its prompt, tokenized apart as the local
        sampler does: the token ids of prompt + continuation are sent with ``echo`` and the
        echoed log-probs of the continuation's tokens are read back."""
        p_ids, c_ids = self._tokenize(prompts, True), self._tokenize(continuations, False)
        bodies = [
            {"model": self.model, "prompt": p_ids[p] + c_ids[c], "max_tokens": 1, "temperature": 0.0, "echo": True, "logprobs": 0}
            for p, c in zip(prompts, continuations, strict=True)
        ]
        out = []
        for p, c, reply in zip(prompts, continuations, self._post_all("/v1/completions", bodies, desc)):
            start, ids = len(p_ids[p]), c_ids[c]
            try:
                values = reply["choices"][0]["logprobs"]["token_logprobs"][start : start + len(ids)]
            except (KeyError, IndexError, TypeError):
                values = []
            if len(values) != len(ids) or any(v is None for v in values):
                raise EndpointError(f"{self.base}: no echoed log-probs for the continuation {c!r}; is it a vLLM server?")
            out.append(Score(token_ids=tuple(ids), token_logprobs=tuple(values)))
        return out

    def chat(self, conversations: Sequence[list[dict]], spec: SamplingSpec, desc: str | None = None) -> list[str]:
        """One assistant reply per conversation (a list of {role, content} messages)."""
        bodies = [
            {
                "model": self.model, "messages": m, "temperature": spec.temperature, "top_p": spec.top_p,
                "max_tokens": spec.max_tokens, **({"seed": spec.seed + i} if spec.seed is not None else {}),
            }
            for i, m in enumerate(conversations)
        ]
        return [r["choices"][0]["message"]["content"] or "" for r in self._post_all("/v1/chat/completions", bodies, desc)]


def _read_cache(path: Path) -> dict[str, dict]:
    """Answered requests; a torn last line (the process died mid-write) is ignored."""
    cache = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            cache[entry["key"]] = entry["reply"]
    return cache
