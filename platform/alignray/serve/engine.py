"""The vLLM engine of a policy replica: Ray Serve LLM's own, with two changes.

- `/tokenize` and `/detokenize` reconnected to vLLM. Ray 2.60's `VLLMEngine.start`
  (ray/llm/_internal/serve/engines/vllm/vllm_engine.py) looks for vLLM's tokenization server on
  the app state as `openai_serving_tokenization`; vLLM 0.32 names it `serving_tokenization`
  (vllm/entrypoints/launchers/api_server/app_state.py, `init_app_state`). Without this the two
  routes answer 400 "does not support the 'tokenization' task".
- On CPU, a one-process engine runs its model in vLLM's engine-core process (`uni`), not in a
  third process: Ray's `VLLMEngineConfig.get_initialization_kwargs` sets the `mp` executor for
  every CPU engine, which spawns one more Python process (vLLM and torch imported once more)
  per replica for nothing when there is one worker.

Remove each when Ray does it itself (its own `llm` extra pins an older vLLM)."""

from __future__ import annotations

from ray.llm._internal.serve.engines.vllm.vllm_engine import VLLMEngine


class PolicyEngine(VLLMEngine):
    async def start(self) -> None:
        await super().start()
        if self._oai_serving_tokenization is None:
            self._oai_serving_tokenization = getattr(self._app_state, "serving_tokenization", None)

    def _start_async_llm_engine(self, vllm_engine_args, vllm_engine_config, placement_group):
        parallel = vllm_engine_config.parallel_config
        if vllm_engine_config.device_config.device_type == "cpu" and parallel.world_size == 1:
            parallel.distributed_executor_backend = "uni"
        return super()._start_async_llm_engine(vllm_engine_args, vllm_engine_config, placement_group)
