"""An OpenAI-compatible HTTP endpoint (vLLM's server, a served alignray policy, a hosted API)
as a labeller, teacher or judge: the same `chat`, `score` and `option_logprobs` the local
sampler pool offers, called through the official `openai` client.

`option_logprobs` (the (A)/(B) labels of RLAIF, rDPO's judge and the AI judge) works two ways
(`endpoint.logprobs`):

- ``echo`` (vLLM's server): `score` tokenizes prompt and continuation apart on the server's
  ``/tokenize`` route (the one raw call: the client has none for it), sends their ids to
  ``/v1/completions`` with ``echo`` and reads the continuation's echoed log-probs back. Exact.
- ``chat`` (any chat-only server, hosted ones too): the prompt is sent as one user message, the
  reply's first answer token is read from ``top_logprobs``. An option missing from the top 20
  gets the smallest listed log-prob (an upper bound). Approximate: the chat template wraps the
  prompt, and only the top 20 tokens are known.
- ``auto`` (default): ``echo`` unless the server has no ``/tokenize`` (HTTP 404/405), then ``chat``.

Retries are the client's (see `alignray.sampling.http`); when they are used up, `EndpointError`
names the URL and the last error. Every answered request is appended to a JSONL cache, so
running again after a failure re-sends only what had not been answered.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import openai
from tqdm.auto import tqdm

from alignray import logs
from alignray.sampling import http
from alignray.sampling.types import Reply, SamplingSpec, Score

log = logs.get(__name__)
TOP_LOGPROBS = 20  # the most the OpenAI API (and vLLM by default) return per position
ANSWER_TOKENS = 4  # room for "(" or "**" before the option letter


class EndpointError(RuntimeError):
    """An endpoint kept failing; the message names its URL and the last error."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Endpoint:
    def __init__(
        self,
        url: str,
        model: str | None = None,
        timeout_s: float = 120.0,
        retries: int = 4,
        concurrency: int = 8,
        cache: Path | None = None,
        api_key: str | None = None,
        logprobs: str = "auto",
    ):
        self.base = url.rstrip("/").removesuffix("/v1")
        self.client = http.client(f"{self.base}/v1", timeout_s, retries, api_key)
        self.retries, self.concurrency, self.logprobs = retries, concurrency, logprobs
        self.cache_path = cache
        self.cache: dict[str, dict] = _read_cache(cache) if cache else {}
        self.model = model or self._only_model()

    def _only_model(self) -> str:
        models = [m.id for m in self._call(lambda: list(self.client.models.list()), "GET", "/v1/models")]
        if len(models) != 1:
            raise EndpointError(f"{self.base}/v1/models serves {models}; set endpoint.model to the one to use")
        return models[0]

    def _call(self, send, method: str, path: str):
        what = f"{method} {self.base}{path}"
        try:
            return send()
        except openai.APIError as exc:
            raise EndpointError(*http.failure(exc, what, self.retries)) from None

    def _request(self, path: str, body: dict) -> dict:
        if path == "/v1/chat/completions":
            send = lambda: self.client.chat.completions.create(**body).model_dump()  # noqa: E731
        elif path == "/v1/completions":
            send = lambda: self.client.completions.create(**body).model_dump()  # noqa: E731
        else:
            send = lambda: self.client.post(f"{self.base}{path}", body=body, cast_to=object)  # noqa: E731
        return self._call(send, "POST", path)

    def _post_all(self, path: str, bodies: list[dict], desc: str | None) -> list[dict]:
        """POST every body (concurrently), answering from and adding to the cache. On a failure
        the requests still in flight finish (and are cached) before the error is raised."""
        keys = [hashlib.sha256(json.dumps([path, b], sort_keys=True).encode()).hexdigest() for b in bodies]
        todo = {k: b for k, b in zip(keys, bodies) if k not in self.cache}
        failure = None
        with ThreadPoolExecutor(self.concurrency) as threads, tqdm(total=len(todo), desc=desc, disable=desc is None) as bar:
            futures = {threads.submit(self._request, path, body): key for key, body in todo.items()}
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

    def chat(self, conversations: Sequence[list[dict]], spec: SamplingSpec, desc: str | None = None) -> list[Reply]:
        """One assistant reply per conversation (a list of {role, content} messages)."""
        bodies = [
            {
                "model": self.model, "messages": m, "temperature": spec.temperature, "top_p": spec.top_p,
                "max_tokens": spec.max_tokens, **({"seed": spec.seed + i} if spec.seed is not None else {}),
            }
            for i, m in enumerate(conversations)
        ]
        replies = self._post_all("/v1/chat/completions", bodies, desc)
        return [Reply(r["choices"][0]["message"]["content"] or "", r["choices"][0].get("finish_reason")) for r in replies]


    def option_logprobs(self, prompts: Sequence[str], options: Sequence[str], desc: str | None = None) -> list[list[float]]:
        """For each prompt, the log-prob of each option (e.g. "A", "B") as the answer's first
        token; ``echo`` or ``chat`` as the module docstring says."""
        if self.logprobs != "chat":
            try:
                return option_totals(self.score, prompts, options, desc)
            except EndpointError as exc:
                if self.logprobs == "echo" or exc.status not in (404, 405) or "/tokenize" not in str(exc):
                    raise
                log.info("%s has no /tokenize: labelling from chat top_logprobs (endpoint.logprobs=chat)", self.base)
                self.logprobs = "chat"
        unique = list(dict.fromkeys(prompts))
        bodies = [{"model": self.model, "messages": [{"role": "user", "content": p}], "max_tokens": ANSWER_TOKENS,
                   "temperature": 0.0, "logprobs": True, "top_logprobs": TOP_LOGPROBS} for p in unique]
        answers = {p: self._first_answer(r, options) for p, r in zip(unique, self._post_all("/v1/chat/completions", bodies, desc))}
        undecided = sum(a is None for a in answers.values())
        if undecided:
            log.warning("%d of %d chat answers from %s named none of %s: scored as a tie", undecided, len(answers),
                        self.base, list(options))
        return [answers[p] or [0.0] * len(options) for p in prompts]

    def _first_answer(self, reply: dict, options: Sequence[str]) -> list[float] | None:
        """Options' log-probs at the first answer token: skips tokens that are only brackets,
        asterisks or spaces; None when the answer starts with anything else."""
        content = ((reply["choices"][0].get("logprobs") or {}).get("content")) if reply.get("choices") else None
        if not content or not content[0].get("top_logprobs"):
            raise EndpointError(f"{self.base}: the chat reply has no top_logprobs; a chat-only labeller or judge needs a"
                                " server that returns logprobs and top_logprobs in chat completions")
        for position in content:
            found: dict[str, float] = {}
            for entry in position["top_logprobs"]:
                option = _bare(entry["token"])
                if option in options:
                    found[option] = _logaddexp(found.get(option, -math.inf), entry["logprob"])
            if found:
                floor = min(e["logprob"] for e in position["top_logprobs"])
                return [found.get(o, floor) for o in options]
            if _bare(position["token"]):
                return None
        return None


def option_totals(score, prompts: Sequence[str], options: Sequence[str], desc: str | None) -> list[list[float]]:
    """Each option's summed log-prob after each prompt, from a `score(prompts, continuations, desc)`."""
    k = len(options)
    scores = score([p for p in prompts for _ in options], list(options) * len(prompts), desc)
    return [[s.total for s in scores[i * k : (i + 1) * k]] for i in range(len(prompts))]


def _bare(token: str) -> str:
    return token.strip().strip("()*").strip()


def _logaddexp(a: float, b: float) -> float:
    top = max(a, b)
    return top + math.log(math.exp(a - top) + math.exp(b - top))


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
