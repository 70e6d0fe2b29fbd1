"""How a full HF state dict travels from the process that calls `SamplerPool.update_weights` (the
trainer's rank 0, or a driver) to every sampler: `sampler.weight_transfer`.

- `object_store`: one `ray.put` of a CPU copy, which every sampler fetches and loads with
  vLLM's `reload_weights`.
- `collective`: vLLM's weight-transfer engine API. The sender and every sampler form one
  process group (the sender is rank 0 and hosts the rendezvous; sampler `slot` is rank
  1 + slot) on the first update, and every update broadcasts the tensors in buckets of
  `sampler.weight_bucket_mb`. The engine is vLLM's `nccl` on GPU samplers and our `gloo`
  (alignray.sampling.gloo_engine) on CPU ones: the same trainer-side calls drive both.

A LoRA policy's adapter (`SamplerPool.update_adapter`) always takes the object store, to the
actors' `update_adapter`: a few MB.

Either raises `WeightSyncError` within `sampler.weight_sync_timeout_s` rather than hang. The
probe check stays in the pool, above the transport.
"""

from __future__ import annotations

import socket
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError

from alignray import logs

log = logs.get(__name__)


class WeightSyncError(RuntimeError):
    """A weight update failed or missed its deadline on some sampler."""


class WeightsRejected(WeightSyncError):
    """The samplers refused the weights before loading any (names or shapes do not fit)."""


def compact(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CPU copy of every tensor with storage of its own. A tensor that views a larger buffer
    (DeepSpeed ZeRO-1/2 flatten all parameters into one) would otherwise pickle the whole
    buffer, once per tensor: 137 GB for SmolLM2-135M's 0.6 GB."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state_dict.items()}


class WeightTransport(ABC):
    """Sends weights to a pool's actors and keeps the last ones for a replacement actor."""

    method = "update_weights"  # the actor's method that loads `last()` into a replacement

    @abstractmethod
    def send(
        self, actors: list, state_dict: Mapping[str, torch.Tensor], version: int, timeout_s: float,
        replace: Callable[[int, BaseException], None],
    ) -> None:
        """Load `state_dict` as `version` into every actor, or raise WeightSyncError
        (WeightsRejected if no sampler loaded anything). `replace(slot, cause)` starts a new
        actor in a dead one's place and loads `last()` into it."""

    @abstractmethod
    def last(self) -> ray.ObjectRef | None:
        """The last weights sent, in the object store, for an actor started since; None before
        the first update. The pool loads them into a replacement with `update_weights`."""

    def close(self) -> None:
        """Forget any group the actors form with this process (one was replaced or stopped)."""


class ObjectStoreTransport(WeightTransport):
    def __init__(self, method: str = "update_weights") -> None:
        self.method = method  # the actor's method that loads them: update_weights, or update_adapter
        self.ref: ray.ObjectRef | None = None

    def last(self) -> ray.ObjectRef | None:
        return self.ref

    def send(self, actors, state_dict, version, timeout_s, replace) -> None:
        previous, self.ref = self.ref, ray.put(compact(state_dict))
        calls = [getattr(a, self.method).remote(self.ref, version) for a in actors]
        ready, late = ray.wait(calls, num_returns=len(calls), timeout=timeout_s)
        for slot, call in enumerate(calls):
            if call in late:
                ray.kill(actors[slot], no_restart=True)
        if late:
            raise WeightSyncError(
                f"{len(late)} of {len(calls)} samplers did not load weights v{version} within"
                f" {timeout_s:.0f} s (sampler.weight_sync_timeout_s); they were stopped and will"
                " restart with these weights"
            )
        for slot, call in enumerate(calls):
            try:
                ray.get(call)
            except RayActorError as exc:
                replace(slot, exc)
            except ValueError as exc:  # rejected before loading, by every sampler alike
                self.ref = previous
                raise WeightsRejected(str(exc)) from exc


class _StateDictSource:
    """The state dict of the current update as a vLLM `WeightSource` (duck-typed, so that
    importing this module does not import vLLM): `metadata()` and iteration, in the same order,
    which is what the nccl and gloo trainer engines read."""

    def __init__(self) -> None:
        self.state_dict: Mapping[str, torch.Tensor] = {}

    def metadata(self):
        from vllm.distributed.weight_transfer import ParamMeta

        return [ParamMeta(k, v.dtype, tuple(v.shape)) for k, v in self.state_dict.items()]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self.state_dict.items())


class _PoolClient:
    """vLLM's `VLLMWeightSyncClient` over the pool's actors: sampler `slot` joins at rank
    offset + slot, and every call waits at most `timeout_s`."""

    def __init__(self, actors: list, timeout_s: float) -> None:
        self.actors, self.timeout_s, self.version = list(actors), timeout_s, 0

    def _all(self, calls: list) -> None:
        ray.get(calls, timeout=self.timeout_s)

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self._all([a.join_transfer.remote({**init_info, "rank_offset": init_info["rank_offset"] + slot})
                   for slot, a in enumerate(self.actors)])

    def start_weight_update(self) -> None:
        self._all([a.start_weight_update.remote() for a in self.actors])

    def update_weights(self, update_info: dict) -> None:
        self._all([a.receive_weights.remote(update_info) for a in self.actors])

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all([a.finish_weight_update.remote(self.version) for a in self.actors])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class CollectiveTransport(WeightTransport):
    def __init__(self, backend: str, bucket_mb: int) -> None:
        self.backend, self.bucket_bytes = backend, bucket_mb * 2**20
        self._source = _StateDictSource()
        self._engine = None  # the sender's vLLM trainer engine while the group stands
        self._client: _PoolClient | None = None
        self._ref: tuple[ray.ObjectRef, int] | None = None  # an object-store copy for a replacement
        self._version = 0

    def __getstate__(self) -> dict:  # a pool travels to the trainer without its group
        return {**self.__dict__, "_engine": None, "_client": None, "_source": _StateDictSource(), "_ref": None}

    def last(self) -> ray.ObjectRef | None:
        """The last weights sent, copied into the object store on first need: the sender keeps
        references to its tensors, which must not change until the next update (PPO updates
        the weights only after the rollout that follows a sync)."""
        if not self._source.state_dict:
            return None
        if self._ref is None or self._ref[1] != self._version:
            self._ref = (ray.put(compact(self._source.state_dict)), self._version)
        return self._ref[0]

    def _connect(self, actors: list, timeout_s: float) -> None:
        from vllm.distributed.weight_transfer import WeightTransferTrainerFactory

        address, port = ray.util.get_node_ip_address(), free_port()
        world = len(actors) + 1
        if self.backend == "nccl":
            from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

            info = NCCLTrainerInitInfo(
                address, port, world, packed=True, packed_buffer_size_bytes=self.bucket_bytes, rank=0
            )
        else:
            from alignray.sampling.gloo_engine import GlooTrainerInitInfo

            info = GlooTrainerInitInfo(address, port, world, self.bucket_bytes, timeout_s, rank=0)
        self._client = _PoolClient(actors, timeout_s)
        self._engine = WeightTransferTrainerFactory.trainer_init(info, client=self._client, source=self._source)
        log.debug("weight-transfer group %s:%d of %d (%s)", address, port, world, self.backend)

    def send(self, actors, state_dict, version, timeout_s, replace) -> None:
        checked = False
        try:
            # every sampler runs the same model: one says whether the weights fit
            ray.get(actors[0].check_weights.remote({k: tuple(v.shape) for k, v in state_dict.items()}), timeout=timeout_s)
            checked = True
            self._source.state_dict, self._version = state_dict, version
            if self._engine is None:
                self._connect(actors, timeout_s)
            self._client.version = version
            self._engine.send_weights()
        except Exception as exc:
            if not checked and isinstance(exc, ValueError):
                raise WeightsRejected(str(exc)) from exc
            # the group is broken and any sampler may hold half the weights
            self._source.state_dict, self._version = state_dict, version
            self.close()
            for actor in actors:
                ray.kill(actor, no_restart=True)
            why = "missed the deadline" if isinstance(exc, GetTimeoutError) else f"failed: {exc!r}"
            raise WeightSyncError(
                f"the {self.backend} broadcast of weights v{version} to {len(actors)} samplers {why}"
                f" (sampler.weight_sync_timeout_s = {timeout_s:.0f} s); every sampler was stopped and"
                " will restart with these weights"
            ) from exc

    def close(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            for actor in self._client.actors:  # the survivors leave the group
                actor.leave_transfer.remote()
        self._engine = self._client = None


def make_transport(kind: str, gpus_per_sampler: float, bucket_mb: int) -> WeightTransport:
    """`sampler.weight_transfer` -> a transport; `collective` is NCCL on GPU samplers, gloo on CPU."""
    if kind == "object_store":
        return ObjectStoreTransport()
    return CollectiveTransport("nccl" if gpus_per_sampler > 0 else "gloo", bucket_mb)
