"""What every training loop on a Ray Train worker shares (:mod:`alignray.train.worker` for
preference / SFT / DPO / RRHF, :mod:`alignray.train.ppo_loop` for PPO): DeepSpeed engines with
their optimiser and schedule, checkpoints that resume exactly (engines with optimisers and
schedulers, RNG, the loop's own state), the non-finite guard and reductions over ranks."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import ray
import ray.train
import torch
import torch.distributed as dist

from alignray.config import EngineConfig, TrainerConfig
from alignray.models import lora
from alignray.models.precision import resolve_dtype, torch_dtype

STATE_FILE = "trainer_state.json"  # the loop's state in a checkpoint: step, final, and what the loop adds


def autocasts(t: EngineConfig) -> bool:
    """Whether the engine keeps float32 weights and autocasts to bfloat16 (trainer.bf16_mode
    autocast), rather than holding bfloat16 weights (DeepSpeed's bf16 mode) or running float32."""
    return resolve_dtype(t.precision) == "bfloat16" and isinstance(t, TrainerConfig) and t.bf16_mode == "autocast"


def weights_dtype(t: EngineConfig) -> torch.dtype:
    """The dtype the trained weights are held in."""
    return torch.float32 if autocasts(t) else torch_dtype(t.precision)


def to_training_dtypes(model: torch.nn.Module, t: EngineConfig) -> torch.nn.Module:
    """The model with its trained weights in `weights_dtype` and its frozen ones (LoRA's base)
    in the compute dtype: under autocast a frozen base needs no float32 copy."""
    model = model.to(weights_dtype(t))
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch_dtype(t.precision))
    return model


def deepspeed_config(t: EngineConfig, micro_batch: int, accumulation: int = 1) -> dict:
    zero: dict = {"stage": t.zero_stage}
    if t.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    bf16 = resolve_dtype(t.precision) == "bfloat16"
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": t.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16 and not autocasts(t)},
        "torch_autocast": {"enabled": autocasts(t), "dtype": "bfloat16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


def adamw(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel (CPU and GPU): one pass over the weights instead of one
    per operation; on SmolLM2's 135M float32 master weights a step takes 0.76 s instead of 1.28 s
    (2 CPU threads)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def lr_lambda(t: EngineConfig, total_steps: int):
    def factor(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / (t.warmup_steps + 1)
        progress = (step - t.warmup_steps) / max(1, total_steps - t.warmup_steps)
        if t.lr_schedule == "linear":
            return max(0.0, 1.0 - progress)
        if t.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def engine(model: torch.nn.Module, t: EngineConfig, lr: float, total_steps: int, micro_batch: int, accumulation: int = 1):
    """A DeepSpeed engine over the model's trainable parameters: fused AdamW at `lr` under
    trainer.lr_schedule over `total_steps` optimiser steps."""
    import deepspeed

    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr, t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t, total_steps))
    config = deepspeed_config(t, micro_batch, accumulation)
    trained = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)[0]
    if t.zero_stage == 0 and dist.get_world_size() == 1:  # one rank: no gradient to average, and DeepSpeed's
        trained.enable_backward_allreduce = False        # all-reduce would copy each one twice (0.18 s/step, docs/benchmarks.md)
    return trained


def hf_state_dict(engine, zero_stage: int) -> dict | None:
    """The full model state dict on rank 0 (gathered from ZeRO-3 shards), None elsewhere.
    Every rank must call it (ZeRO-3 gathers collectively)."""
    if zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = engine.module.state_dict()
    return state if dist.get_rank() == 0 else None


def rank_sums(values: list[float]) -> list[float]:
    """Element-wise sums over every rank (in float64)."""
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def peak_rss_gib() -> float:
    """The largest resident memory any rank's process has had so far, GiB (ru_maxrss is in KiB)."""
    import resource

    t = torch.tensor([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def rank_means(metrics: dict[str, float]) -> dict[str, float]:
    keys = sorted(metrics)
    return {k: v / dist.get_world_size() for k, v in zip(keys, rank_sums([metrics[k] for k in keys]))}


def check_finite(value: torch.Tensor, message: str) -> None:
    """Raise FloatingPointError(message) on every rank when any rank's value has a NaN or inf,
    so all stop together and the last checkpoint stays the last good one."""
    if rank_sums([0.0 if bool(torch.isfinite(value).all()) else 1.0])[0]:
        raise FloatingPointError(message)


def _has_frozen(engine) -> bool:
    return any(not p.requires_grad for p in engine.module.parameters())


def save_checkpoint(engines: dict, t: EngineConfig, tokenizer, state: dict, metrics: dict) -> None:
    """Report a checkpoint to Ray Train: every engine (weights, optimiser, scheduler) in a
    folder of its name, every rank's RNG, and on rank 0 the first engine's model as a Hugging
    Face folder `hf` (in the training precision's dtype) and `state` (with at least step and
    final) as STATE_FILE. Every rank calls it."""
    rank = dist.get_rank()
    with tempfile.TemporaryDirectory() as tmp:
        for name, e in engines.items():  # frozen weights (LoRA's base) are the starting model's: not saved again
            e.save_checkpoint(os.path.join(tmp, name), tag="state", exclude_frozen_parameters=_has_frozen(e))
        torch.save(torch.get_rng_state(), os.path.join(tmp, f"rng_rank{rank}.pt"))
        first = next(iter(engines.values()))
        weights = hf_state_dict(first, t.zero_stage)
        if rank == 0:
            lora.save(first.module, os.path.join(tmp, "hf"), weights, torch_dtype(t.precision))
            tokenizer.save_pretrained(os.path.join(tmp, "hf"))
            Path(tmp, STATE_FILE).write_text(json.dumps(state))
        ray.train.report({**metrics, "step": state["step"]}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def restore_checkpoint(engines: dict, total: int) -> dict:
    """Load the run's last checkpoint into the engines and this rank's RNG; the loop's state,
    or {} when the run starts fresh. A finished run whose engine states were dropped
    (`drop_resume_state`) loads nothing when it has no step left below `total`, and raises
    RuntimeError when asked for more."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as folder:
        state = json.loads(Path(folder, STATE_FILE).read_text())
        if not all(os.path.isdir(os.path.join(folder, name)) for name in engines):
            if state["step"] >= total:
                return state
            raise RuntimeError(f"this run finished at step {state['step']} and its optimizer state was dropped then"
                               f" (trainer.keep_final_state: false), so it cannot go on to step {total}; give the longer"
                               " run another run_name")
        for name, e in engines.items():
            e.load_checkpoint(os.path.join(folder, name), tag="state", load_module_strict=not _has_frozen(e))
        torch.set_rng_state(torch.load(os.path.join(folder, f"rng_rank{dist.get_rank()}.pt")))
        return state


def drop_resume_state(run_dir: Path) -> int:
    """A finished run's disk, freed: the engine states (every folder but the model, hf/) in each
    of its checkpoints. The checkpoint folders stay: Ray Train's run snapshot lists them, and a
    run folder missing one cannot be opened again. Returns the bytes freed."""
    doomed = [d for c in run_dir.glob("checkpoint_*") if c.is_dir() for d in c.iterdir() if d.is_dir() and d.name != "hf"]
    freed = sum(f.stat().st_size for d in doomed for f in d.rglob("*") if f.is_file())
    for d in doomed:
        shutil.rmtree(d)
    return freed


def log_metrics(client, run_id: str, metrics: dict[str, float], step: int) -> None:
    """One MLflow batch of the step's metrics (rank 0 calls it)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


class Phases:
    """Wall seconds of the named phases of one iteration: `with phases("rollout"): ...`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.started = time.monotonic()

    @contextmanager
    def __call__(self, name: str):
        tick = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - tick

    def total(self) -> float:
        return time.monotonic() - self.started
