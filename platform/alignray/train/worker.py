"""The training loop each Ray Train worker runs: a DeepSpeed engine over a deterministic data
order, with checkpoints that resume exactly (model, optimizer, scheduler, RNG, data position)."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist

from alignray.config import EngineConfig, TrainConfig
from alignray.models.precision import resolve_dtype, torch_dtype
from alignray.train.data import DatasetError, Example
from alignray.train.methods import METHODS

STATE_FILE = "trainer_state.json"


def deepspeed_config(t: EngineConfig, micro_batch: int, accumulation: int = 1) -> dict:
    zero: dict = {"stage": t.zero_stage}
    if t.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": t.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": resolve_dtype(t.precision) == "bfloat16"},
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


def plan_steps(cfg: TrainConfig, n_train: int) -> tuple[int, int]:
    """(steps per epoch, total steps) for `n_train` examples."""
    t = cfg.trainer
    per_step = t.micro_batch_per_worker * t.num_workers * t.gradient_accumulation_steps
    if n_train < per_step:
        raise DatasetError(
            f"{n_train} training examples are fewer than one step's {per_step}"
            " (micro_batch_per_worker x num_workers x gradient_accumulation_steps)"
        )
    per_epoch = n_train // per_step
    return per_epoch, t.max_steps or per_epoch * t.epochs


def micro_batch(order: np.ndarray, cfg: TrainConfig, within: int, micro: int, rank: int, world: int) -> list[int]:
    t = cfg.trainer
    per_step = t.micro_batch_per_worker * world * t.gradient_accumulation_steps
    start = within * per_step + (micro * world + rank) * t.micro_batch_per_worker
    return order[start : start + t.micro_batch_per_worker].tolist()


def _evaluate(method, engine, examples: list[Example], rank: int, world: int) -> dict[str, float]:
    mine = examples[rank::world]
    sums = {"loss": 0.0}
    engine.eval()
    with torch.no_grad():
        for i in range(0, len(mine), 8):
            chunk = mine[i : i + 8]
            loss, metrics = method.loss(engine, chunk)
            for k, v in {"loss": loss.item(), **metrics}.items():
                sums[k] = sums.get(k, 0.0) + v * len(chunk)
    engine.train()
    keys = sorted(sums)
    totals = torch.tensor([sums[k] for k in keys] + [float(len(mine))], dtype=torch.float64)
    dist.all_reduce(totals)
    count = max(1.0, totals[-1].item())
    return {f"eval_{k}": totals[i].item() / count for i, k in enumerate(keys)}


def _mean_over_ranks(metrics: dict[str, float]) -> dict[str, float]:
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(values)
    return {k: values[i].item() / dist.get_world_size() for i, k in enumerate(keys)}


def hf_state_dict(engine, zero_stage: int) -> dict | None:
    """The full model state dict on rank 0 (gathered from ZeRO-3 shards), None elsewhere.
    Every rank must call it (ZeRO-3 gathers collectively)."""
    if zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = engine.module.state_dict()
    return state if dist.get_rank() == 0 else None


def _save(engine, cfg, tokenizer, step: int, rank: int, metrics: dict, final: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(os.path.join(tmp, "deepspeed"), tag="state")
        torch.save(torch.get_rng_state(), os.path.join(tmp, f"rng_rank{rank}.pt"))
        state = hf_state_dict(engine, cfg.trainer.zero_stage)
        if rank == 0:
            engine.module.save_pretrained(os.path.join(tmp, "hf"), state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(os.path.join(tmp, "hf"))
            Path(tmp, STATE_FILE).write_text(json.dumps({"step": step, "final": final}))
        ray.train.report({**metrics, "step": step}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _restore(engine, rank: int) -> int:
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as folder:
        engine.load_checkpoint(os.path.join(folder, "deepspeed"), tag="state")
        torch.set_rng_state(torch.load(os.path.join(folder, f"rng_rank{rank}.pt")))
        return json.loads(Path(folder, STATE_FILE).read_text())["step"]


def train_loop(lc: dict) -> None:
    import deepspeed
    import mlflow
    from mlflow.entities import Metric
    from transformers import AutoTokenizer

    cfg = TrainConfig.model_validate(lc["config"])
    t = cfg.trainer
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(t.seed + rank)
    tokenizer = AutoTokenizer.from_pretrained(lc["model_path"])
    method = METHODS[lc["kind"]](cfg, lc["pad_id"])
    # In the training dtype from the start, so per-example values computed before the first
    # step (DPO's reference log-probs) match the training forward passes.
    model = method.load_model(lc["model_path"]).to(torch_dtype(t.precision))
    train, evals = ray.get(lc["train"]), ray.get(lc["eval"])
    method.prepare(model, train, rank, world)
    method.prepare(model, evals, rank, world)
    per_epoch, total = plan_steps(cfg, len(train))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, t.learning_rate, t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t, total))
    ds_config = deepspeed_config(t, t.micro_batch_per_worker, t.gradient_accumulation_steps)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    step = _restore(engine, rank)
    stop = min(total, t.stop_after_steps or total)
    client = mlflow.MlflowClient(lc["tracking_uri"]) if rank == 0 else None
    progress = lc["progress"]
    window: dict[str, float] = {}  # sums of per-step means since the last log
    window_steps, tokens, samples, started = 0, 0, 0, time.monotonic()
    while step < stop:
        epoch, within = divmod(step, per_epoch)
        order = np.random.default_rng([t.seed, epoch]).permutation(len(train))
        for micro in range(t.gradient_accumulation_steps):
            batch = [train[i] for i in micro_batch(order, cfg, within, micro, rank, world)]
            loss, metrics = method.loss(engine, batch)
            bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0])
            dist.all_reduce(bad)
            if bad.item():
                raise FloatingPointError(
                    f"non-finite loss at step {step + 1}: training stopped; the last good"
                    " checkpoint is kept (lower trainer.learning_rate or check the data)"
                )
            engine.backward(loss)
            engine.step()
            tokens += sum(len(s.ids) for ex in batch for s in ex.seqs)
            samples += len(batch)
            for k, v in {"loss": loss.item(), **metrics}.items():
                window[k] = window.get(k, 0.0) + v / t.gradient_accumulation_steps
        step += 1
        window_steps += 1
        at_end = step == stop
        logged = {}
        if step % t.log_every_steps == 0 or at_end:
            logged = _mean_over_ranks({f"train_{k}": v / window_steps for k, v in window.items()})
            logged["lr"] = scheduler.get_last_lr()[0]
            logged["grad_norm"] = float(engine.get_global_grad_norm() or 0.0)
            elapsed = time.monotonic() - started
            logged["tokens_per_s"] = tokens * world / elapsed
            logged["samples_per_s"] = samples * world / elapsed
            window, window_steps, tokens, samples, started = {}, 0, 0, 0, time.monotonic()
        if evals and (at_end or (t.eval_every_steps and step % t.eval_every_steps == 0)):
            logged.update(_evaluate(method, engine, evals, rank, world))
        if rank == 0:
            if logged:
                now = int(time.time() * 1000)
                client.log_batch(lc["run_id"], metrics=[Metric(k, float(v), now, step) for k, v in logged.items()])
            progress.update.remote(step, logged.get("train_loss"))
        if step % t.checkpoint_every_steps == 0 or at_end:
            _save(engine, cfg, tokenizer, step, rank, logged, final=step == total)
