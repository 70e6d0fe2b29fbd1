"""Where a preference-model step's time goes: alignray's DeepSpeed engine in its bf16 modes, with and without length
buckets, against the recipe TRL's RewardTrainer runs (float32 weights, bf16 autocast, torch's fused AdamW, one batch
padded to the longest), on the same batches, in one process.

benchmarks/train_step.py measures alignray's preference step against TRL's RewardTrainer. This script takes the
step apart, on alignray's own tokenized pairs (`alignray.train.data.load`) and loss (`PreferenceMethod.loss`), with
one DeepSpeed rank (gloo, world size 1, no Ray) and the same threads for every side. A side is ENGINE:BATCHING:

- ENGINE `ds-weights`: `alignray.train.engines.engine` with trainer.bf16_mode=weights (DeepSpeed's bf16 mode:
  bfloat16 weights and activations, float32 master weights and AdamW state in its BF16_Optimizer);
  `ds-autocast`: the same with trainer.bf16_mode=autocast (alignray's default: float32 weights, DeepSpeed's
  torch_autocast to bfloat16); `autocast`: the model in float32 under `torch.autocast("cpu", torch.bfloat16)`,
  `torch.optim.AdamW(fused=True)`, gradient-norm clip 1.0: what TRL's Trainer does with `bf16=True` on CPU;
  `ds-fp32` and `fp32`: DeepSpeed and plain torch in float32, to separate the engine from the dtype. DeepSpeed sides
  are one ZeRO-0 rank, so like alignray on one rank they skip DeepSpeed's gradient all-reduce.
- BATCHING `one`: the pairs' 2B sequences padded to the longest, one forward pass (TRL's way, and alignray's before
  length buckets); `buckets`: `alignray.train.batch.bucketed` (alignray's default: runs of the sorted lengths, padded
  separately; `--overhead` sets BUCKET_OVERHEAD, the padded token slots one more pass is taken to cost).

Each step is timed in three parts: forward + loss, backward, optimizer (engine.step(), or clip + step + zero_grad).
The padding line says how many token slots each batching pads.

    .venv/bin/python benchmarks/pref_step_breakdown.py              # SmolLM2-135M-Instruct, ~5 min on 2 cores
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from train_step import make_rows

from alignray.host import cpu_summary
from alignray.models.tokens import BUCKET_OVERHEAD, length_buckets
from alignray.train.engines import weights_dtype

PARTS = ("forward", "backward", "optimizer", "step")


def init_single_rank() -> None:
    import torch.distributed as dist

    from alignray.sampling.transport import free_port

    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())})
    dist.init_process_group("gloo", rank=0, world_size=1)


def batches(model_dir: Path, rows: list[dict], args):
    from alignray.config import TrainConfig, load_config
    from alignray.train import data

    with tempfile.TemporaryDirectory() as tmp:
        parquet = Path(tmp, "pairs.parquet")
        pd.DataFrame(rows).to_parquet(parquet)
        cfg = load_config(None, [f"dataset={parquet}", f"model.name={model_dir}", "trainer.eval_fraction=0",
                                 "trainer.num_workers=1", f"trainer.micro_batch_per_worker={args.batch}",
                                 f"trainer.precision={'bf16'}", "trainer.zero_stage=0",
                                 f"trainer.learning_rate={args.lr}"], TrainConfig)
        tokenizer = data.load_tokenizer(model_dir)
        train = data.load("preference", cfg, tokenizer).train
    steps = [train[i * args.batch:(i + 1) * args.batch] for i in range(len(train) // args.batch)][: args.steps]
    return cfg, tokenizer.pad_token_id, steps


def run(side: str, cfg, pad_id: int, model_dir: Path, steps: list, args) -> dict[str, list[float]]:
    from alignray.train import batch as batching
    from alignray.train.engines import engine
    from alignray.train.preference import PreferenceMethod

    kind, grouping = side.split(":")
    bf16 = kind in ("ds-weights", "ds-autocast", "autocast")
    mode = "weights" if kind == "ds-weights" else "autocast"
    cfg = cfg.model_copy(update={"trainer": cfg.trainer.model_copy(
        update={"precision": "bf16" if bf16 else "fp32", "bf16_mode": mode})})
    batching.length_buckets = lambda lengths: length_buckets(lengths, args.overhead)
    method = PreferenceMethod(cfg, pad_id)
    method.split = grouping == "buckets"
    torch.manual_seed(0)
    model = method.load_model(str(model_dir))
    if kind.startswith("ds-"):
        trained = engine(model.to(weights_dtype(cfg.trainer)), cfg.trainer, args.lr, len(steps), args.batch)
        backward, optimize = trained.backward, trained.step
    else:
        trained = model
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, fused=True)

        def backward(loss):
            loss.backward()

        def optimize():
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    trained.train()
    context = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if kind == "autocast" else contextlib.nullcontext
    times: dict[str, list[float]] = {p: [] for p in PARTS}
    for k, batch in enumerate(steps):
        t0 = time.perf_counter()
        with context():
            loss, _ = method.loss(trained, batch)
        t1 = time.perf_counter()
        backward(loss)
        t2 = time.perf_counter()
        optimize()
        t3 = time.perf_counter()
        if k >= args.warmup:
            for part, dt in zip(PARTS, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                times[part].append(dt)
    return times


def padded_slots(steps: list, overhead: int | None) -> int:
    """Token slots the steps' forward passes hold: one batch each (overhead None) or length buckets."""
    total = 0
    for b in steps:
        lengths = [len(s.ids) for ex in b for s in ex.seqs]
        groups = [list(range(len(lengths)))] if overhead is None else length_buckets(lengths, overhead)
        total += sum(len(g) * max(lengths[i] for i in g) for g in groups)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step (as train_step.py)")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--sides", default="ds-weights:one,ds-autocast:one,ds-autocast:buckets,autocast:one",
                        help="comma-separated ENGINE:BATCHING (see above)")
    parser.add_argument("--overhead", type=int, default=BUCKET_OVERHEAD, help="BUCKET_OVERHEAD for `buckets` sides")
    args = parser.parse_args()

    from alignray.models.registry import prepare

    model_dir = prepare("smollm2-135m-instruct")
    cfg, pad_id, steps = batches(model_dir, make_rows(args.batch * args.steps), args)
    real = sum(len(s.ids) for b in steps for ex in b for s in ex.seqs)
    init_single_rank()
    results = {side: run(side, cfg, pad_id, model_dir, steps, args) for side in args.sides.split(",")}

    mean = statistics.mean
    print(f"\nCPU: {cpu_summary()}; torch threads {torch.get_num_threads()}")
    print(f"SmolLM2-135M-Instruct preference model, {args.batch} pairs/step, means over steps {args.warmup + 1}.."
          f"{args.steps}; {real} real tokens")
    for label, overhead in (("one", None), (f"buckets (overhead {args.overhead})", args.overhead)):
        slots = padded_slots(steps, overhead)
        print(f"padding, {label}: {slots - real} of {slots} token slots ({(slots - real) / slots:.0%})")
    width = max(20, *(len(s) + 2 for s in results))
    print(f"{'s / step':<12}" + "".join(f"{s:>{width}}" for s in results) + "\n" + "-" * (12 + width * len(results)))
    for part in PARTS:
        print(f"{part:<12}" + "".join(f"{mean(t[part]):>{width}.3f}" for t in results.values()))


if __name__ == "__main__":
    main()
