"""The policy application's parts that need Ray Serve LLM and vLLM (seconds to import), built by
`alignray.serve.policy.build` once the model is found: the ingress (`api`, `PolicyIngress`) and
the `LLMServer` replicas' config."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
from ray.llm._internal.serve.core.ingress.ingress import init as ray_llm_fastapi_app
from ray.serve.llm import LLMConfig, build_llm_deployment
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

from alignray.config import PolicyArgs
from alignray.models.registry import model_name
from alignray.serve.common import Guard, has_token, json_errors, read_token, set_guard

api = ray_llm_fastapi_app()  # Ray's app: its error handling turns exceptions into OpenAI-style errors
json_errors(api)  # HTTP errors and invalid bodies in alignray's words (Ray's repeat the request's input)
api.add_middleware(Guard, name="policy")  # added last: runs first


def _prompts(prompt) -> int:
    """How many prompts a completions request's `prompt` holds (text, token ids, or a list of either)."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
        return 1
    return len(prompt)


class PolicyIngress(OpenAiIngress):
    """Ray Serve LLM's OpenAI ingress, plus this replica's token and body limit (the Guard in
    front of `api`), the caps per request, and the health routes."""

    def __init__(self, llm_deployments, model_cards, *, args: PolicyArgs, **kwargs):
        set_guard("policy", read_token(args.token_env, args.token_file, args.allow_unauthenticated), args.max_body_bytes)
        super().__init__(llm_deployments, model_cards, **kwargs)
        self.cap, self.max_choices = args.max_tokens, args.max_choices
        [self.server] = llm_deployments.values()

    def _limit(self, field: str, max_tokens: int | None, choices: int) -> None:
        """Refuse a request above the caps (one that leaves its length out gets the cap: the engine's
        default, `llm_config`)."""
        if max_tokens is not None and max_tokens > self.cap:
            raise HTTPException(400, f"{field} {max_tokens} is above this server's cap of {self.cap}")
        if choices > self.max_choices:
            raise HTTPException(400, f"{choices} completions (prompts x n) in one request; this server answers"
                                     f" at most {self.max_choices}")

    async def completions(self, body: CompletionRequest, request: Request):
        self._limit("max_tokens", body.max_tokens, _prompts(body.prompt) * (body.n or 1))
        return await super().completions(body, request)

    async def chat(self, body: ChatCompletionRequest, request: Request):
        if body.max_completion_tokens is not None:  # vLLM's precedence
            self._limit("max_completion_tokens", body.max_completion_tokens, body.n or 1)
        else:
            self._limit("max_tokens", body.max_tokens, body.n or 1)
        return await super().chat(body, request)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "live"}

    @api.get("/readyz")
    async def readyz(self, request: Request) -> JSONResponse:
        """200 when a model replica answers. With the bearer token also its model id and source,
        and the last failed deployment of this application (a model that did not load), if any."""
        try:
            served = await asyncio.wait_for(self.server.llm_config.remote(), 10)
        except Exception:  # no replica up yet (or none left)
            served = None
        body = {"ready": served is not None}
        if has_token("policy", request):
            app = (await asyncio.to_thread(serve.status)).applications.get(serve.get_replica_context().app_name)
            failed = app is not None and app.status in ("DEPLOY_FAILED", "UNHEALTHY")
            body |= {"model": served and served.model_id, "source": served and served.model_loading_config.model_source,
                     "last_load_error": (app.message or "failed") if failed else None}
        return JSONResponse(body, status_code=200 if served is not None else 503)


def _cpu_env(kvcache_gib: int) -> dict:
    env = {"VLLM_CPU_KVCACHE_SPACE": str(kvcache_gib), "TOKENIZERS_PARALLELISM": "false"}
    return env | {k: os.environ[k] for k in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_LOGGING_LEVEL", "HF_HUB_OFFLINE")
                  if k in os.environ}


def llm_config(args: PolicyArgs, folder: Path) -> LLMConfig:
    """Ray Serve LLM's config of the model in `folder` (what `args.model` resolved to), its
    context fitted."""
    served_name = args.name or model_name(args.model)
    context = json.loads((folder / "config.json").read_text()).get("max_position_embeddings")
    engine = {"max_model_len": min(args.max_model_len, context or args.max_model_len), "dtype": args.dtype,
              "enforce_eager": args.enforce_eager, "seed": args.seed,
              # the cap of every completion, also of those that leave max_tokens out (vLLM's default
              # would be the rest of the context)
              "override_generation_config": {"max_new_tokens": args.max_tokens}}
    deployment = {"max_surge_percent": 100, **args.deployment}  # old replicas serve until new ones are up
    if args.accelerator == "cpu":
        deployment["ray_actor_options"] = {"num_cpus": 0, **deployment.get("ray_actor_options", {})}
        return LLMConfig(model_loading_config={"model_id": served_name, "model_source": str(folder)},
                         engine_kwargs=engine, accelerator_config={"kind": "cpu"},
                         placement_group_config={"bundles": [{"CPU": args.cpus}]},
                         runtime_env={"env_vars": _cpu_env(args.kvcache_gib)}, deployment_config=deployment)
    return LLMConfig(model_loading_config={"model_id": served_name, "model_source": str(folder)},
                     engine_kwargs={**engine, "gpu_memory_utilization": args.gpu_memory_utilization},
                     deployment_config=deployment)


def application(args: PolicyArgs, folder: Path) -> serve.Application:
    """The application serving the model in `folder` as `args` say."""
    from alignray.serve.engine import PolicyEngine

    config = llm_config(args, folder)
    server = build_llm_deployment(config, bind_kwargs={"engine_cls": PolicyEngine})
    ingress = serve.deployment(make_fastapi_ingress(PolicyIngress, app=api), max_surge_percent=100,
                               ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
    return ingress.bind(llm_deployments={config.model_id: server},
                        model_cards={config.model_id: to_model_metadata(config.model_id, config)}, args=args)
