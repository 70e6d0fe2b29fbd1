"""A GRPO step: alignray (`ppo.algorithm: grpo`) against TRL's GRPOTrainer, side by side in one run.

Both sides train SmolLM2-135M-Instruct on the same prompts (plain "Human: ...\\n\\nAssistant:" text, no chat template),
with the same group (--prompts prompts x --group samples per step, one optimizer step per generation, one pass),
response length, temperature 1, learning rate, KL to the reference as a k3 loss term (beta --beta), compute dtype and
reward model (the policy's network with a fresh 1-output head, as in benchmarks/ppo_iteration.py: only time matters),
on the same 2 cores. alignray: one trainer worker and one vLLM sampler, colocated (each uses both cores in its
phase), ZeRO-0, DeepSpeed's bf16 mode. TRL: this process, torch's default threads, `bf16=True` (autocast), sampling
with transformers `generate` (TRL's default without vLLM), gradient checkpointing off (TRL's default is on).

Phases. alignray's are its loop's own metrics: rollout, scoring (reward, reference and old log-probs), training,
sync (weights to the sampler, probe check). TRL's are timed around its methods: rollout = `_generate`, scoring =
the rest of `_generate_and_score_completions` (reward model, reference log-probs), training = the remainder of the
step (policy forward, backward, optimizer). TRL needs no sync (it samples with the model it trains) and no old
log-probs (one update per generation: TRL takes the current ones, detached); alignray computes both.

MFU counts the same FLOPs for both sides (the work GRPO needs, whoever does it), with S = prompt + response tokens of
the step (alignray's sequence_tokens): rollout 2 N_lm S, reward 2 N_cls S, reference 2 N_lm S, training 6 N_lm S; N are
the nn.Linear weights. Against the matmul peak of the dtype measured in this run. Means leave out the first --warmup
steps.

    .venv/bin/python benchmarks/grpo_vs_trl.py                   # ~10 min on 2 cores
    .venv/bin/python benchmarks/grpo_vs_trl.py --steps 4 --warmup 1 --dtype fp32
"""

from __future__ import annotations

import os

for _key, _value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)  # before Ray starts, so its workers inherit them

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from flops import linear_params, peak_flops
from ppo_iteration import make_reward_model
from train_step import make_rows

from alignray.host import cpu_summary

PHASES = ("rollout", "scoring", "training", "sync", "step")


def run_ours(prompts: Path, reward: Path, out: Path, args) -> dict[str, list[float]]:
    from mlflow import MlflowClient

    from alignray import tracking
    from alignray.config import PPOConfig, load_config
    from alignray.train import ppo

    per_step = args.prompts * args.group
    cfg = load_config(None, [
        f"output_dir={out}", "tracking.experiment=bench", f"data.source={prompts}", "data.format=transcript",
        f"reward.models=[{reward}]", "trainer.num_workers=1", "trainer.cpus_per_worker=1", "trainer.zero_stage=0",
        "sampler.num_samplers=1", "sampler.cpus_per_sampler=1", f"sampler.max_tokens={args.max_tokens}",
        "sampler.max_model_len=512", "sampler.temperature=1.0", f"ppo.iterations={args.steps}",
        f"ppo.prompts_per_step={args.prompts}", f"ppo.samples_per_prompt={args.group}",
        f"ppo.minibatch_per_worker={per_step}", "ppo.ppo_epochs=1", "ppo.algorithm=grpo", "ppo.kl_in=loss",
        f"ppo.kl_coef={args.beta}", f"trainer.learning_rate={args.lr}", "trainer.lr_schedule=constant",
        f"model.dtype={'bfloat16' if args.dtype == 'bf16' else 'float32'}", f"trainer.precision={args.dtype}",
        "ppo.placement=colocated",
    ], PPOConfig)
    result = ppo.fit(cfg)
    client = MlflowClient(tracking.tracking_uri(cfg.tracking, cfg.output_dir))
    keys = {p: f"time_{p}" for p in PHASES if p != "step"} | {"step": "time_iteration", "tokens": "sequence_tokens",
                                                                "response_length": "response_length"}
    out = {}
    for name, key in keys.items():
        history = sorted(client.get_metric_history(result.run_id, key), key=lambda m: m.step)
        out[name] = [m.value for m in history if m.step > args.warmup]
    return out


def run_trl(rows: list[dict], reward: Path, policy: Path, args) -> dict[str, list[float]]:
    import datasets
    import transformers
    import trl
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback

    seconds: dict[str, list[float]] = {"rollout": [], "generate_and_score": [], "step": []}

    class StepClock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.started = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            seconds["step"].append(time.perf_counter() - self.started)

    def timed(fn, name):
        def wrapper(*a, **kw):
            tick = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                seconds[name].append(time.perf_counter() - tick)
        return wrapper

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(policy, padding_side="left")
    with tempfile.TemporaryDirectory(prefix="bench-trl-grpo-") as tmp:
        config = trl.GRPOConfig(
            output_dir=tmp, use_cpu=True, per_device_train_batch_size=args.prompts * args.group,
            num_generations=args.group, steps_per_generation=1, num_iterations=1, gradient_accumulation_steps=1,
            max_completion_length=args.max_tokens, temperature=1.0, top_p=1.0, beta=args.beta, max_steps=args.steps,
            learning_rate=args.lr, lr_scheduler_type="constant", report_to=[], save_strategy="no", logging_steps=1,
            gradient_checkpointing=False, bf16=args.dtype == "bf16", disable_tqdm=True, dataloader_num_workers=0,
            dataloader_pin_memory=False, seed=0, shuffle_dataset=False,
        )
        data = datasets.Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
        trainer = trl.GRPOTrainer(str(policy), reward_funcs=str(reward), args=config, train_dataset=data,
                                  processing_class=tok, callbacks=[StepClock()])
        trainer.remove_callback(PrinterCallback)
        trainer._generate = timed(trainer._generate, "rollout")
        trainer._generate_and_score_completions = timed(trainer._generate_and_score_completions, "generate_and_score")
        trainer.train()
    keep = slice(args.warmup, None)
    rollout, both, step = (seconds[k][keep] for k in ("rollout", "generate_and_score", "step"))
    return {"rollout": rollout, "scoring": [b - r for b, r in zip(both, rollout)],
            "training": [s - b for s, b in zip(step, both)], "sync": [0.0] * len(step), "step": step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps (= generations) per side")
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out of the means")
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--group", type=int, default=4, help="samples per prompt (the group)")
    parser.add_argument("--max-tokens", type=int, default=48, help="response length cap")
    parser.add_argument("--beta", type=float, default=0.04, help="KL coefficient (k3 loss term), both sides")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="compute dtype, both sides")
    args = parser.parse_args()
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")

    import ray
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from alignray.models.registry import resolve

    wall, load = time.perf_counter(), [os.getloadavg()]
    policy = resolve("smollm2-135m-instruct")
    rows = make_rows(args.prompts * args.steps)
    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
        work = Path(tmp)
        prompts = work / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows))
        reward = make_reward_model(policy, work / "reward-model")
        n_lm = linear_params(AutoModelForCausalLM.from_pretrained(policy))
        n_cls = linear_params(AutoModelForSequenceClassification.from_pretrained(reward))
        peaks = [peak_flops(args.dtype)]
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
        ours = run_ours(prompts, reward, work / "ours", args)
        ray.shutdown()
        theirs = run_trl(rows, reward, policy, args)
        peaks.append(peak_flops(args.dtype))
    load.append(os.getloadavg())

    mean, peak = statistics.mean, max(peaks)
    flops = mean(ours["tokens"]) * (2 * n_lm + 2 * n_cls + 2 * n_lm + 6 * n_lm)
    print(f"\nCPU: {cpu_summary()}")
    print(f"SmolLM2-135M-Instruct GRPO, {args.prompts} prompts x {args.group} samples x <= {args.max_tokens} tokens per"
          f" step, 1 update per generation, {args.dtype}; means over steps {args.warmup + 1}..{args.steps}")
    print(f"peak {args.dtype} {peak / 1e9:.0f} GFLOP/s; 1-min load average before/after: {load[0][0]:.2f} /"
          f" {load[1][0]:.2f}; alignray response length {mean(ours['response_length']):.1f} tokens")
    print(f"{'s / step':<12}{'alignray':>10}{'TRL':>10}{'TRL/ours':>10}\n" + "-" * 42)
    for phase in PHASES:
        a, b = mean(ours[phase]), mean(theirs[phase])
        print(f"{phase:<12}{a:>10.2f}{b:>10.2f}" + (f"{b / a:>9.2f}x" if a > 0 else f"{'-':>10}"))
    print(f"{'MFU':<12}{flops / mean(ours['step']) / peak:>10.1%}{flops / mean(theirs['step']) / peak:>10.1%}")
    print(f"alignray's GRPO step is {mean(theirs['step']) / mean(ours['step']):.2f}x faster than TRL's")
    print(f"total wall time {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    main()
