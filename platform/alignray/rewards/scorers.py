"""Reward sources: local preference models, any HTTP endpoint with the same contract, or a
Python function (`reward.function`, "module:function" or "path/to/file.py:function").

Each scores (prompt, response) texts and returns a [batch, K] tensor, one column per principle.

The function contract: called with two lists of strings (prompts, responses), it returns one
number per response, or one list of K numbers (one per principle) per response; it may name
its principles in an attribute `principles` (a list of K names); else a one-column reward is
named after the function.

The HTTP contract: ``POST <url>`` with JSON ``{"prompts": [str], "responses": [str]}`` answers
``{"rewards": [[float, ...], ...]}`` (one row per response, one value per principle) and may
name its columns in ``"principles": [str]``. Requests go through the `openai` client's generic
``post`` with ``Authorization: Bearer <token>`` when `reward.endpoint_token_env` names the
variable holding the token, and are retried as `alignray.sampling.http` says (connection errors,
timeouts, 408/409/429/5xx, honouring ``Retry-After``), `reward.endpoint_retries` times.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import openai
import torch
from torch import Tensor

from alignray.config import ConfigError, RewardConfig
from alignray.models.registry import local_folder
from alignray.models.tokens import Tokenize, pad
from alignray.rewards.scalarize import scalarize
from alignray.sampling import http

SCORE_BATCH = 16


def scalar_reward(per_principle: Tensor, cfg: RewardConfig) -> Tensor:
    """One reward per sample: `cfg.scalarize` over the principles, then the optional clip."""
    scalar = scalarize(per_principle, cfg.scalarize, cfg.weights, **cfg.params).float()
    return scalar if cfg.clip is None else scalar.clamp(-cfg.clip, cfg.clip)


class RewardError(RuntimeError):
    """A reward source failed or answered something unusable; the message names it."""


class LocalRewardModels:
    """Frozen preference models (AutoModelForSequenceClassification folders), each with one
    head or one head per principle; a response is tokenized as in preference training. A
    single-head model's principle is named by its label (default: its folder name); a
    multi-head model's by its heads' id2label."""

    def __init__(
        self, folders: Sequence[Path], labels: Sequence[str] | None = None, max_length: int = 1024,
        dtype: torch.dtype = torch.float32,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.models, self.principles = [], []
        for folder, label in zip(folders, labels or [Path(f).name for f in folders], strict=True):
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=dtype).eval()
            model.requires_grad_(False)
            if model.config.pad_token_id is None:
                model.config.pad_token_id = tokenizer.pad_token_id
            self.models.append((Tokenize(tokenizer, max_length, "left"), model))
            k = model.config.num_labels
            names = [model.config.id2label[i] for i in range(k)] if k > 1 else [label]
            self.principles += [n if n not in self.principles else f"{n}_{len(self.principles)}" for n in names]

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        columns = []
        for tokenize, model in self.models:
            out = []
            for i in range(0, len(prompts), SCORE_BATCH):
                seqs = [tokenize(p, r) for p, r in zip(prompts[i : i + SCORE_BATCH], responses[i : i + SCORE_BATCH])]
                batch = pad(seqs, model.config.pad_token_id)
                out.append(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float())
            columns.append(torch.cat(out))
        return torch.cat(columns, dim=1)


def endpoint_token(cfg: RewardConfig) -> str | None:
    """The bearer token of `cfg.endpoint`: the value of the variable `cfg.endpoint_token_env` in
    this process's environment (on a cluster the workers' too: they call the endpoint)."""
    token = os.environ.get(cfg.endpoint_token_env) if cfg.endpoint_token_env else None
    if cfg.endpoint_token_env and not token:
        raise RewardError(f"reward.endpoint_token_env: the environment variable {cfg.endpoint_token_env} (the bearer"
                          f" token of {cfg.endpoint}) is not set in this process's environment")
    return token


class HttpRewardModel:
    """A remote scorer: see the module docstring for the contract."""

    def __init__(self, url: str, timeout_s: float, retries: int = 4, token: str | None = None):
        self.url, self.retries = url, retries
        self.client = http.client(url, timeout_s, retries, token)
        self.principles: list[str] | None = None

    @classmethod
    def of(cls, cfg: RewardConfig) -> HttpRewardModel:
        return cls(cfg.endpoint, cfg.endpoint_timeout_s, cfg.endpoint_retries, endpoint_token(cfg))

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        try:
            reply = self.client.post(self.url, body={"prompts": list(prompts), "responses": list(responses)},
                                     cast_to=object)
        except openai.APIError as exc:
            message, _ = http.failure(exc, f"POST {self.url}", self.retries)
            raise RewardError(f"reward endpoint {self.url}: {message}") from None
        if isinstance(reply, str):  # the client's answer when the server does not label it JSON
            try:
                reply = json.loads(reply)
            except ValueError:
                raise RewardError(f"reward endpoint {self.url}: answered something that is not JSON: {reply[:200]!r}") from None
        rows = reply.get("rewards") if isinstance(reply, dict) else None
        if not isinstance(rows, list) or len(rows) != len(prompts):
            raise RewardError(
                f"reward endpoint {self.url}: expected 'rewards' with {len(prompts)} rows, got"
                f" {type(rows).__name__ if not isinstance(rows, list) else len(rows)}"
            )
        if not all(isinstance(r, list) and r and len(r) == len(rows[0]) for r in rows):
            raise RewardError(f"reward endpoint {self.url}: every row of 'rewards' needs the same number (>= 1) of values")
        if not all(isinstance(v, (int, float)) for r in rows for v in r):
            raise RewardError(f"reward endpoint {self.url}: 'rewards' must hold numbers")
        names = reply.get("principles")
        self.principles = list(names) if isinstance(names, list) and len(names) == len(rows[0]) else [
            f"principle_{k}" for k in range(len(rows[0]))
        ]
        return torch.tensor(rows, dtype=torch.float32)


def load_function(spec: str) -> Callable:
    """The callable that "module:function" or "path/to/file.py:function" names; ConfigError
    naming what is missing otherwise."""
    where, _, name = spec.rpartition(":")
    try:
        if where.endswith(".py"):
            if not Path(where).is_file():
                raise ConfigError(f"reward.function {spec!r}: no file {where}")
            found = importlib.util.spec_from_file_location(Path(where).stem, where)
            module = importlib.util.module_from_spec(found)
            found.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ImportError as exc:
        raise ConfigError(f"reward.function {spec!r}: cannot import {where}: {exc}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"reward.function {spec!r}: {where} has no function {name}")
    return fn


class FunctionReward:
    """A Python function as the reward: see the module docstring for its contract."""

    def __init__(self, spec: str):
        self.spec, self.fn = spec, load_function(spec)
        self.principles: list[str] | None = None

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        try:
            out = self.fn(list(prompts), list(responses))
        except Exception as exc:  # the user's code: name it, keep its traceback
            raise RewardError(f"reward.function {self.spec!r} raised {type(exc).__name__}: {exc}") from exc
        try:
            rewards = torch.as_tensor(out, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise RewardError(f"reward.function {self.spec!r}: returned {type(out).__name__}, not numbers (one per"
                              " response, or one list of numbers per response)") from None
        rewards = rewards[:, None] if rewards.dim() == 1 else rewards
        if rewards.dim() != 2 or len(rewards) != len(prompts) or not rewards.shape[1]:
            raise RewardError(f"reward.function {self.spec!r}: returned shape {tuple(rewards.shape)} for"
                              f" {len(prompts)} responses; give one number (or one row of numbers) per response")
        if not math.isfinite(rewards.sum().item()):
            raise RewardError(f"reward.function {self.spec!r}: returned a NaN or infinite reward")
        names = getattr(self.fn, "principles", None)
        k = rewards.shape[1]
        self.principles = list(names) if isinstance(names, list) and len(names) == k else (
            [self.fn.__name__] if k == 1 else [f"principle_{i}" for i in range(k)])
        return rewards


def reward_source(cfg: RewardConfig, max_length: int, dtype: torch.dtype = torch.float32,
                  folders: Sequence[Path] | None = None,
                  labels: Sequence[str] | None = None) -> LocalRewardModels | HttpRewardModel | FunctionReward:
    """The reward a config names: its endpoint, its function, or its models (folders or
    models:/ URIs; `folders` when already resolved, `labels` naming their single heads)."""
    if cfg.endpoint:
        return HttpRewardModel.of(cfg)
    if cfg.function:
        return FunctionReward(cfg.function)
    return LocalRewardModels(folders or [local_folder(m) for m in cfg.models], labels, max_length, dtype)
