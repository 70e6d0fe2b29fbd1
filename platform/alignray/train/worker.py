"""The training loop each Ray Train worker runs: a DeepSpeed engine over a deterministic data
order, with checkpoints that resume exactly (model, optimizer, scheduler, RNG, data position)."""

from __future__ import annotations

import time

import numpy as np
import ray
import ray.train
import torch

from alignray.config import TrainConfig
from alignray.models import lora
from alignray.train.data import DatasetError, Example
from alignray.train.engines import (
    autocasts,
    check_finite,
    engine,
    log_metrics,
    peak_rss_gib,
    rank_means,
    rank_sums,
    restore_checkpoint,
    save_checkpoint,
    to_training_dtypes,
)
from alignray.train.methods import METHODS


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
    *totals, count = rank_sums([sums[k] for k in keys] + [float(len(mine))])
    return {f"eval_{k}": total / max(1.0, count) for k, total in zip(keys, totals)}


def train_loop(lc: dict) -> None:
    import mlflow
    from transformers import AutoTokenizer

    cfg = TrainConfig.model_validate(lc["config"])
    t = cfg.trainer
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(t.seed + rank)
    tokenizer = AutoTokenizer.from_pretrained(lc["model_path"])
    method = METHODS[lc["kind"]](cfg, lc["pad_id"])
    model = method.load_model(lc["model_path"])
    if t.lora is not None:
        model = lora.wrap(model, t.lora, lc["base_ref"])
    model = to_training_dtypes(model, t)
    train, evals = ray.get(lc["train"]), ray.get(lc["eval"])
    # computed as the training forward passes compute, so DPO's reference log-probs match them
    with torch.autocast(next(model.parameters()).device.type, torch.bfloat16, enabled=autocasts(t)):
        method.prepare(model, train, rank, world)
        method.prepare(model, evals, rank, world)
    per_epoch, total = plan_steps(cfg, len(train))
    trained = engine(model, t, t.learning_rate, total, t.micro_batch_per_worker, t.gradient_accumulation_steps)
    trained.train()  # from_pretrained hands models over in eval mode: dropout (if the config has any) on
    step = restore_checkpoint({"deepspeed": trained}, total).get("step", 0)
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
            loss, metrics = method.loss(trained, batch)
            check_finite(loss, f"non-finite loss at step {step + 1}: training stopped; the last good"
                               " checkpoint is kept (lower trainer.learning_rate or check the data)")
            trained.backward(loss)
            trained.step()
            tokens += sum(len(s.ids) for ex in batch for s in ex.seqs)
            samples += len(batch)
            for k, v in {"loss": loss.item(), **metrics}.items():
                window[k] = window.get(k, 0.0) + v / t.gradient_accumulation_steps
        step += 1
        window_steps += 1
        at_end = step == stop
        logged = {}
        if step % t.log_every_steps == 0 or at_end:
            logged = rank_means({f"train_{k}": v / window_steps for k, v in window.items()})
            logged["lr"] = trained.lr_scheduler.get_last_lr()[0]
            logged["grad_norm"] = float(trained.get_global_grad_norm() or 0.0)
            elapsed = time.monotonic() - started
            logged["tokens_per_s"] = tokens * world / elapsed
            logged["samples_per_s"] = samples * world / elapsed
            logged["peak_rss_gib"] = peak_rss_gib()
            window, window_steps, tokens, samples, started = {}, 0, 0, 0, time.monotonic()
        if evals and (at_end or (t.eval_every_steps and step % t.eval_every_steps == 0)):
            logged.update(_evaluate(method, trained, evals, rank, world))
        if rank == 0:
            if logged:
                log_metrics(client, lc["run_id"], logged, step)
            progress.update.remote(step, logged.get("train_loss"))
        if step % t.checkpoint_every_steps == 0 or at_end:
            save_checkpoint({"deepspeed": trained}, t, tokenizer, {"step": step, "final": step == total}, logged)
