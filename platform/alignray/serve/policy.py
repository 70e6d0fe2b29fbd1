"""The policy application of Ray Serve: Ray Serve LLM's OpenAI-compatible app (`ray.serve.llm`:
an ingress in front of `LLMServer` replicas, each running vLLM's own OpenAI server code), with
alignray's parts around it: the bearer token and body limit (checked before a body is read),
`models:/name@alias` sources, the server's caps on `max_tokens` and on completions per request,
and `GET /healthz` / `GET /readyz`.

Routes are vLLM's: `/v1/completions`, `/v1/chat/completions` (streaming, log-probs, `echo`),
`/v1/models`, `/tokenize`, `/detokenize`. The model is the app's `args.model`; deploying the
config with another one rolls the replicas, and the old ones keep serving until the new ones
are up (`max_surge_percent: 100`), or for good if they fail.
"""

from __future__ import annotations

from alignray.config import PolicyArgs
from alignray.models.registry import resolve
from alignray.serve.common import use_tracking


def build(args: dict):
    """`import_path: alignray.serve.policy:build`; `args` as `alignray.config.PolicyArgs`. The
    args are checked and the model found before Ray Serve LLM and vLLM are imported: Serve builds
    an application in a new process and tries a failing build four times, so a wrong model fails
    the deployment in seconds, not minutes. Returns a `ray.serve.Application`."""
    cfg = PolicyArgs.model_validate(args)
    use_tracking(cfg.tracking_uri)
    folder = resolve(cfg.model)
    from alignray.serve.policy_app import application

    return application(cfg, folder)
