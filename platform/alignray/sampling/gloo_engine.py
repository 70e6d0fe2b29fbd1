"""vLLM weight-transfer engines over torch.distributed gloo: the CPU twin of vLLM's `nccl` engine.

Importing this module registers the backend `gloo` with vLLM's two factories
(`WeightTransferEngineFactory` for the inference worker, `WeightTransferTrainerFactory` for the
trainer), so an engine built with `WeightTransferConfig(backend="gloo")` and a trainer calling
`WeightTransferTrainerFactory.trainer_init(GlooTrainerInitInfo(...))` speak the same protocol as
the `nccl` pair: the trainer is rank 0 of a group of its own (a `TCPStore` it hosts and a
`ProcessGroupGloo` built on it, apart from any default group such as DeepSpeed's), the workers
join at `rank_offset` and up, and every update broadcasts the weights from rank 0 in buckets
of at most `bucket_bytes` (a larger tensor travels alone). The worker loads each bucket with
the model's `load_weights` inside vLLM's layerwise reload (`start_weight_update` /
`finish_weight_update`), as `reload_weights` does, so repacked CPU kernels are rebuilt.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch._C._distributed_c10d import BroadcastOptions, ProcessGroupGloo
from torch.distributed import PrefixStore, TCPStore
from vllm.distributed.weight_transfer import (
    TrainerWeightTransferEngine,
    WeightTransferEngine,
    WeightTransferEngineFactory,
    WeightTransferTrainerFactory,
)
from vllm.distributed.weight_transfer.base import (
    TrainerInitInfo,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)

BACKEND = "gloo"


@dataclass
class GlooInitInfo(WeightTransferInitInfo):
    """What a worker needs to join the trainer's group."""

    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    bucket_bytes: int
    timeout_s: float


@dataclass
class GlooTrainerInitInfo(TrainerInitInfo):
    """The trainer's side: it hosts the store at master_address:master_port as rank 0."""

    backend: ClassVar[str] = BACKEND

    master_address: str
    master_port: int
    world_size: int
    bucket_bytes: int
    timeout_s: float


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    """Per-update metadata: every tensor's name, dtype and shape, in send order."""

    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]


def join_group(address: str, port: int, rank: int, world_size: int, timeout_s: float) -> ProcessGroupGloo:
    """A gloo group of `world_size` processes; rank 0 hosts the TCPStore the others dial."""
    timeout = datetime.timedelta(seconds=timeout_s)
    store = TCPStore(address, port, world_size, is_master=rank == 0, timeout=timeout)
    options = ProcessGroupGloo._Options()
    options._timeout = timeout
    options._devices = [ProcessGroupGloo.create_default_device()]
    return ProcessGroupGloo(PrefixStore("alignray-weights", store), rank, world_size, options)


def _nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    return torch.Size(shape).numel() * dtype.itemsize


def buckets(sizes: Sequence[int], bucket_bytes: int) -> list[range]:
    """Consecutive index ranges whose sizes sum to at most bucket_bytes (one item if larger)."""
    out, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > bucket_bytes:
            out.append(range(start, i))
            start, total = i, 0
        total += size
    if start < len(sizes):
        out.append(range(start, len(sizes)))
    return out


def _broadcast(group: ProcessGroupGloo, buffer: torch.Tensor) -> None:
    options = BroadcastOptions()
    options.rootRank, options.rootTensor = 0, 0
    group.broadcast([buffer], options).wait()


class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """The inference worker's side."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo

    def __init__(self, config, vllm_config, device, model) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group: ProcessGroupGloo | None = None
        self.bucket_bytes = 0

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        rank = self.parallel_config.data_parallel_index * self.parallel_config.world_size + self.parallel_config.rank
        self.bucket_bytes = init_info.bucket_bytes
        self.group = join_group(
            init_info.master_address, init_info.master_port, init_info.rank_offset + rank,
            init_info.world_size, init_info.timeout_s,
        )

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("gloo weight transfer is not initialised: call init_weight_transfer_engine first")
        dtypes = [getattr(torch, d) for d in update_info.dtype_names]
        sizes = [_nbytes(s, d) for s, d in zip(update_info.shapes, dtypes, strict=True)]
        for bucket in buckets(sizes, self.bucket_bytes):
            buffer = torch.empty(sum(sizes[i] for i in bucket), dtype=torch.uint8)
            _broadcast(self.group, buffer)
            parts = buffer.split([sizes[i] for i in bucket])
            self.model.load_weights(
                (update_info.names[i], part.view(dtypes[i]).view(update_info.shapes[i]))
                for i, part in zip(bucket, parts)
            )

    def shutdown(self) -> None:
        self.group = None


class GlooTrainerWeightTransferEngine(TrainerWeightTransferEngine[GlooTrainerInitInfo]):
    """The trainer's side: rank 0 sends; other trainer ranks only replay the source."""

    init_info_cls = GlooTrainerInitInfo

    def __init__(self, *, client, source, is_sender: bool, bucket_bytes: int) -> None:
        super().__init__(client=client, source=source, is_sender=is_sender)
        self.bucket_bytes = bucket_bytes
        self.group: ProcessGroupGloo | None = None

    @classmethod
    def trainer_init(cls, init_info: GlooTrainerInitInfo, *, client, source=None) -> GlooTrainerWeightTransferEngine:
        if source is None:
            raise ValueError("the gloo weight transfer needs a WeightSource")
        engine = cls(client=client, source=source, is_sender=init_info.is_sender, bucket_bytes=init_info.bucket_bytes)
        if not engine.is_sender:
            return engine
        worker_info = GlooInitInfo(
            init_info.master_address, init_info.master_port, 1, init_info.world_size,
            init_info.bucket_bytes, init_info.timeout_s,
        )
        with ThreadPoolExecutor(max_workers=1) as pool:  # the workers block until all have joined
            joined = pool.submit(client.init_weight_transfer_engine, asdict(worker_info))
            engine.group = join_group(
                init_info.master_address, init_info.master_port, 0, init_info.world_size, init_info.timeout_s
            )
            joined.result()
        return engine

    def send_weights(self) -> None:
        meta = self.source.metadata()
        if not self.is_sender:
            for _ in self.source:
                pass
            return
        info = GlooUpdateInfo(
            [m.name for m in meta], [str(m.dtype).removeprefix("torch.") for m in meta], [list(m.shape) for m in meta]
        )
        self.client.start_weight_update()
        rpc = ThreadPoolExecutor(max_workers=1)
        try:  # the workers receive inside update_weights while this thread broadcasts
            received = rpc.submit(self.client.update_weights, asdict(info))
            self._broadcast(self.source, [_nbytes(m.shape, m.dtype) for m in meta])
            received.result()
        finally:
            rpc.shutdown(wait=False)  # a failed broadcast leaves the RPC waiting: never join it
        self.client.finish_weight_update()

    def _broadcast(self, pairs: Iterator, sizes: list[int]) -> None:
        tensors = [t for _, t in pairs]
        if [t.nbytes for t in tensors] != sizes:
            raise ValueError("the weight source yielded other tensors than its metadata() declared")
        for bucket in buckets(sizes, self.bucket_bytes):
            flat = torch.cat([tensors[i].detach().contiguous().view(-1).view(torch.uint8).cpu() for i in bucket])
            _broadcast(self.group, flat)

    def shutdown(self) -> None:
        self.group = None


WeightTransferEngineFactory.register_engine(BACKEND, GlooWeightTransferEngine)
WeightTransferTrainerFactory.register_engine(BACKEND, GlooTrainerWeightTransferEngine)
