"""The reward-model application of Ray Serve: `POST /v1/score`, the PPO stage's remote reward.

Request: ``{"prompts": [str], "responses": [str]}``, or ``"messages"`` (one chat list per
response, rendered with the reward model's chat template) instead of ``"prompts"``. Answer:
``{"rewards": [[float per principle]], "principles": [str], "scalar": [float]}`` where
`scalar` is the configured scalarization (as in PPO). `GET /healthz` answers while the replica
lives, `GET /readyz` once a model is loaded. With a token configured (`token_env` names an
environment variable, or `token_file` a mounted secret), every request except the health
checks needs ``Authorization: Bearer <token>``.

The models come from the deployment's `user_config` (`models`: folders or `models:/` URIs,
`scalarize`, `weights`, `params`, `tracking_uri`): changing it loads the new models and
switches over; if the load fails the old models keep serving and `/readyz` reports the error.
A replica that cannot load its first models fails to start (Serve shows the error).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve

from alignray.config import RewardArgs, RewardConfig
from alignray.serve.common import Guard, has_token, json_errors, read_token, set_guard, use_tracking

api = FastAPI(title="alignray reward model")
json_errors(api)
api.add_middleware(Guard, name="reward")
logger = logging.getLogger("ray.serve")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: list[str] | None = None
    messages: list[Annotated[list[ChatMessage], Field(min_length=1)]] | None = None
    responses: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_prompt_form(self) -> ScoreRequest:
        given = self.prompts if self.prompts is not None else self.messages
        if (self.prompts is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompts' and 'messages'")
        if len(given) != len(self.responses):
            raise ValueError(f"{len(given)} prompts but {len(self.responses)} responses; give one per response")
        return self


@serve.deployment(ray_actor_options={"num_cpus": 1})
@serve.ingress(api)
class RewardServer:
    def __init__(self, args: RewardArgs):
        set_guard("reward", read_token(args.token_env, args.token_file, args.allow_unauthenticated), args.max_body_bytes)
        self.max_batch, self.max_length = args.max_batch, args.max_length
        self.models, self.cfg, self.error = None, None, None

    async def reconfigure(self, user_config: dict) -> None:
        """Load the models named in `user_config`; on failure keep serving the old ones."""
        from alignray.rewards.scorers import reward_source

        try:
            cfg = RewardConfig.model_validate({k: v for k, v in user_config.items() if k != "tracking_uri"})
            use_tracking(user_config.get("tracking_uri"))
            models = await asyncio.to_thread(reward_source, cfg, self.max_length)  # requests go on meanwhile
        except Exception as exc:  # any load failure: report it, keep the old models
            if self.models is None:
                raise
            self.error = f"{type(exc).__name__}: {exc}"
            logger.error("reward models not switched, the old ones keep serving: %s", self.error)
            return
        self.models, self.cfg, self.error = models, cfg, None
        logger.info("serving reward models %s", cfg.models)

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "live"}

    @api.get("/readyz")
    def readyz(self, request: Request):
        """200 once models are loaded; with the bearer token also their principles and the last
        failed load, if any."""
        body = {"ready": self.models is not None}
        if has_token("reward", request):
            body |= {"principles": getattr(self.models, "principles", None), "last_load_error": self.error}
        return JSONResponse(body, status_code=200 if self.models is not None else 503)

    @api.post("/v1/score")
    def score(self, body: ScoreRequest) -> dict:
        from alignray.rewards.scorers import scalar_reward

        if self.models is None:
            raise HTTPException(status_code=503, detail="no reward models: give them in the deployment's user_config")
        if len(body.responses) > self.max_batch:
            raise HTTPException(status_code=413, detail=f"{len(body.responses)} responses; at most {self.max_batch} per request")
        prompts = body.prompts if body.prompts is not None else [self._render(m) for m in body.messages]
        rewards = self.models(prompts, body.responses)
        return {"rewards": rewards.tolist(), "principles": self.models.principles,
                "scalar": scalar_reward(rewards, self.cfg).tolist()}

    def _render(self, messages: list[ChatMessage]) -> str:
        from alignray.rewards.scorers import LocalRewardModels

        if not isinstance(self.models, LocalRewardModels):
            raise HTTPException(status_code=400, detail="'messages' needs local reward models (a chat template); send 'prompts'")
        tokenizer = self.models.models[0][0].tok
        if not tokenizer.chat_template:
            raise HTTPException(status_code=400, detail="the reward model's tokenizer has no chat template; send 'prompts'")
        return tokenizer.apply_chat_template([m.model_dump() for m in messages], tokenize=False,
                                             add_generation_prompt=True)


def build(args: dict) -> serve.Application:
    """`import_path: alignray.serve.reward:build`; `args` as `alignray.config.RewardArgs` (the
    models come from the deployment's user_config)."""
    return RewardServer.bind(RewardArgs.model_validate(args))
