"""Training-step throughput: alignray's DPO and preference-model steps vs TRL's DPOTrainer and RewardTrainer.

Both sides of a pair train the same model on the same (prompt, chosen, rejected) rows with the same pairs per step,
learning rate, linear decay, grad-norm clip 1.0 and --dtype, in one process each: alignray via `fit` on Ray
Train + DeepSpeed ZeRO-0 with one worker given all cores (Ray caps a worker's torch threads at its CPUs); TRL in
this process without `accelerate launch`, gradient checkpointing off (TRL's default is on; alignray has none). Each
side uses torch's fused AdamW (alignray's default; TRL's adamw_torch_fused). DPO reference log-probs are
precomputed once on both sides, so a DPO step is the policy's forward, backward and update. Per pair alignray runs
first, then TRL (Ray stays up, idle).

samples/s: mean of the per-step rates after the warm-up steps; a sample is one pair = 2 sequences.
MFU = 6 * N * tokens/s / peak. N counts the weights of every nn.Linear (all matmul parameters: the LM head for DPO,
the 1-output score head for the preference model; not the embedding lookup); tokens are the unpadded prompt+response
tokens of both sequences; attention-score FLOPs are left out (~1.5% for SmolLM2 here). peak: the best of two ~2 s
runs (before and after training) of torch.mm on 2048x2048 matrices of --dtype with torch's default threads.
--dtype bf16: both autocast the matmuls to bf16 over fp32 weights (alignray's default trainer.bf16_mode, through
DeepSpeed's torch_autocast; TRL with `bf16=True`). alignray pads each length bucket of a step's sequences apart
(`alignray.train.batch.bucketed`), TRL pads every sequence to the longest.
Other load on the machine skews everything: see the load-average line and the per-step stdev.

    .venv/bin/python benchmarks/train_step.py                     # SmolLM2-135M-Instruct, ~9 min on 2 cores
    .venv/bin/python benchmarks/train_step.py --model tiny        # smoke run on a tiny random Llama, ~1 min
"""

from __future__ import annotations

import os

for _key, _value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)  # before Ray starts, so its workers inherit them

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from flops import linear_params, peak_flops
from alignray.host import cpu_summary

TOPICS = ["bake sourdough bread", "fix a leaking kitchen tap", "learn to juggle three balls", "plan cheap meals",
          "start running after a long break", "write a polite complaint letter", "keep basil alive indoors",
          "teach a dog to sit", "save money on heating", "prepare for a job interview", "clean a cast iron pan",
          "choose a first telescope", "learn chess", "calm down before an exam", "paint a bedroom", "back up photos"]
OPENERS = ["", "Quick question.", "I have wondered about this for a while.", "A friend asked me this today."]
QUESTIONS = ["How do I {}?", "What is the best way to {}?", "Can you explain how to {} for a beginner?"]
HELPFUL = ["Start slowly and check each step before you move on to the next one.", "Write down what worked so that "
           "you can repeat it next time.", "Gather everything you need first, because it saves a lot of time later.",
           "A short practice every day works better than one long session a week.", "Most beginners make the same "
           "small mistakes, so do not worry.", "If anything feels unsafe, stop and ask someone with more experience."]
UNHELPFUL = ["I do not know, figure it out yourself.", "That sounds boring and I would rather not say.",
             "Just search for it like everyone else does.", "Honestly it does not matter how you do it.",
             "Why would anyone even want to do that?", "It is too complicated for you, so forget it."]


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """n varied (prompt, chosen, rejected) rows; responses start with a space, so both sides see the same text."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        question = f"{rng.choice(OPENERS)} {rng.choice(QUESTIONS).format(topic)}".strip()
        chosen = f" To {topic}, here is what I suggest. " + " ".join(rng.sample(HELPFUL, rng.randint(1, 2)))
        rejected = " " + " ".join(rng.sample(UNHELPFUL, rng.randint(1, 3)))
        rows.append({"prompt": f"Human: {question}\n\nAssistant:", "chosen": chosen, "rejected": rejected})
    return rows


def run_ours(kind: str, parquet: Path, model_dir: Path, args) -> dict[str, list[float]]:
    """Per-step samples/s and tokens/s after the warm-up, as alignray's worker logs them to MLflow."""
    import mlflow
    from alignray.config import TrainConfig, load_config
    from alignray.train.runner import fit

    with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as out:
        out = Path(out)
        cfg = load_config(None, [
            f"dataset={parquet}", f"model.name={model_dir}", f"output_dir={out}", "trainer.num_workers=1",
            f"trainer.cpus_per_worker={args.cpus}", f"trainer.micro_batch_per_worker={args.batch}",
            f"trainer.max_steps={args.steps}", "trainer.log_every_steps=1", "trainer.eval_fraction=0",
            "trainer.zero_stage=0", "trainer.checkpoint_every_steps=1000", "tracking.experiment=bench",
            f"trainer.precision={args.dtype}",
            f"trainer.learning_rate={args.lr}",
        ], TrainConfig)
        result = fit(cfg, kind)
        client = mlflow.MlflowClient(f"sqlite:///{(out / 'mlflow.db').resolve()}")
        return {key: [m.value for m in client.get_metric_history(result.run_id, key) if m.step > args.warmup]
                for key in ("samples_per_s", "tokens_per_s")}


def run_trl(kind: str, rows: list[dict], model_dir: Path, args) -> tuple[dict, int, bool]:
    """(per-step rates, N, reference precomputed) for TRL's trainer of `kind`, timed by a callback."""
    import datasets
    import transformers
    import trl
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times, self.tokens = {}, {}  # TRL logs `num_tokens`: cumulative unpadded tokens trained on

        def on_step_end(self, a, state, control, **kw):
            self.times[state.global_step] = time.perf_counter()

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "num_tokens" in logs:
                self.tokens[state.global_step] = logs["num_tokens"]

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    clock = StepClock()
    with tempfile.TemporaryDirectory(prefix=f"bench-trl-{kind}-") as tmp:
        common = dict(
            output_dir=tmp, use_cpu=True, per_device_train_batch_size=args.batch, max_steps=args.steps,
            learning_rate=args.lr, report_to=[], save_strategy="no", logging_steps=1, gradient_checkpointing=False,
            bf16=args.dtype == "bf16", disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False, seed=0,
        )
        data, extra = datasets.Dataset.from_list(rows), dict(processing_class=tok, callbacks=[clock])
        if kind == "dpo":
            config = trl.DPOConfig(**common, beta=0.1, precompute_ref_log_probs=True)
            trainer = trl.DPOTrainer(str(model_dir), args=config, train_dataset=data, **extra)
            precomputed = trainer.ref_model is None and "ref_chosen_logps" in trainer.train_dataset.column_names
        else:
            trainer = trl.RewardTrainer(str(model_dir), args=trl.RewardConfig(**common), train_dataset=data, **extra)
            precomputed = False
        trainer.remove_callback(PrinterCallback)  # the per-step log dicts
        n_params = linear_params(trainer.model)
        trainer.train()
    steps = [s for s in sorted(clock.times) if s > args.warmup]
    dt = {s: clock.times[s] - clock.times[s - 1] for s in steps}
    rates = {"samples_per_s": [args.batch / dt[s] for s in steps],
             "tokens_per_s": [(clock.tokens[s] - clock.tokens[s - 1]) / dt[s] for s in steps]}
    return rates, n_params, precomputed


def measure(work: Path, args) -> tuple[dict, list[float]]:
    import ray

    if args.model == "tiny":
        from alignray.models.tiny import make_tiny_llama

        model_dir = make_tiny_llama(work / "tiny-llama")
    else:
        from alignray.models.registry import prepare

        model_dir = prepare("smollm2-135m-instruct")
    rows, parquet = make_rows(args.pairs), work / "pairs.parquet"
    pd.DataFrame(rows).to_parquet(parquet)
    peaks = [peak_flops(args.dtype)]
    ray.init(address="local", num_cpus=max(1, round(args.cpus)), include_dashboard=False, configure_logging=False, log_to_driver=False)
    results = {kind: (run_ours(kind, parquet, model_dir, args), *run_trl(kind, rows, model_dir, args))
               for kind in ("dpo", "preference")}
    ray.shutdown()
    peaks.append(peak_flops(args.dtype))
    return results, peaks


def report(results: dict, peaks: list[float], load: list[tuple], args) -> None:
    peak, mean = max(peaks), statistics.mean
    print(f"\nCPU: {cpu_summary()}")
    print(f"model {args.model}, {args.pairs} pairs, {args.batch} pairs/step, {args.steps} steps, rates over steps "
          f"{args.warmup + 1}..{args.steps}; alignray worker {args.cpus:g} CPUs, TRL {torch.get_num_threads()} threads")
    print(f"peak {args.dtype} {peak / 1e9:.1f} GFLOP/s (runs: {', '.join(f'{p / 1e9:.1f}' for p in peaks)}); "
          f"1-min load average before/after: {load[0][0]:.2f} / {load[1][0]:.2f}")
    heads = ("N Linear", "tok/pair", "ours s/s", "TRL s/s", "ours/TRL", "ours MFU", "TRL MFU")
    header = f"{'step':<11}" + "".join(f"{h:>{13 if 's/s' in h else 10}}" for h in heads)
    print(header + "\n" + "-" * len(header))
    for kind, label in (("dpo", "DPO"), ("preference", "pref-model")):
        ours, theirs, n, _ = results[kind]
        sps = [f"{mean(r['samples_per_s']):.3g}±{statistics.stdev(r['samples_per_s']):.2g}" for r in (ours, theirs)]
        mfu = [6 * n * mean(r["tokens_per_s"]) / peak for r in (ours, theirs)]
        ratio = mean(ours["samples_per_s"]) / mean(theirs["samples_per_s"])
        per_pair = mean(ours["tokens_per_s"]) / mean(ours["samples_per_s"])
        print(f"{label:<11}{n / 1e6:>9.2f}M{per_pair:>10.1f}{sps[0]:>13}{sps[1]:>13}{ratio:>10.2f}"
              f"{mfu[0]:>10.1%}{mfu[1]:>10.1%}")
    trl_pair = [mean(r[1]["tokens_per_s"]) / mean(r[1]["samples_per_s"]) for r in results.values()]
    print("s/s = samples (pairs) per second, mean ± stdev over steps; tok/pair = alignray's unpadded tokens per pair "
          f"(TRL's: {trl_pair[0]:.1f}, {trl_pair[1]:.1f}); TRL DPO precompute_ref_log_probs=True: "
          + ("yes" if results["dpo"][3] else "NO, reference forward in steps"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run, both sides")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step, both sides")
    parser.add_argument("--pairs", type=int, default=64, help="dataset size (pairs)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the rates")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16", help="compute dtype, both sides")
    parser.add_argument("--cpus", type=float, default=os.cpu_count(), help="alignray worker's CPUs (= its threads)")
    args = parser.parse_args()
    if args.steps <= args.warmup + 1:
        parser.error("--steps must exceed --warmup + 1")
    wall, load = time.perf_counter(), [os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="bench-train-step-") as tmp:
        results, peaks = measure(Path(tmp), args)
    load.append(os.getloadavg())
    report(results, peaks, load, args)
    print(f"total wall time {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    main()
