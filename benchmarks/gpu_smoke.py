"""GPU smoke test: does alignray's GPU path work end to end on this machine? One command, SmolLM2-135M-Instruct,
each check timed, a table of pass / fail / skip at the end; exits 1 if any check failed. Written for one H100 (about
5 minutes expected, at most 8). Without a CUDA device it says so and exits 0: it is not a test of this code, it is a
check of a GPU machine.

Checks, in order; each runs whether or not an earlier one failed:
  sampler        a SamplerPool of one vLLM actor on a GPU, bfloat16: 8 prompts x 32 sampled tokens with log-probs.
  nccl-sync      sampler.weight_transfer=collective on GPU samplers (vLLM's NCCL weight-transfer engine): a Ray task
                 holding one GPU, as PPO's trainer rank 0, sends SmolLM2's weights changed by 10% noise to a sampler
                 on another GPU with the probe check (the sampler must reproduce the sender's log-probs of a probe
                 text); the probe must fail before the sync. Needs 2 GPUs: NCCL refuses two ranks on one GPU, and
                 the CUDA IPC engine a shared GPU would need is not wired (docs/samplers.md, "Weight sync"). Skipped on one.
  zero2, zero3   one SFT step through `alignray.train.runner.fit` (Ray Train + DeepSpeed ZeRO-2 / ZeRO-3, bf16, one
                 GPU worker), checkpoint and registration included.
  ppo-colocated  one PPO iteration (`alignray.train.ppo.fit`) with ppo.placement=colocated: the sampler and the
                 trainer worker share the GPU and vLLM sleeps after the rollout and wakes for the weight sync.
                 Reward model: SmolLM2 with a fresh 1-output head. RLOO is not checked: alignray has no RLOO yet.
  serve-policy   the Serve policy app (`alignray.serve.policy.build`) on the GPU: one chat completion over real
                 HTTP with a bearer token.

Output: a line per check as it finishes, then the table. Other libraries' output goes to
<output-dir>/run-<time>/logs/gpu-smoke-<time>.log (Ray's workers' to logs/ray), with the traceback of every failed
check; --log-level debug prints it all instead. Checkpoints and the MLflow store are in the same run folder. Ray: as
the alignray commands, --address (auto: the cluster `ray start` runs on this machine) or RAY_ADDRESS, else a new
local one.

    .venv/bin/python benchmarks/gpu_smoke.py                      # every check
    .venv/bin/python benchmarks/gpu_smoke.py --checks zero3 ppo-colocated
"""

from __future__ import annotations

import os

for _key, _value in {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)  # before Ray starts, so its workers inherit them

import argparse
import logging
import math
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alignray.config import (
    DataConfig,
    EngineConfig,
    ModelConfig,
    PPOConfig,
    PPOSettings,
    RewardConfig,
    SamplerConfig,
    TrackingConfig,
    TrainConfig,
    TrainerConfig,
)

MODEL = "smollm2-135m-instruct"
NO_CUDA = "no CUDA device (torch.cuda.is_available() is false): the GPU smoke test needs one; nothing was run"
log = logging.getLogger("gpu_smoke")  # outside `alignray`: to the log file when quiet


class Skip(Exception):
    """The check cannot run on this machine; the message says what it needs."""


@dataclass(frozen=True)
class Result:
    name: str
    status: str  # pass | fail | skip
    seconds: float
    detail: str


def run_check(name: str, check: Callable[[], str]) -> Result:
    """Run one check: `pass` with what it returns, `skip` on Skip, `fail` on any other error (traceback to the log)."""
    start = time.perf_counter()
    try:
        status, detail = "pass", check()
    except Skip as exc:
        status, detail = "skip", str(exc)
    except Exception as exc:
        log.exception("check %s failed", name)
        status, detail = "fail", f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
    return Result(name, status, time.perf_counter() - start, detail)


def row(r: Result) -> str:
    return f"{r.name:<14} {r.status:<6} {r.seconds:>8.1f}  {r.detail}"


def table(results: list[Result]) -> str:
    counts = ", ".join(f"{sum(r.status == s for r in results)} {label}"
                       for s, label in (("pass", "passed"), ("fail", "failed"), ("skip", "skipped")))
    lines = [f"{'check':<14} {'result':<6} {'seconds':>8}  detail", *map(row, results),
             f"{counts} in {sum(r.seconds for r in results):.0f} s"]
    return "\n".join(lines)


def exit_code(results: list[Result]) -> int:
    """1 if any check failed (a skip is not a failure), else 0."""
    return int(any(r.status == "fail" for r in results))


# The configs of the checks (typed; built on CPU by tests/test_gpu_smoke.py).
TRACKING = TrackingConfig(experiment="gpu-smoke")


def sampler_config(**changes) -> SamplerConfig:
    """One vLLM actor on a GPU (30% of its memory), eager as by default (no CUDA-graph capture to wait for)."""
    return SamplerConfig(num_samplers=1, gpus_per_sampler=1, gpu_memory_utilization=0.3, max_model_len=1024,
                         weight_sync_timeout_s=120, **changes)


def sft_config(model: Path, dataset: Path, run: Path, zero_stage: int) -> TrainConfig:
    """One SFT step of 2 examples on one GPU worker in DeepSpeed's bf16 mode."""
    trainer = TrainerConfig(num_workers=1, use_gpu=True, zero_stage=zero_stage, precision="bf16",
                            micro_batch_per_worker=2, max_steps=1, eval_fraction=0, log_every_steps=1)
    return TrainConfig(model=ModelConfig(name=str(model)), dataset=dataset, trainer=trainer, output_dir=run,
                       run_name=f"sft-zero{zero_stage}", registered_model="gpu-smoke-sft", tracking=TRACKING)


def ppo_config(model: Path, reward: Path, run: Path) -> PPOConfig:
    """One PPO iteration, 4 prompts x 2 samples, the sampler and one trainer worker sharing a GPU (0.4 / 0.6)."""
    return PPOConfig(
        model=ModelConfig(name=str(model), dtype="bfloat16"),
        sampler=SamplerConfig(num_samplers=1, gpus_per_sampler=0.4, gpu_memory_utilization=0.3, max_model_len=512,
                              max_tokens=32, weight_sync_timeout_s=120),
        data=DataConfig(source="sample"),
        reward=RewardConfig(models=[str(reward)]),
        ppo=PPOSettings(iterations=1, prompts_per_step=4, samples_per_prompt=2, minibatch_per_worker=4,
                        placement="colocated"),
        trainer=EngineConfig(num_workers=1, use_gpu=True, zero_stage=2, precision="bf16"),
        output_dir=run, run_name="ppo-colocated", registered_model="gpu-smoke-ppo", tracking=TRACKING,
    )


def policy_args(model: Path, token_file: Path) -> dict:
    """The policy app's `args` (alignray.config.PolicyArgs) on a GPU replica."""
    return {"model": str(model), "name": "smollm2", "token_file": str(token_file), "max_tokens": 64,
            "max_model_len": 1024, "dtype": "bfloat16", "enforce_eager": True, "accelerator": "gpu",
            "gpu_memory_utilization": 0.3}


def prompts(n: int) -> list[str]:
    from alignray.data.sources import load_conversations

    return [c.transcript for c in load_conversations(DataConfig(source="sample", limit=n))]


# The checks: each returns a one-line detail or raises.
def check_sampler(model: Path) -> str:
    from alignray.sampling.pool import SamplerPool
    from alignray.sampling.types import SamplingSpec

    batch = prompts(8)
    spec = SamplingSpec(max_tokens=32, min_tokens=32, seed=0, logprobs=0)
    with SamplerPool(model, sampler_config(), dtype="bfloat16") as pool:
        start = time.perf_counter()
        out = pool.generate(batch, spec)
        seconds = time.perf_counter() - start
        where = pool.health()[0]
    samples = [c for o in out for c in o]
    tokens = sum(len(c.token_ids) for c in samples)
    if pool.dtype != "bfloat16" or tokens != 32 * len(batch) or not all(
            c.logprobs and all(math.isfinite(x) for x in c.logprobs) for c in samples):
        raise RuntimeError(f"expected {32 * len(batch)} bf16 tokens with finite log-probs; got {tokens} in {pool.dtype}")
    return f"{len(batch)} prompts x 32 tokens, {pool.dtype}, {tokens / seconds:.0f} tokens/s (pid {where['pid']})"


def nccl_sync(model_path: str, cfg: SamplerConfig, prompt: str) -> tuple[float, float]:
    """Run in a Ray task holding one GPU (the sender, as PPO's trainer rank 0): (probe difference of the sampler before
    the sync, after it). The sampler starts from the model's own weights; the sent ones are changed by 10% noise."""
    import torch
    from alignray.sampling.pool import SamplerPool
    from alignray.sampling.types import Probe
    from alignray.train.data import load_tokenizer
    from alignray.train.ppo_loop import PROBE_TEXT, PROBE_TOLERANCE
    from alignray.train.ppo_parts import Packed, pack, token_logps
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(Path(model_path))
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16).cuda().eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 0.1 * torch.randn_like(p))
        cpu = pack([tok(prompt).input_ids], [tok(PROBE_TEXT, add_special_tokens=False).input_ids], tok.pad_token_id)
        batch = Packed(cpu.input_ids.cuda(), cpu.attention_mask.cuda(), cpu.position_ids.cuda(),
                       cpu.response_mask.cuda(), cpu.prompt_width)
        _, raw, _ = token_logps(model, batch, 1.0)  # as PPO's trainer computes the probe
    probe = Probe(prompt, PROBE_TEXT, tuple(raw[0].tolist()), PROBE_TOLERANCE["bfloat16"])
    with SamplerPool(model_path, cfg, dtype="bfloat16") as pool:
        [before] = pool.score([prompt], [PROBE_TEXT])
        stale = sum(abs(a - b) for a, b in zip(before.token_logprobs, probe.token_logprobs)) / len(probe.token_logprobs)
        pool.update_weights(model.state_dict(), probe)  # raises WeightSyncError when the probe fails
        return stale, pool.last_probe_diff


def check_nccl_sync(model: Path) -> str:
    import ray
    from alignray.train.ppo_loop import PROBE_TOLERANCE
    from ray.exceptions import GetTimeoutError

    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus < 2:
        raise Skip(f"needs 2 GPUs, the cluster has {gpus:g}: NCCL refuses two ranks on one GPU, and the CUDA IPC"
                   " engine for a shared GPU is not wired")
    cfg = sampler_config(weight_transfer="collective")
    task = ray.remote(num_gpus=1, max_retries=0)(nccl_sync).remote(str(model), cfg, prompts(1)[0])
    try:
        stale, diff = ray.get(task, timeout=300)
    except GetTimeoutError:
        ray.cancel(task, force=True)  # its sampler goes with it
        raise
    if stale <= PROBE_TOLERANCE["bfloat16"]:
        raise RuntimeError(f"the probe cannot tell the weights apart: {stale:.3f} before the sync is within the"
                           f" tolerance {PROBE_TOLERANCE['bfloat16']}")
    return f"probe difference {stale:.3f} before the sync, {diff:.3f} after (tolerance {PROBE_TOLERANCE['bfloat16']})"


def check_zero(model: Path, run: Path, stage: int) -> str:
    import pandas as pd
    from alignray.train.runner import fit

    dataset = run / "sft.parquet"
    if not dataset.exists():
        rows = [{"prompt": p, "chosen": " I am glad to help: here is a short, careful answer."} for p in prompts(4)]
        pd.DataFrame(rows).to_parquet(dataset)
    result = fit(sft_config(model, dataset, run, stage), "sft")
    loss = result.metrics.get("train_loss", math.nan)
    if result.model_uri is None or not math.isfinite(loss):
        raise RuntimeError(f"the step did not finish with a finite loss: loss {loss}, model {result.model_uri}")
    return f"1 SFT step, bf16, loss {loss:.3f}, checkpoint registered as {result.model_uri}"


def check_ppo(model: Path, run: Path) -> str:
    from alignray.train import placement, ppo
    from ppo_iteration import make_reward_model

    cfg = ppo_config(model, make_reward_model(model, run / "reward-model"), run)
    if not placement.plan(cfg.ppo.placement, cfg.trainer, cfg.sampler).sleep_samplers:
        raise RuntimeError("the colocated placement does not put vLLM to sleep between rollouts")
    result = ppo.fit(cfg)
    m = result.metrics
    if result.model_uri is None or not all(math.isfinite(m.get(k, math.nan)) for k in ("reward", "sync_probe_diff")):
        raise RuntimeError(f"the iteration did not finish with a finite reward and a verified sync: {m}")
    return (f"1 iteration, vLLM sleep mode on, reward {m['reward']:.3f}, probe difference {m['sync_probe_diff']:.3f},"
            f" rollout {m['time_rollout']:.1f} s, training {m['time_training']:.1f} s, sync {m['time_sync']:.1f} s")


def check_serve(model: Path, run: Path) -> str:
    import requests
    from alignray.sampling.transport import free_port
    from alignray.serve.policy import build
    from ray import serve

    token, token_file = secrets.token_hex(16), run / "serve-token"
    token_file.touch(mode=0o600)
    token_file.write_text(token)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build(policy_args(model, token_file)), name="policy", route_prefix="/policy")
        start = time.perf_counter()
        reply = requests.post(
            f"http://127.0.0.1:{port}/policy/v1/chat/completions", timeout=120,
            headers={"Authorization": f"Bearer {token}"},
            json={"model": "smollm2", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16,
                  "temperature": 0})
        seconds = time.perf_counter() - start
    finally:
        serve.shutdown()
    if reply.status_code != 200:
        raise RuntimeError(f"HTTP {reply.status_code}: {reply.text[:200]}")
    body = reply.json()
    if not body["choices"][0]["message"]["content"] or not body["usage"]["completion_tokens"]:
        raise RuntimeError(f"an empty completion: {body}")
    return f"POST /policy/v1/chat/completions: 200, {body['usage']['completion_tokens']} tokens in {seconds:.2f} s"


def checks(model: Path, run: Path) -> dict[str, Callable[[], str]]:
    return {
        "sampler": lambda: check_sampler(model),
        "nccl-sync": lambda: check_nccl_sync(model),
        "zero2": lambda: check_zero(model, run, 2),
        "zero3": lambda: check_zero(model, run, 3),
        "ppo-colocated": lambda: check_ppo(model, run),
        "serve-policy": lambda: check_serve(model, run),
    }


NAMES = list(checks(Path(), Path()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", nargs="+", choices=NAMES, default=NAMES, metavar="CHECK",
                        help=f"the checks to run (always in this order): {' '.join(NAMES)}; default: all")
    parser.add_argument("--output-dir", type=Path, default=Path("alignray-runs/gpu-smoke"),
                        help="each run writes logs, checkpoints and MLflow into a new run-<time> folder here")
    parser.add_argument("--address", help="the Ray cluster to join (default: RAY_ADDRESS, else a new local one; auto: the"
                                          " one `ray start` runs on this machine)")
    parser.add_argument("--log-level", choices=["info", "debug"], default="info",
                        help="debug: every library's output on the terminal instead of the log file")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    from alignray import cluster, logs
    from alignray.models.registry import ModelError, prepare

    logs.setup(args.log_level)
    try:
        model = prepare(MODEL)
    except ModelError as exc:
        print(f"gpu_smoke: {exc}", file=sys.stderr)
        return 2
    run = (args.output_dir / time.strftime("run-%Y%m%d-%H%M%S")).resolve()
    logs.log_to(run / "logs", "gpu-smoke")
    cluster.connect(args.address)  # opens the log file first
    run.mkdir(parents=True, exist_ok=True)
    print(f"GPU smoke test: {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, {MODEL}, in {run}",
          flush=True)
    todo = checks(model, run)
    results = []
    for name in [n for n in NAMES if n in args.checks]:
        results.append(run_check(name, todo[name]))
        logs.adopt()  # loggers of libraries the check imported: to the file too
        print(row(results[-1]), flush=True)
    print("\n" + table(results))
    return exit_code(results)


if __name__ == "__main__":
    sys.exit(main())
