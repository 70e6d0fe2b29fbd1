"""The OpenAI-compatible request bodies the policy application accepts, and its responses.

Unknown fields are refused (400 naming the field) rather than silently ignored. Log-probs come
in OpenAI's two shapes: chat's ``{"content": [{token, logprob, bytes, top_logprobs}]}`` and the
completions' ``{tokens, token_logprobs, top_logprobs, text_offset}`` (with ``echo``, the prompt's
tokens first; the first has no log-prob)."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


MAX_LOGPROBS = 20  # as OpenAI's API


class CompletionRequest(Sampling):
    prompt: str | list[str] = Field(min_length=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str
    name: str | None = None


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> ChatRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self


def _token(text: str, logprob: float) -> dict:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def _top(position: dict, k: int, decode) -> list[tuple[str, float]]:
    """The k most likely tokens of one position ({token id: vLLM Logprob})."""
    best = sorted(position.items(), key=lambda item: -item[1].logprob)[:k]
    return [(decode(t, lp), lp.logprob) for t, lp in best]


def chat_logprobs(token_ids: list[int], positions: list[dict], k: int, decode) -> dict:
    """Chat's logprobs object for the sampled tokens; `decode(token id, Logprob)` gives a token's text."""
    content = []
    for t, position in zip(token_ids, positions):
        content.append({**_token(decode(t, position[t]), position[t].logprob),
                        "top_logprobs": [_token(text, lp) for text, lp in _top(position, k, decode)]})
    return {"content": content, "refusal": None}


def completion_logprobs(token_ids: list[int], positions: list[dict | None], k: int, decode) -> dict:
    """The completions' logprobs object; a position of None (the echoed prompt's first token) has none."""
    tokens, values, tops, offsets, offset = [], [], [], [], 0
    for t, position in zip(token_ids, positions):
        text = decode(t, position[t] if position else None)
        tokens.append(text)
        values.append(position[t].logprob if position else None)
        tops.append(dict(_top(position, k, decode)) if position and k else None)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class Reply:
    """Builds the response objects of one request: the whole reply, or its stream chunks."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model = chat, model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def whole(self, choices: list[tuple[str, str | None, dict | None]], prompt_tokens: int, completion_tokens: int) -> dict:
        if self.chat:
            listed = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                       "logprobs": logprobs} for i, (text, reason, logprobs) in enumerate(choices)]
        else:
            listed = [{"index": i, "text": text, "finish_reason": reason, "logprobs": logprobs}
                      for i, (text, reason, logprobs) in enumerate(choices)]
        return {**self._head("chat.completion" if self.chat else "text_completion"), "choices": listed,
                "usage": usage(prompt_tokens, completion_tokens)}

    def chunk(self, index: int, text: str, reason: str | None, first: bool = False, logprobs: dict | None = None) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": text} if first else {"content": text}
            choice = {"index": index, "delta": delta, "finish_reason": reason, "logprobs": logprobs}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": index, "text": text, "finish_reason": reason, "logprobs": logprobs}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage(prompt_tokens, completion_tokens)}
