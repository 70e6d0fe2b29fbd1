"""One vLLM engine per Serve replica, stepped by a background thread so that concurrent
requests batch together (continuous batching) and stream their tokens as they come."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import queue
import threading
from collections.abc import AsyncIterator

from alignray.cluster import sampler_runtime_env

# vLLM's in-process engines share process-wide state (its parallel groups): building a new
# engine while another one steps breaks the running one, and so does shutting an old one down
# (see _run's end). So building (a model switch) pauses the other engines' steps for the
# seconds it takes; their requests wait, none fail.
_VLLM_STATE = threading.Lock()


class EngineClosed(RuntimeError):
    """The engine was replaced and has drained; send the request to the current one."""


class EngineLoop:
    """`generate()` is called from the replica's event loop; only the engine thread touches
    the vLLM engine. `close()` lets the requests in flight finish, then frees the engine."""

    def __init__(self, model_path: str, *, max_model_len: int, dtype: str, enforce_eager: bool,
                 kvcache_gib: int, gpu_memory_utilization: float, seed: int):
        for key, value in sampler_runtime_env(kvcache_gib)["env_vars"].items():
            os.environ.setdefault(key, value)  # vLLM reads these when the engine starts
        from vllm import LLM

        with _VLLM_STATE:
            self.llm = LLM(model=model_path, max_model_len=max_model_len, dtype=dtype, enforce_eager=enforce_eager,
                           gpu_memory_utilization=gpu_memory_utilization, seed=seed,
                           distributed_executor_backend="uni")
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
        self._inbox: queue.Queue = queue.Queue()
        self._outboxes: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._closing = self._closed = False
        self._thread = threading.Thread(target=self._run, name="vllm-engine", daemon=True)
        self._thread.start()

    async def generate(self, prompt_token_ids: list[int], params) -> AsyncIterator:
        """vLLM RequestOutputs for one prompt (as `params.output_kind` says) until finished;
        leaving early (client gone, task cancelled) aborts the request."""
        from vllm.inputs import TokensPrompt

        request_id = f"req-{next(self._ids)}"
        outbox: asyncio.Queue = asyncio.Queue()
        with self._lock:
            if self._closed:
                raise EngineClosed("engine replaced")
            self._outboxes[request_id] = (asyncio.get_running_loop(), outbox)
            self._inbox.put(("add", request_id, TokensPrompt(prompt_token_ids=prompt_token_ids), params))
        finished = False
        try:
            while not finished:
                item = await outbox.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self._inbox.put(("abort", request_id))

    def close(self) -> None:
        with self._lock:
            self._closing = True
        self._inbox.put(("wake",))

    def _deliver(self, request_id: str, item) -> None:
        target = self._outboxes.get(request_id)
        if target is None:
            return
        if isinstance(item, BaseException) or item.finished:
            del self._outboxes[request_id]
        loop, outbox = target
        try:
            loop.call_soon_threadsafe(outbox.put_nowait, item)
        except RuntimeError:  # the request's event loop is gone
            pass

    def _handle(self, command: tuple) -> None:
        engine = self.llm.llm_engine
        if command[0] == "add":
            _, request_id, prompt, params = command
            try:
                engine.add_request(request_id, prompt, params)
            except Exception as exc:  # e.g. a prompt longer than the context: that request fails
                self._deliver(request_id, exc)
        elif command[0] == "abort":
            engine.abort_request([command[1]])
            self._outboxes.pop(command[1], None)

    def _run(self) -> None:
        engine = self.llm.llm_engine
        while True:
            busy = engine.has_unfinished_requests() or self._closing  # closing: never wait for more
            try:
                self._handle(self._inbox.get(block=not busy))
                while True:
                    self._handle(self._inbox.get_nowait())
            except queue.Empty:
                pass
            with self._lock:
                if self._closing and not engine.has_unfinished_requests() and self._inbox.empty():
                    self._closed = True
                    break
            if not engine.has_unfinished_requests():
                continue
            try:
                with _VLLM_STATE:
                    outputs = engine.step()
            except Exception as exc:  # the engine broke: every request in it fails with the cause
                broken = list(self._outboxes)
                for request_id in broken:
                    self._deliver(request_id, exc)
                engine.abort_request(broken)
                continue
            for output in outputs:
                self._deliver(output.request_id, output)
        for request_id in list(self._outboxes):
            self._deliver(request_id, EngineClosed("engine replaced"))
        # The in-process engine's finalizer tears down vLLM's process-wide parallel groups,
        # which the engine that replaced this one uses: detach it, let the memory go.
        engine.engine_core._finalizer.detach()
        del engine
        with _VLLM_STATE:
            self.llm = None
            gc.collect()
