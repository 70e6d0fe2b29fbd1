"""PPO iteration time by phase: bf16 + colocated vs float32 + separate placement vs rollouts with transformers `generate`,
and the critic-free RLOO and GRPO (`ppo.algorithm`) on the same workload.

Every run is the same PPO loop (`alignray.train.ppo.fit`: Ray Train + DeepSpeed actor/critic, frozen reference, local
reward model) with the same workload; runs differ in the compute dtype (`model.dtype` and `trainer.precision`), in
`ppo.placement`, in the object the loop rolls out with, in `ppo.algorithm` (an optional fourth part of a run,
default ppo; rloo and grpo build no critic) and in LoRA (an optional fifth part: `full`, the default, trains every
weight; `lora` trains rank-16 adapters (alpha 32) on every projection, of the policy and the critic, and sends the
samplers the adapter; `lora-merged` sends them the merged weights). `ours` is the SamplerPool (one vLLM actor). `hf` is one Ray
actor holding SmolLM2 as a transformers AutoModelForCausalLM (same dtype, as many torch threads as the pool's engine
would get) that samples every prompt x n in one batched `generate(do_sample=True)` call, takes the sampled tokens' raw
log-probs from the returned logits, and on a weight sync loads the state dict and scores the trainer's probe;
`fit(cfg, rollout_pool=...)` takes it in place of SamplerPool. Both reserve the same Ray CPUs.

Placements (alignray.train.placement), on this 2-core machine with 1 trainer worker and 1 sampler of 1 CPU each:
separate = each computes on its own core (1 thread); colocated = each uses both cores in its phase (2 threads).

Times are the loop's own per-iteration MLflow metrics: rollout (sampling + tokenizing + broadcast), scoring (reward,
reference, old log-probs, values, advantages), training (PPO minibatch updates), sync (gather the weights, score the
probe, push them to the sampler and verify) and the whole iteration (checkpointing and logging excluded). Means
leave out the first --warmup iterations. Policy: SmolLM2-135M-Instruct; reward model (and critic start): the same
network with a fresh 1-output head, since only time matters. Runs go one after the other in one Ray cluster.

MFU = the iteration's matmul FLOPs / its time / the peak of its dtype on the node's cores (torch.mm, measured here).
FLOPs, with S = prompt + response tokens of the iteration (logged as sequence_tokens), N_lm = the policy's and
N_cls = the critic's (= reward model's) nn.Linear weights and e = PPO epochs: rollout 2 N_lm S, scoring
2 S (2 N_lm + 2 N_cls) (old and reference log-probs, values, reward), training 6 e S (N_lm + N_cls); without a critic
(rloo, grpo) scoring 2 S (2 N_lm + N_cls) and training 6 e S N_lm. With LoRA the frozen weights take no weight
gradient: training counts 4 per weight instead of 6 (the adapters' own FLOPs, under 2% at rank 16, are left out).
Attention-score FLOPs and the LM head's skipped prompt positions are ignored (a slight overcount). Peak RSS is the
largest resident memory of the trainer worker process (the metric trainer_peak_rss_gib).

    .venv/bin/python benchmarks/ppo_iteration.py                    # 3 runs, ~15 min on 2 cores
    .venv/bin/python benchmarks/ppo_iteration.py --runs ours:bf16:colocated,ours:fp32:separate --iterations 3
    .venv/bin/python benchmarks/ppo_iteration.py --runs ours:bf16:colocated:rloo,ours:bf16:colocated:ppo,ours:bf16:colocated:grpo
    .venv/bin/python benchmarks/ppo_iteration.py --runs ours:bf16:colocated:ppo:lora,ours:bf16:colocated:ppo:full,ours:bf16:colocated:ppo:lora-merged
"""

from __future__ import annotations

import os

for _key, _value in {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)  # before Ray starts, so its workers inherit them

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Self

import ray
import torch
from alignray.sampling.transport import compact
from alignray.sampling.types import Completion, Probe, SamplingSpec
from flops import linear_params, peak_flops
from alignray.host import cpu_summary

PHASES = ("rollout", "scoring", "training", "sync", "iteration")


class HFGenerateSampler:
    """A Ray actor sampling with transformers `generate`: what the PPO loop needs of a vLLM SamplerActor."""

    def __init__(self, model_path: str, dtype: str, seed: int, threads: int):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.tok = AutoTokenizer.from_pretrained(model_path, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])

    @torch.no_grad()
    def generate(self, prompts: list[str], spec: SamplingSpec) -> list[list[Completion]]:
        if spec.seed is not None:
            torch.manual_seed(spec.seed)
        batch = self.tok(prompts, return_tensors="pt", padding=True)
        out = self.model.generate(
            **batch, do_sample=True, temperature=spec.temperature, top_p=spec.top_p, top_k=0,
            max_new_tokens=spec.max_tokens, num_return_sequences=spec.n, pad_token_id=self.tok.pad_token_id,
            output_logits=True, return_dict_in_generate=True,
        )
        new = out.sequences[:, batch.input_ids.shape[1] :]
        raw = torch.stack(out.logits, 1).float().log_softmax(-1)  # before temperature / top-p, as vLLM reports
        logps = raw.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        rows = []
        for ids, lps in zip(new.tolist(), logps.tolist()):
            end = next((j + 1 for j, t in enumerate(ids) if t in self.eos), len(ids))  # keep EOS, drop padding
            ids, lps = ids[:end], lps[:end]
            finish = "stop" if ids[-1] in self.eos else "length"
            text = self.tok.decode(ids, skip_special_tokens=True)
            rows.append(Completion(text, tuple(ids), sum(lps), tuple(lps), finish))
        return [rows[i * spec.n : (i + 1) * spec.n] for i in range(len(prompts))]

    @torch.no_grad()
    def update_weights(self, state_dict: dict, probe: Probe) -> float:
        """Load the weights; return the mean |log-prob difference| from the trainer's on the probe."""
        self.model.load_state_dict(state_dict)
        p_ids = self.tok(probe.prompt).input_ids
        c_ids = self.tok(probe.continuation, add_special_tokens=False).input_ids
        logits = self.model(torch.tensor([p_ids + c_ids])).logits[0, len(p_ids) - 1 : -1]
        got = logits.float().log_softmax(-1).gather(-1, torch.tensor(c_ids)[:, None]).squeeze(-1)
        return (got - torch.tensor(probe.token_logprobs)).abs().mean().item()


class HFGeneratePool:
    """SamplerPool's constructor and the part of it the PPO loop uses, over one HFGenerateSampler actor."""

    def __init__(self, model_path, cfg, *, dtype: str, seed: int = 0, threads: int = 1, node_id=None, sleep_mode=False,
                 lora=None):
        from alignray.models.precision import resolve_dtype

        if lora is not None:
            raise ValueError("the transformers-generate baseline loads full weights only: set trainer.lora.sync: merged")

        self.dtype = resolve_dtype(dtype)
        remote = ray.remote(HFGenerateSampler).options(num_cpus=cfg.cpus_per_sampler, max_restarts=0)
        self.actor = remote.remote(str(model_path), self.dtype, seed, threads)
        ray.get(self.actor.__ray_ready__.remote())  # loaded, like SamplerPool's start-up wait
        self.restarts, self.last_probe_diff = 0, None

    def health(self) -> list[dict]:
        return [{"alive": True, "node_id": ray.get(self.actor.__ray_call__.remote(
            lambda _: ray.get_runtime_context().get_node_id()))}]

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass

    def generate(self, prompts: list[str], spec: SamplingSpec) -> list[list[Completion]]:
        return ray.get(self.actor.generate.remote(list(prompts), spec))

    def update_weights(self, state_dict: dict, probe: Probe) -> None:
        self.last_probe_diff = ray.get(self.actor.update_weights.remote(compact(state_dict), probe))
        if self.last_probe_diff > probe.tolerance:
            raise RuntimeError(f"HF sampler probe log-prob difference {self.last_probe_diff:.2e} > {probe.tolerance:g}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        ray.kill(self.actor, no_restart=True)


def make_reward_model(policy: Path, folder: Path) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


POOLS = ("ours", "hf")  # alignray's SamplerPool, HFGeneratePool


def run(spec: str, out: Path, reward: Path, args) -> dict[str, list[float]]:
    """The loop's per-iteration metrics after the warm-up for one run `side:dtype:placement`."""
    from alignray import tracking
    from alignray.config import PPOConfig, load_config
    from alignray.sampling.pool import SamplerPool
    from alignray.train import ppo
    from mlflow import MlflowClient

    side, dtype, placement, algorithm, weights = fields(spec)
    lora = [] if weights == "full" else [
        "trainer.lora={rank: 16, alpha: 32, sync: %s}" % ("merged" if weights == "lora-merged" else "adapter")]
    cfg = load_config(None, [
        f"output_dir={out}", "tracking.experiment=bench", "data.source=sample", f"reward.models=[{reward}]",
        "critic.init=reward", "trainer.num_workers=1", "trainer.cpus_per_worker=1", f"trainer.zero_stage={args.zero_stage}",
        "sampler.num_samplers=1", "sampler.cpus_per_sampler=1", f"sampler.max_tokens={args.max_tokens}",
        "sampler.max_model_len=512", f"ppo.iterations={args.iterations}", f"ppo.prompts_per_step={args.prompts}",
        f"ppo.samples_per_prompt={args.samples}", f"ppo.minibatch_per_worker={args.minibatch}", "ppo.ppo_epochs=1",
        f"model.dtype={'bfloat16' if dtype == 'bf16' else 'float32'}", f"trainer.precision={dtype}",
        f"ppo.placement={placement}", f"ppo.algorithm={algorithm}", *lora,
    ], PPOConfig)
    result = ppo.fit(cfg, rollout_pool=SamplerPool if side == "ours" else HFGeneratePool)
    client = MlflowClient(tracking.tracking_uri(cfg.tracking, cfg.output_dir))
    keys = [f"time_{p}" for p in PHASES] + ["tokens_per_s", "response_length", "sync_probe_diff", "logprob_gap",
                                            "sequence_tokens", "trainer_peak_rss_gib"]
    history = {k: sorted(client.get_metric_history(result.run_id, k), key=lambda m: m.step) for k in keys}
    return {k: [m.value for m in ms if m.step > args.warmup] for k, ms in history.items()}


def fields(spec: str) -> tuple[str, str, str, str, str]:
    """side, dtype, placement, algorithm (default ppo), weights (default full) of a run."""
    parts = spec.split(":")
    return (*parts[:3], *(parts[3:] + ["ppo", "full"][len(parts) - 3:]))


def iteration_flops(metrics: dict, n_lm: int, n_cls: int, critic: bool, lora: bool) -> float:
    s, train = statistics.mean(metrics["sequence_tokens"]), 4 if lora else 6
    if critic:
        return s * (2 * n_lm + 2 * (2 * n_lm + 2 * n_cls) + train * (n_lm + n_cls))
    return s * (2 * n_lm + 2 * (2 * n_lm + n_cls) + train * n_lm)


def report(results: dict, peaks: dict, sizes: tuple[int, int], load: list[tuple], args) -> None:
    mean = statistics.mean
    specs = list(results)
    print(f"\nCPU: {cpu_summary()}")
    print(f"SmolLM2-135M-Instruct PPO, {args.prompts} prompts x {args.samples} samples x <= {args.max_tokens} new "
          f"tokens per iteration, minibatch {args.minibatch}, 1 PPO epoch; 1 trainer worker (1 CPU, ZeRO-{args.zero_stage}), "
          f"1 sampler (1 CPU); means over iterations {args.warmup + 1}..{args.iterations}")
    print(f"1-min load average before/after: {load[0][0]:.2f} / {load[1][0]:.2f}; peak GFLOP/s on "
          f"{torch.get_num_threads()} threads: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items()))
    width = max(22, *(len(s) + 2 for s in specs))
    header = f"{'s / iteration':<26}" + "".join(f"{s:>{width}}" for s in specs)
    print(header + "\n" + "-" * len(header))
    rows = [(p, f"time_{p}") for p in PHASES] + [("rollout tokens/s", "tokens_per_s"),
                                                 ("response length (tokens)", "response_length"),
                                                 ("probe diff (mean, max)", "sync_probe_diff"),
                                                 ("sampler-trainer gap", "logprob_gap"),
                                                 ("trainer peak RSS (GiB)", "trainer_peak_rss_gib")]
    for label, key in rows:
        agg = max if key in ("sync_probe_diff", "trainer_peak_rss_gib") else mean
        print(f"{label:<26}" + "".join(f"{agg(results[s][key]):>{width}.3g}" for s in specs))
    mfu = {s: iteration_flops(results[s], *sizes, critic=fields(s)[3] == "ppo", lora=fields(s)[4] != "full")
              / mean(results[s]["time_iteration"]) / peaks[s.split(":")[1]] for s in specs}
    print(f"{'MFU (iteration)':<26}" + "".join(f"{mfu[s]:>{width}.2%}" for s in specs))
    first = specs[0]
    for other in specs[1:]:
        ratios = ", ".join(f"{p} {mean(results[other][f'time_{p}']) / mean(results[first][f'time_{p}']):.2f}x"
                           for p in PHASES)
        print(f"{first} is faster than {other} by: {ratios}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="ours:bf16:colocated,ours:fp32:separate,hf:bf16:colocated",
                        help="comma-separated side:dtype:placement[:algorithm[:weights]] (side: ours | hf; dtype: bf16 |"
                             " fp32; placement: colocated | separate; algorithm: ppo (default) | rloo | grpo; weights:"
                             " full (default) | lora | lora-merged); the first is compared with each other one")
    parser.add_argument("--iterations", type=int, default=4, help="PPO iterations per run")
    parser.add_argument("--warmup", type=int, default=1, help="first iterations left out of the means")
    parser.add_argument("--prompts", type=int, default=8, help="ppo.prompts_per_step")
    parser.add_argument("--samples", type=int, default=2, help="ppo.samples_per_prompt")
    parser.add_argument("--minibatch", type=int, default=8, help="ppo.minibatch_per_worker")
    parser.add_argument("--max-tokens", type=int, default=48, help="sampler.max_tokens")
    parser.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], default=2, help="trainer.zero_stage")
    args = parser.parse_args()
    if args.iterations <= args.warmup:
        parser.error("--iterations must exceed --warmup")
    specs = args.runs.split(",")
    for spec in specs:
        parts = spec.split(":")
        if not 3 <= len(parts) <= 5 or parts[0] not in POOLS or parts[1] not in ("bf16", "fp32") or parts[2] not in (
                "colocated", "separate") or fields(spec)[3] not in ("ppo", "rloo", "grpo") or fields(spec)[4] not in (
                "full", "lora", "lora-merged"):
            parser.error(f"--runs: {spec!r} is not side:dtype:placement[:algorithm[:weights]] (e.g."
                         " ours:bf16:colocated:rloo:lora)")

    from alignray.models.registry import resolve
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    wall, load = time.perf_counter(), [os.getloadavg()]
    policy = resolve("smollm2-135m-instruct")
    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
        work = Path(tmp)
        reward = make_reward_model(policy, work / "reward-model")
        sizes = (linear_params(AutoModelForCausalLM.from_pretrained(policy)),
                 linear_params(AutoModelForSequenceClassification.from_pretrained(reward)))
        peaks = {d: peak_flops(d) for d in {s.split(":")[1] for s in specs}}
        ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
        results = {spec: run(spec, work / f"run{k}", reward, args) for k, spec in enumerate(specs)}
        ray.shutdown()
        peaks = {d: max(p, peak_flops(d)) for d, p in peaks.items()}
    load.append(os.getloadavg())
    report(results, peaks, sizes, load, args)
    print(f"total wall time {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    main()
