"""The vLLM engine of a policy replica: Ray Serve LLM's own, with `/tokenize` and `/detokenize`
reconnected to vLLM.

Ray 2.60's `VLLMEngine.start` (ray/llm/_internal/serve/engines/vllm/vllm_engine.py) looks for
vLLM's tokenization server on the app state as `openai_serving_tokenization`; vLLM 0.32 names it
`serving_tokenization` (vllm/entrypoints/launchers/api_server/app_state.py, `init_app_state`).
Without this the two routes answer 400 "does not support the 'tokenization' task". Remove this
module when Ray reads the new name (its own `llm` extra pins an older vLLM)."""

from __future__ import annotations

from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine


class PolicyEngine(VLLMEngine):
    async def start(self) -> None:
        await super().start()
        if self._oai_serving_tokenization is None:
            self._oai_serving_tokenization = getattr(self._app_state, "serving_tokenization", None)
