"""A pool of vLLM sampler actors that balances batches and survives the loss of an actor.

A batch is cut into requests of `prompts_per_request` prompts; each idle actor takes the next
request. When an actor dies (or misses the request deadline and is killed), a replacement is
started with the pool's current weights and only that actor's unfinished request runs again:
results come back in input order, each prompt exactly once.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from alignray.cluster import sampler_runtime_env
from alignray.config import SamplerConfig
from alignray.sampling.actor import SamplerActor
from alignray.sampling.cache import RequestCache, model_identity
from alignray.sampling.transport import (
    ObjectStoreTransport,
    WeightsRejected,
    WeightSyncError,
    WeightTransport,
    make_transport,
)
from alignray.sampling.types import Completion, Probe, SamplingSpec, Score


class SamplerPoolError(RuntimeError):
    """The pool lost more actors than allowed, or one could not start."""


# Keys that saving a checkpoint again may add or change without changing the model.
_SAVE_KEYS = {"dtype", "torch_dtype", "transformers_version", "_name_or_path", "name_or_path", "is_local",
              "local_files_only"}


def _settings(folder: Path, name: str) -> object:
    """A JSON file of a model folder without the keys a save may add; a text file as is; None if absent."""
    path = folder / name
    if not path.is_file():
        return None
    if name.endswith(".json") and name != "tokenizer.json":
        return {k: v for k, v in json.loads(path.read_text()).items() if k not in _SAVE_KEYS}
    return path.read_bytes()


def interchangeable(a: Path, b: Path) -> bool:
    """Whether the model in folder `b` can be loaded into an engine started on `a`: the same
    config, tokenizer, chat template and generation settings (only their weights differ)."""
    names = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "vocab.json", "merges.txt",
             "tokenizer.model")
    return all(_settings(a, n) == _settings(b, n) for n in names)


class SamplerPool:
    def __init__(
        self,
        model_path: str,
        cfg: SamplerConfig,
        *,
        dtype: str = "auto",
        seed: int = 0,
        startup_timeout_s: float = 600,
        cache_dir: Path | None = None,
        threads: int | None = None,
        node_id: str | None = None,
        sleep_mode: bool = False,
        lora: dict | None = None,
    ):
        """`cache_dir`: where answered requests are kept, one JSONL file per model; while the
        weights are the initial ones, requests found there are not sampled again (see
        alignray.sampling.cache). `threads`: CPU threads of each engine (default: its reserved
        CPUs); `node_id`: start every actor on that node; `sleep_mode`: engines can `sleep()`
        between uses to free GPU memory (see alignray.train.placement); `lora`: an adapter_config.json
        (peft's) of the adapters `update_adapter` sends."""
        self.cfg = cfg
        self.restarts = 0  # actors replaced so far
        self.requests_done = 0  # requests answered so far
        self.last_probe_diff: float | None = None  # of the last verified weight update
        self._transport = make_transport(cfg.weight_transfer, cfg.gpus_per_sampler, cfg.weight_bucket_mb)
        self.model_path = str(model_path)  # what every actor (and a replacement) loads
        self._args = (  # the rest of an actor's arguments
            dtype, cfg.max_model_len, cfg.enforce_eager, seed, cfg.gpu_memory_utilization, sleep_mode,
            threads, getattr(self._transport, "backend", None), lora,
        )
        self._adapters = ObjectStoreTransport("update_adapter")  # LoRA adapters travel whole: they are small
        self._startup_timeout_s = startup_timeout_s
        self._sleep_mode = sleep_mode
        self._remote = ray.remote(SamplerActor).options(
            num_cpus=cfg.cpus_per_sampler,
            num_gpus=cfg.gpus_per_sampler,
            max_restarts=0,
            runtime_env=sampler_runtime_env(cfg.kvcache_gib),
            # DEFAULT, not None: outside a caller's placement group (a sweep trial's holds only its driver)
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False) if node_id else "DEFAULT",
            **({"label_selector": dict(cfg.node_labels)} if cfg.node_labels else {}),
        )
        self.weights_version = 0  # of the last update sent (0: the initial weights)
        self.actors = [self._remote.remote(self.model_path, *self._args) for _ in range(cfg.num_samplers)]
        self.dtype = self._wait_ready(self.actors)[0]["dtype"]  # what `auto` resolved to
        self._cache_dir, self._seed = cache_dir, seed
        self._cache = self._open_cache()

    def _open_cache(self) -> RequestCache | None:
        if self._cache_dir is None:
            return None
        model = model_identity(self.model_path)
        return RequestCache(self._cache_dir / f"{model[:16]}.jsonl",
                            f"{model}|{self.dtype}|{self.cfg.max_model_len}|{self._seed}")

    def switch_model(self, model_path: str | Path) -> bool:
        """Load another model into the running engines instead of starting new ones (each
        start imports vLLM again: ~10 s on CPU), when it is a checkpoint of this model's
        architecture with its tokenizer and generation settings (`interchangeable`) and the
        pool holds a model's own weights (no update since). The pool is then as if started on
        it. Returns False, with nothing changed, otherwise."""
        if self.weights_version != 0:
            return False
        if str(model_path) == self.model_path:  # already loaded
            return True
        if not interchangeable(Path(self.model_path), Path(model_path)):
            return False
        self.model_path = str(model_path)  # a replacement starts on the new model
        for slot, actor in enumerate(self.actors):
            try:
                ray.get(actor.load_model.remote(self.model_path), timeout=self.cfg.weight_sync_timeout_s)
            except (RayActorError, GetTimeoutError) as exc:
                self._replace(slot, exc)
        self._cache = self._open_cache()
        return True

    def _wait_ready(self, actors: list) -> list[dict]:
        try:
            return ray.get([a.health.remote() for a in actors], timeout=self._startup_timeout_s)
        except GetTimeoutError:
            for actor in actors:
                ray.kill(actor, no_restart=True)
            gpus = f" and {self.cfg.gpus_per_sampler} GPUs" if self.cfg.gpus_per_sampler else ""
            raise SamplerPoolError(
                f"samplers did not start within {self._startup_timeout_s:.0f} s; check that"
                f" the cluster has {self.cfg.cpus_per_sampler} free CPUs{gpus} per sampler"
                f" (it has {ray.available_resources()})"
            ) from None

    def _replace(self, slot: int, cause: BaseException) -> None:
        self.restarts += 1
        if self.restarts > self.cfg.max_restarts:
            raise SamplerPoolError(
                f"lost sampler {slot} and the pool already replaced {self.cfg.max_restarts}"
                f" (sampler.max_restarts): {cause}"
            ) from cause
        ray.kill(self.actors[slot], no_restart=True)
        self._transport.close()  # a collective group is formed again, with the new actor
        actor = self._remote.remote(self.model_path, *self._args)
        self._wait_ready([actor])
        for transport in (self._transport, self._adapters):  # the last full weights, then the adapter on them
            ref = transport.last()
            if ref is not None:
                load = getattr(actor, transport.method)
                ray.get(load.remote(ref, self.weights_version), timeout=self.cfg.weight_sync_timeout_s)
        self.actors[slot] = actor

    def _replace_in_sync(self, slot: int, cause: BaseException) -> None:
        try:
            self._replace(slot, cause)
        except SamplerPoolError as lost:
            raise WeightSyncError(f"a sampler died while loading weights v{self.weights_version}: {lost}") from cause

    def _run(self, method: str, columns: Sequence[Sequence], desc: str | None) -> list:
        """Call `method` over row-aligned `columns`, spread over the actors, in input order."""
        n = len(columns[0])
        k = self.cfg.prompts_per_request
        chunks = [range(i, min(i + k, n)) for i in range(0, n, k)]
        request = lambda cid: [[col[i] for i in chunks[cid]] for col in columns]  # noqa: E731
        # Answers depend only on the request while the weights are the initial ones and every
        # sample has a seed: only then may an earlier run's answers stand in.
        cache = self._cache if self.weights_version == 0 and (
            method == "score" or all(spec.seed is not None for spec in columns[1])) else None
        keys = [cache.key(method, request(cid)) for cid in range(len(chunks))] if cache else []
        results: list = [None] * n
        todo, reused = deque(), 0
        for cid in range(len(chunks)):
            found = cache.get(method, keys[cid]) if cache else None
            if found is None:
                todo.append(cid)
                continue
            for i, value in zip(chunks[cid], found, strict=True):
                results[i] = value
            reused += len(chunks[cid])
        if reused:
            tqdm.write(f"{desc or method}: {reused} of {n} answered by an earlier run ({cache.path})")
        bar = tqdm(total=n, initial=reused, desc=desc, unit="prompt", disable=desc is None)
        idle = deque(range(len(self.actors)))
        inflight: dict[ray.ObjectRef, tuple[int, int, float]] = {}
        try:
            while todo or inflight:
                while todo and idle:
                    cid, slot = todo.popleft(), idle.popleft()
                    ref = getattr(self.actors[slot], method).remote(*request(cid))
                    deadline = time.monotonic() + self.cfg.request_timeout_s
                    inflight[ref] = (cid, slot, deadline)
                wait_s = max(0.0, min(d for _, _, d in inflight.values()) - time.monotonic())
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=wait_s)
                if not ready:  # the earliest request is late: its actor is lost
                    late = min(inflight, key=lambda r: inflight[r][2])
                    ray.kill(self.actors[inflight[late][1]], no_restart=True)
                    continue
                ref = ready[0]
                cid, slot, _ = inflight.pop(ref)
                try:
                    out = ray.get(ref)
                except RayActorError as exc:
                    self._replace(slot, exc)
                    todo.appendleft(cid)
                    idle.append(slot)
                    continue
                for i, value in zip(chunks[cid], out, strict=True):
                    results[i] = value
                if cache:
                    cache.put(keys[cid], out)
                bar.update(len(chunks[cid]))
                self.requests_done += 1
                idle.append(slot)
        finally:
            bar.close()
        return results

    def generate(
        self,
        prompts: Sequence[str],
        spec: SamplingSpec | Sequence[SamplingSpec],
        *,
        desc: str | None = None,
    ) -> list[list[Completion]]:
        """`spec.n` completions of each prompt; one spec for all (its seed becomes seed + the
        prompt's index) or one spec per prompt. `desc` shows a progress bar."""
        specs = [spec.for_prompt(i) for i in range(len(prompts))] if isinstance(
            spec, SamplingSpec
        ) else list(spec)
        if len(specs) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(specs)} sampling specs")
        return self._run("generate", [list(prompts), specs], desc) if prompts else []

    def score(
        self, prompts: Sequence[str], continuations: Sequence[str], *, desc: str | None = None
    ) -> list[Score]:
        """Log-probs of each continuation's tokens after its prompt."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        return self._run("score", [list(prompts), list(continuations)], desc) if prompts else []

    def update_weights(self, state_dict: Mapping[str, torch.Tensor], probe: Probe | None = None) -> int:
        """Push a full HF-format state dict to every sampler; return the weights version.

        A sampler that dies while loading is replaced by one started with these weights.
        Raises WeightSyncError if the samplers reject the weights, one misses
        `weight_sync_timeout_s` (it is stopped and restarts with these weights on the next
        call, so the pool never mixes versions silently), or, given a `probe`, a sampler
        scores the probe differently from the trainer (mean absolute log-prob difference over
        its tokens above `probe.tolerance`); `last_probe_diff` keeps the largest seen."""
        return self._update(self._transport, state_dict, probe)

    def update_adapter(self, tensors: Mapping[str, torch.Tensor], probe: Probe | None = None) -> int:
        """Push a LoRA adapter's tensors (peft's names; the pool was started with `lora`) to
        every sampler, which applies it to every request from then on; as `update_weights`
        otherwise."""
        return self._update(self._adapters, tensors, probe)

    def _update(self, transport: WeightTransport, tensors: Mapping[str, torch.Tensor], probe: Probe | None) -> int:
        version = self.weights_version = self.weights_version + 1  # what stopped samplers restart with
        try:
            transport.send(self.actors, tensors, version, self.cfg.weight_sync_timeout_s, self._replace_in_sync)
        except WeightsRejected:
            self.weights_version -= 1
            raise
        if probe is not None:
            self._verify(probe, version)
        return version

    def _score_probe(self, slot: int, probe: Probe) -> Score:
        call = self.actors[slot].score.remote([probe.prompt], [probe.continuation])
        return ray.get(call, timeout=self.cfg.weight_sync_timeout_s)[0]

    def _verify(self, probe: Probe, version: int) -> None:
        self.last_probe_diff = 0.0
        for slot in range(len(self.actors)):
            try:
                score = self._score_probe(slot, probe)
            except RayActorError as exc:  # replaced with these weights; check the new one
                self._replace(slot, exc)
                score = self._score_probe(slot, probe)
            got, want = score.token_logprobs, probe.token_logprobs
            same_tokens = len(got) == len(want)
            diff = sum(abs(a - b) for a, b in zip(got, want)) / max(1, len(want)) if same_tokens else float("inf")
            self.last_probe_diff = max(self.last_probe_diff, diff)
            if diff > probe.tolerance:
                raise WeightSyncError(
                    f"sampler {slot} does not reproduce the trainer's log-probs of the probe after"
                    f" loading weights v{version}: mean difference {diff:.2e} > {probe.tolerance:g}"
                )

    def sleep(self) -> None:
        """Free the engines' GPU memory until `wake_up` (a no-op without sleep_mode)."""
        if self._sleep_mode:
            ray.get([a.sleep.remote() for a in self.actors], timeout=self.cfg.request_timeout_s)

    def wake_up(self) -> None:
        if self._sleep_mode:
            ray.get([a.wake_up.remote() for a in self.actors], timeout=self.cfg.request_timeout_s)

    def health(self) -> list[dict]:
        out = []
        for slot, actor in enumerate(self.actors):
            try:
                out.append({"slot": slot, "alive": True, **ray.get(actor.health.remote(), timeout=30)})
            except (RayActorError, GetTimeoutError) as exc:
                out.append({"slot": slot, "alive": False, "error": str(exc)})
        return out

    def shutdown(self) -> None:
        self._transport.close()
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []

    def __enter__(self) -> SamplerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
