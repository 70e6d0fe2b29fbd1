"""PPO iteration time by phase: rollouts on alignray's vLLM sampler pool vs transformers `generate`.

Both sides run the same PPO loop (`alignray.train.ppo.fit`: Ray Train + DeepSpeed actor/critic, frozen reference,
local reward model) with the same config; only the object the loop rolls out with differs. Ours is the SamplerPool
(one vLLM actor). The peer is one Ray actor holding SmolLM2 as a transformers AutoModelForCausalLM (fp32, CPU, one
torch thread, like the single-threaded vLLM engine here) that samples every prompt x n in one batched
`generate(do_sample=True)` call, takes the sampled tokens' raw log-probs from the returned logits, and on a weight
sync loads the state dict and scores the trainer's probe; `fit(cfg, rollout_pool=...)` takes it in place of
SamplerPool. Both reserve the same Ray CPUs.

Times are the loop's own per-iteration MLflow metrics: rollout (sampling + tokenizing + broadcast), scoring (reward,
reference, old log-probs, values, advantages), training (PPO minibatch updates), sync (gather the weights, score the
probe, push them to the sampler and verify) and the whole iteration (checkpointing and logging excluded). Means
leave out the first --warmup iterations. Policy: SmolLM2-135M-Instruct; reward model (and critic start): the same
network with a fresh 1-output head, since only time matters. Ours runs first, then the peer, in one Ray cluster.

    .venv/bin/python benchmarks/ppo_iteration.py                    # ~10 min on 2 cores
    .venv/bin/python benchmarks/ppo_iteration.py --iterations 3 --max-tokens 24
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
from alignray.sampling.pool import compact
from alignray.sampling.types import Completion, Probe, SamplingSpec

PHASES = ("rollout", "scoring", "training", "sync", "iteration")


class HFGenerateSampler:
    """A Ray actor sampling with transformers `generate`: what the PPO loop needs of a vLLM SamplerActor."""

    def __init__(self, model_path: str, dtype: str, seed: int):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)
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
        """Load the weights; return the largest |log-prob difference| from the trainer's on the probe."""
        self.model.load_state_dict(state_dict)
        p_ids = self.tok(probe.prompt).input_ids
        c_ids = self.tok(probe.continuation, add_special_tokens=False).input_ids
        logits = self.model(torch.tensor([p_ids + c_ids])).logits[0, len(p_ids) - 1 : -1]
        got = logits.float().log_softmax(-1).gather(-1, torch.tensor(c_ids)[:, None]).squeeze(-1)
        return (got - torch.tensor(probe.token_logprobs)).abs().max().item()


class HFGeneratePool:
    """SamplerPool's constructor and the part of it the PPO loop uses, over one HFGenerateSampler actor."""

    def __init__(self, model_path, cfg, *, dtype: str = "float32", seed: int = 0):
        remote = ray.remote(HFGenerateSampler).options(num_cpus=cfg.cpus_per_sampler, max_restarts=0)
        self.actor = remote.remote(str(model_path), dtype, seed)
        ray.get(self.actor.__ray_ready__.remote())  # loaded, like SamplerPool's start-up wait
        self.restarts, self.last_probe_diff = 0, None

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


def run(pool_class, out: Path, reward: Path, args) -> dict[str, list[float]]:
    """The loop's per-iteration metrics after the warm-up, with `pool_class` as the sampler pool."""
    from alignray import tracking
    from alignray.config import PPOConfig, load_config
    from alignray.train import ppo
    from mlflow import MlflowClient

    cfg = load_config(None, [
        f"output_dir={out}", "tracking.experiment=bench", "data.source=sample", f"reward.models=[{reward}]",
        "critic.init=reward", "trainer.num_workers=1", "trainer.cpus_per_worker=1", f"trainer.zero_stage={args.zero_stage}",
        "sampler.num_samplers=1", "sampler.cpus_per_sampler=1", f"sampler.max_tokens={args.max_tokens}",
        "sampler.max_model_len=512", f"ppo.iterations={args.iterations}", f"ppo.prompts_per_step={args.prompts}",
        f"ppo.samples_per_prompt={args.samples}", f"ppo.minibatch_per_worker={args.minibatch}", "ppo.ppo_epochs=1",
    ], PPOConfig)
    result = ppo.fit(cfg, rollout_pool=pool_class)
    client = MlflowClient(tracking.tracking_uri(cfg.tracking, cfg.output_dir))
    keys = [f"time_{p}" for p in PHASES] + ["tokens_per_s", "response_length", "sync_probe_diff", "logprob_gap"]
    history = {k: sorted(client.get_metric_history(result.run_id, k), key=lambda m: m.step) for k in keys}
    return {k: [m.value for m in ms if m.step > args.warmup] for k, ms in history.items()}


def report(ours: dict, hf: dict, load: list[tuple], args) -> None:
    mean = statistics.mean
    print(f"\nSmolLM2-135M-Instruct PPO, {args.prompts} prompts x {args.samples} samples x <= {args.max_tokens} new "
          f"tokens per iteration, minibatch {args.minibatch}, 1 PPO epoch; 1 trainer worker (1 CPU, ZeRO-{args.zero_stage}), "
          f"1 sampler (1 CPU); means over iterations {args.warmup + 1}..{args.iterations}")
    print(f"1-min load average before/after: {load[0][0]:.2f} / {load[1][0]:.2f}")
    header = f"{'phase (s / iteration)':<26}{'vLLM pool':>12}{'HF generate':>14}{'HF / vLLM':>11}"
    print(header + "\n" + "-" * len(header))
    rows = [(p, f"time_{p}") for p in PHASES] + [("rollout tokens/s", "tokens_per_s"),
                                                 ("response length (tokens)", "response_length")]
    for label, key in rows:
        a, b = mean(ours[key]), mean(hf[key])
        print(f"{label:<26}{a:>12.2f}{b:>14.2f}{b / a:>10.2f}x")
    for name, side in (("vLLM pool", ours), ("HF generate", hf)):
        share = mean(side["time_sync"]) / mean(side["time_iteration"])
        print(f"sync share of iteration, {name:<12}: {share:6.1%}  (max probe diff {max(side['sync_probe_diff']):.1e},"
              f" sampler-trainer log-prob gap {mean(side['logprob_gap']):.1e})")
    print("rollout ratio (HF / vLLM): "
          f"{mean(hf['time_rollout']) / mean(ours['time_rollout']):.2f}x; iteration ratio: "
          f"{mean(hf['time_iteration']) / mean(ours['time_iteration']):.2f}x")
    print("notes: the HF actor runs with 1 torch thread (the vLLM engine is single-threaded on this machine) and "
          "samples each iteration's prompts in one padded batch; response lengths differ since samples differ.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=4, help="PPO iterations per side")
    parser.add_argument("--warmup", type=int, default=1, help="first iterations left out of the means")
    parser.add_argument("--prompts", type=int, default=8, help="ppo.prompts_per_step")
    parser.add_argument("--samples", type=int, default=2, help="ppo.samples_per_prompt")
    parser.add_argument("--minibatch", type=int, default=8, help="ppo.minibatch_per_worker")
    parser.add_argument("--max-tokens", type=int, default=48, help="sampler.max_tokens")
    parser.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], default=2, help="trainer.zero_stage")
    args = parser.parse_args()
    if args.iterations <= args.warmup:
        parser.error("--iterations must exceed --warmup")

    from alignray.models.registry import resolve
    from alignray.sampling.pool import SamplerPool

    wall, load = time.perf_counter(), [os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
        work = Path(tmp)
        reward = make_reward_model(resolve("smollm2-135m-instruct"), work / "reward-model")
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
        ours = run(SamplerPool, work / "vllm", reward, args)
        hf = run(HFGeneratePool, work / "hf", reward, args)
        ray.shutdown()
    load.append(os.getloadavg())
    report(ours, hf, load, args)
    print(f"total wall time {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    main()
