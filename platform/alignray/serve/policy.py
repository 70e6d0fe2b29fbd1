"""The policy application of Ray Serve: an OpenAI-compatible API over a vLLM engine per replica.

`POST /v1/completions`, `POST /v1/chat/completions` (``stream: true`` answers with server-sent
events ending in ``data: [DONE]``), `GET /v1/models`; `GET /healthz` (live) and `GET /readyz`
(model loaded). Log-probs as OpenAI returns them: chat's ``logprobs`` / ``top_logprobs``, the
completions' ``logprobs`` (and ``echo``, the prompt before the completion). Errors are OpenAI-style JSON, ``{"error": {"message", "type", "code"}}``:
400 for a bad body or `max_tokens` above the server's cap, 401 without the bearer token (when
one is configured), 404 for a model this server does not serve, 413 for a body too large.

The model comes from the deployment's `user_config`: ``model`` (a folder or a
``models:/name@alias`` URI), optional ``name`` (the id clients send; default: the registered
model's name or the folder's), optional ``tracking_uri``. Changing it loads the new model
beside the old one and switches over; requests in flight finish on the old engine. If the load
fails the old model keeps serving and `/readyz` reports the error; a replica that cannot load
its first model fails to start.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import AsyncIterator

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict
from ray import serve

from alignray.models.registry import model_name, resolve
from alignray.serve.common import Guard, read_token, use_tracking, validation_problems
from alignray.serve.engine import EngineClosed, EngineLoop
from alignray.serve.openai_api import (
    ChatRequest, CompletionRequest, Reply, Sampling, chat_logprobs, completion_logprobs,
)

api = FastAPI(title="alignray policy (OpenAI-compatible)")
logger = logging.getLogger("ray.serve")
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               413: "request_too_large", 503: "service_unavailable"}


def _error(status: int, message: str) -> JSONResponse:
    kind = ERROR_TYPES.get(status, "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}}, status)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return _error(exc.status_code, str(exc.detail))


@api.exception_handler(RequestValidationError)
async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(400, validation_problems(exc.errors()))


GUARD = {"token": None, "limit": 1 << 20}  # this replica's token and body limit, set in __init__
api.add_middleware(Guard, settings=GUARD, reply=_error)


class PolicyModel(BaseModel):
    """The deployment's user_config."""

    model_config = ConfigDict(extra="forbid")
    model: str
    name: str | None = None
    tracking_uri: str | None = None

    @property
    def served_name(self) -> str:
        if self.name:
            return self.name
        return model_name(self.model)


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
@serve.ingress(api)
class PolicyServer:
    def __init__(self, token_env: str | None = None, token_file: str | None = None, max_tokens: int = 1024,
                 max_body_bytes: int = 1 << 20, max_model_len: int = 2048, dtype: str = "auto",
                 enforce_eager: bool = True, kvcache_gib: int = 2, gpu_memory_utilization: float = 0.45,
                 seed: int = 0, max_choices: int = 64, allow_unauthenticated: bool = False):
        GUARD.update(token=read_token(token_env, token_file, allow_unauthenticated), limit=max_body_bytes)
        self.cap, self.max_choices = max_tokens, max_choices
        self.engine_args = {"max_model_len": max_model_len, "dtype": dtype, "enforce_eager": enforce_eager,
                            "kvcache_gib": kvcache_gib, "gpu_memory_utilization": gpu_memory_utilization, "seed": seed}
        self.engine: EngineLoop | None = None
        self.served: PolicyModel | None = None
        self.error: str | None = None

    async def reconfigure(self, user_config: dict) -> None:
        """Load the model `user_config` names beside the current one, then switch over."""
        try:
            cfg = PolicyModel.model_validate(user_config)
            if self.engine is not None and cfg == self.served:
                self.error = None  # back to the model that is serving: nothing to load
                return
            engine = await asyncio.to_thread(self._load, cfg)  # the old engine keeps serving meanwhile
        except Exception as exc:
            if self.engine is None:
                raise
            self.error = f"{type(exc).__name__}: {exc}"
            logger.error("policy not switched, %s keeps serving: %s", self.served.model, self.error)
            return
        old, self.engine, self.served, self.error = self.engine, engine, cfg, None
        if old is not None:
            old.close()  # frees it once its requests in flight are done
        logger.info("serving %s as %r", cfg.model, cfg.served_name)

    def _load(self, cfg: PolicyModel) -> EngineLoop:
        use_tracking(cfg.tracking_uri)
        folder = resolve(cfg.model)
        args = dict(self.engine_args)
        context = json.loads((folder / "config.json").read_text()).get("max_position_embeddings")
        if context and args["max_model_len"] > context:
            logger.warning("max_model_len %d is above %s's context of %d tokens: using %d", args["max_model_len"],
                           cfg.model, context, context)
            args["max_model_len"] = context
        return EngineLoop(str(folder), **args)

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "live"}

    @api.get("/readyz")
    def readyz(self) -> JSONResponse:
        served = self.served
        body = {"ready": self.engine is not None, "model": served and served.served_name,
                "source": served and served.model, "last_load_error": self.error}
        return JSONResponse(body, status_code=200 if self.engine is not None else 503)

    @api.get("/v1/models")
    def models(self) -> dict:
        if self.served is None:
            raise HTTPException(503, "no model loaded: give one in the deployment's user_config")
        return {"object": "list", "data": [{"id": self.served.served_name, "object": "model", "created": 0,
                                            "owned_by": "alignray", "root": self.served.model}]}

    @api.post("/v1/completions")
    async def completions(self, body: CompletionRequest):
        engine = self._admit(body)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) * body.n > self.max_choices:
            raise HTTPException(400, f"{len(prompts)} prompts x n={body.n} is {len(prompts) * body.n} completions;"
                                     f" this server answers at most {self.max_choices} per request")
        ids = [engine.tokenizer.encode(p) for p in prompts]
        if body.echo and body.stream:
            raise HTTPException(400, "echo is not supported with stream: true")
        return await self._respond(body, ids, body.max_tokens or 16, chat=False, top=body.logprobs,
                                   echo=prompts if body.echo else None)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatRequest):
        engine = self._admit(body)
        if not engine.tokenizer.chat_template:
            raise HTTPException(400, f"model {self.served.served_name!r} has no chat template; use /v1/completions")
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        text = engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = [engine.tokenizer.encode(text, add_special_tokens=False)]
        top = (body.top_logprobs or 0) if body.logprobs else None
        return await self._respond(body, ids, body.max_completion_tokens or body.max_tokens, chat=True, top=top)

    def _admit(self, body: Sampling) -> EngineLoop:
        if self.engine is None:
            raise HTTPException(503, "no model loaded: give one in the deployment's user_config")
        if body.model != self.served.served_name:
            raise HTTPException(404, f"model {body.model!r} is not served here; this server serves"
                                     f" {self.served.served_name!r} (GET /v1/models)")
        return self.engine

    async def _respond(self, body: Sampling, ids: list[list[int]], max_tokens: int | None, chat: bool,
                       top: int | None = None, echo: list[str] | None = None):
        """`top`: log-probs of the sampled tokens and the `top` likeliest at each position (None: no
        log-probs); `echo`: the prompts, shown (with their log-probs) before each completion."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        context = self.engine.max_model_len
        if max_tokens is not None and max_tokens > self.cap:
            raise HTTPException(400, f"max_tokens {max_tokens} is above this server's cap of {self.cap}")
        limit = max(1, max_tokens or min(self.cap, context - max(map(len, ids))))
        for i, prompt in enumerate(ids):
            if len(prompt) + limit > context:
                raise HTTPException(400, f"prompt {i} has {len(prompt)} tokens; with max_tokens {limit} that is"
                                         f" above the model's context of {context} tokens")
        try:
            params = SamplingParams(n=body.n, temperature=body.temperature, top_p=body.top_p, max_tokens=limit,
                                    stop=body.stop, seed=body.seed, presence_penalty=body.presence_penalty,
                                    frequency_penalty=body.frequency_penalty, output_kind=RequestOutputKind.DELTA,
                                    logprobs=top, prompt_logprobs=top if echo and top is not None else None)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        reply = Reply(chat, self.served.served_name)
        outputs = self._generate(ids, params)
        prompt_tokens = sum(map(len, ids))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(self._events(reply, outputs, body.n, prompt_tokens, include_usage, top),
                                     media_type="text/event-stream")
        texts, tokens, positions, reasons, generated = defaultdict(list), defaultdict(list), defaultdict(list), {}, 0
        prompt_positions: dict[int, list] = {}
        try:
            async for i, output in outputs:
                if output.prompt_logprobs:
                    prompt_positions[i] = list(output.prompt_logprobs)
                for choice in output.outputs:
                    key = i * body.n + choice.index
                    texts[key].append(choice.text)
                    tokens[key] += choice.token_ids
                    positions[key] += list(choice.logprobs or [])
                    generated += len(choice.token_ids)
                    reasons[key] = choice.finish_reason
        except Exception as exc:
            logger.exception("generation failed")
            raise HTTPException(500, f"generation failed: {type(exc).__name__}: {exc}") from None
        choices = []
        for key in range(len(ids) * body.n):
            text, i, logprobs = "".join(texts[key]), key // body.n, None
            if chat and top is not None:
                logprobs = chat_logprobs(tokens[key], positions[key], top, self._decode)
            elif top is not None:
                shown = (ids[i], prompt_positions.get(i, [None] * len(ids[i]))) if echo else ([], [])
                logprobs = completion_logprobs(shown[0] + tokens[key], shown[1] + positions[key], top, self._decode)
            if echo:
                text = echo[i] + text
            choices.append((text, reasons.get(key), logprobs))
        return reply.whole(choices, prompt_tokens, generated)

    def _decode(self, token_id: int, logprob) -> str:
        if logprob is not None and logprob.decoded_token is not None:
            return logprob.decoded_token
        return self.engine.tokenizer.decode([token_id])

    async def _events(self, reply: Reply, outputs: AsyncIterator, n: int, prompt_tokens: int,
                      include_usage: bool, top: int | None) -> AsyncIterator[str]:
        started, generated = set(), 0
        try:
            async for i, output in outputs:
                for choice in output.outputs:
                    key = i * n + choice.index
                    generated += len(choice.token_ids)
                    if choice.text or choice.finish_reason or key not in started:
                        logprobs = None
                        if top is not None:
                            shape = chat_logprobs if reply.chat else completion_logprobs
                            logprobs = shape(choice.token_ids, list(choice.logprobs or []), top, self._decode)
                        chunk = reply.chunk(key, choice.text, choice.finish_reason, key not in started, logprobs)
                        yield f"data: {json.dumps(chunk)}\n\n"
                        started.add(key)
            if include_usage:
                yield f"data: {json.dumps(reply.usage_chunk(prompt_tokens, generated))}\n\n"
        except Exception as exc:  # the status line is sent already: the error goes in the stream
            logger.exception("generation failed mid-stream")
            yield f"data: {json.dumps({'error': {'message': f'{type(exc).__name__}: {exc}', 'type': 'server_error'}})}\n\n"
        finally:  # also when the client goes away: abort what is still generating
            await outputs.aclose()
        yield "data: [DONE]\n\n"

    async def _generate(self, ids: list[list[int]], params) -> AsyncIterator[tuple[int, object]]:
        """(prompt index, vLLM output delta) for all prompts as they come; closing it aborts the rest."""
        merged: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, prompt: list[int]) -> None:
            try:
                try:
                    async for output in self.engine.generate(prompt, params):
                        await merged.put((i, output))
                except EngineClosed:  # replaced between admission and start: nothing was sent yet
                    async for output in self.engine.generate(prompt, params):
                        await merged.put((i, output))
                await merged.put((i, None))
            except Exception as exc:
                await merged.put((i, exc))

        tasks = [asyncio.create_task(pump(i, prompt)) for i, prompt in enumerate(ids)]
        try:
            running = len(tasks)
            while running:
                i, item = await merged.get()
                if item is None:
                    running -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield i, item
        finally:
            for task in tasks:
                task.cancel()


def build(args: dict) -> serve.Application:
    """`import_path: alignray.serve.policy:build`; `args` holds token_env / token_file /
    allow_unauthenticated / max_tokens (the cap) / max_choices (prompts x n per request) /
    max_body_bytes / max_model_len (lowered to the model's context) / dtype / enforce_eager /
    kvcache_gib (CPU) / gpu_memory_utilization (GPU; below one half, so that a switch can hold two
    models) / seed (the model comes from the deployment's user_config)."""
    return PolicyServer.bind(**args)
