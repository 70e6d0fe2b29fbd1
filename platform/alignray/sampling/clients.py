"""Model clients: a model named by a config (policy, labeller, teacher, judge) as a local model on
a vLLM sampler pool, or an OpenAI-compatible URL. Both offer `score` (log-probs of given
continuations), `option_logprobs` (log-probs of answer options, for (A)/(B) labels) and `chat`
(one assistant reply per message list)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from alignray.config import EvaluateConfig, SimulateConfig
from alignray.models.registry import ModelError, resolve
from alignray.sampling.endpoint import Endpoint, option_totals
from alignray.sampling.pool import SamplerPool
from alignray.sampling.types import Reply, SamplingSpec, Score


def chat_renderer(model_path: Path):
    """messages -> the model's chat-template text, ending with an open assistant turn."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if not tokenizer.chat_template:
        raise ModelError(f"{model_path}: the tokenizer has no chat template; use data.format=transcript")
    return lambda messages: tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class LocalModel:
    """A sampler pool seen through the same interface as an `Endpoint`."""

    def __init__(self, pool: SamplerPool, path: Path):
        self._pool, self.path, self._render = pool, path, None

    @property
    def pool(self) -> SamplerPool:
        if self._pool.model_path != str(self.path):  # `Models.get` loaded another model into it
            raise RuntimeError(f"the sampler pool of {self.path} now holds {self._pool.model_path}")
        return self._pool

    def score(self, prompts: Sequence[str], continuations: Sequence[str], desc: str | None = None) -> list[Score]:
        return self.pool.score(prompts, continuations, desc=desc)

    def option_logprobs(self, prompts: Sequence[str], options: Sequence[str], desc: str | None = None) -> list[list[float]]:
        """Each option's log-prob right after each prompt."""
        return option_totals(self.score, prompts, options, desc)

    def chat(self, conversations: Sequence[list[dict]], spec: SamplingSpec, desc: str | None = None) -> list[Reply]:
        self._render = self._render or chat_renderer(self.path)
        outs = self.pool.generate([self._render(m) for m in conversations], spec, desc=desc)
        return [Reply(o[0].text, o[0].finish_reason) for o in outs]


def is_url(name: str) -> bool:
    return name.startswith(("http://", "https://"))


class Models:
    """Models by name, folder, models:/ URI or URL, used one after another (a policy, its
    opponents, a judge): `get(name)`. A local model gets a sampler pool of `cfg.sampler`; the
    next local one is loaded into that pool's running engines when it can be
    (`SamplerPool.switch_model`), else the pool is closed and a new one started, so a model
    got earlier must not be used after the next `get`. Answers are kept under
    `cfg.output_dir` (endpoint-cache/, sampler-cache/), so an interrupted stage run again
    resumes."""

    def __init__(self, cfg: SimulateConfig | EvaluateConfig, seed: int = 0):
        self.cfg, self.seed, self._pool = cfg, seed, None

    def get(self, name: str) -> LocalModel | Endpoint:
        cfg = self.cfg
        if is_url(name):
            e = cfg.endpoint
            key = os.environ.get(e.api_key_env) if e.api_key_env else None
            if e.api_key_env and not key:
                raise ModelError(f"endpoint.api_key_env: the environment variable {e.api_key_env} is not set")
            digest = hashlib.sha256(f"{name}|{e.model}".encode()).hexdigest()[:16]
            cache = cfg.output_dir / "endpoint-cache" / f"{digest}.jsonl"
            return Endpoint(name, e.model, e.timeout_s, e.retries, e.concurrency, cache, key, e.logprobs)
        path = resolve(name)
        if self._pool is None or not self._pool.switch_model(path):
            self.close()
            self._pool = SamplerPool(path, cfg.sampler, dtype=cfg.model.dtype, seed=self.seed,
                                     cache_dir=cfg.output_dir / "sampler-cache")
        return LocalModel(self._pool, path)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> Models:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def open_model(name: str, cfg: SimulateConfig | EvaluateConfig, seed: int = 0) -> Iterator[LocalModel | Endpoint]:
    """One model (see `Models`) for as long as the block runs."""
    with Models(cfg, seed) as models:
        yield models.get(name)
