"""The PPO loop each Ray Train worker runs.

Every worker holds the actor and the critic (DeepSpeed engines), the frozen reference policy
and the local reward models, and works on its share of each rollout batch; the vLLM samplers
are separate Ray actors (the pool) that rank 0 drives. One iteration: rank 0 rolls out and
broadcasts the batch; each rank scores its share (rewards, reference and old log-probs,
values), computes GAE advantages, and takes `ppo_epochs` passes of minibatch updates (DeepSpeed
averages the gradients over ranks); then the new policy weights go to every sampler, verified
on a probe sequence. A checkpoint holds both engines (with optimizers and schedulers), the KL
controller, the reward normaliser, the RNG and the iteration (which fixes the prompt position).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist

from alignray.config import PPOConfig
from alignray.data.conversation import TURN_STOP, clean_output
from alignray.models.precision import resolve_dtype, torch_dtype
from alignray.rewards.scorers import scalar_reward
from alignray.sampling.types import Probe, SamplingSpec
from alignray.train.losses import (
    gae,
    kl_penalty,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
)
from alignray.train.ppo_parts import (
    KLController,
    Packed,
    RunningMoments,
    critic_model,
    pack,
    token_logps,
    token_values,
)
from alignray.train.worker import STATE_FILE, adamw, deepspeed_config, hf_state_dict, lr_lambda

PROBE_TEXT = (
    " I am glad to help. Here is a short and careful answer: first, check what you need; then take"
    " one small step at a time, and ask again if anything is unclear."
)
# The mean |sampler - trainer| log-prob over the probe's tokens that a correct sync may show, by
# the dtypes in play. float32: the same weights in different kernels agree to ~1e-5 (measured
# on SmolLM2-135M: at most 7e-5 on any token). bfloat16 keeps 8 significant bits and vLLM's
# kernels round differently from transformers': measured on SmolLM2-135M with identical bf16
# weights, the mean difference is 0.05-0.14 (single tokens up to 0.9), about what a 1% random
# change of every weight gives (0.13-0.19), while a 5% change gives 0.54-0.62. So in bf16 the
# check catches weights that were not loaded, went to the wrong tensors or are far behind, not
# a sampler one small step stale (whose bf16 weights barely differ anyway).
PROBE_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.3}


def probe_tolerance(cfg: PPOConfig, sampler_dtype: str) -> float:
    """ppo.sync_tolerance, or the loosest bound of the dtypes in play."""
    if cfg.ppo.sync_tolerance is not None:
        return cfg.ppo.sync_tolerance
    return max(PROBE_TOLERANCE[resolve_dtype(cfg.trainer.precision)], PROBE_TOLERANCE[sampler_dtype])


@dataclass
class Rollouts:
    prompts: list[str]
    responses: list[str]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    sampler_logps: list[list[float]]  # the samplers' raw (temperature 1) log-probs


def prompt_indices(iteration: int, per_step: int, n: int, seed: int) -> list[int]:
    """The prompts of an iteration: a fresh seeded shuffle of all n prompts per epoch."""
    out, orders = [], {}
    for g in range(iteration * per_step, (iteration + 1) * per_step):
        epoch, k = divmod(g, n)
        if epoch not in orders:
            orders[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        out.append(int(orders[epoch][k]))
    return out


def rollout(pool, tokenizer, prompts: list[str], cfg: PPOConfig, iteration: int) -> Rollouts:
    """Sample at top_p = 1 (PPOConfig enforces it), stopping where the model starts the user's
    next turn. The reward sees the reply cleaned as simulation cleans it; the trained tokens are
    all the sampled ones, the stop marker's included (the policy's end-of-turn action, sampled
    with its log-probs)."""
    p, s = cfg.ppo, cfg.sampler
    spec = SamplingSpec(
        n=p.samples_per_prompt, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, stop=TURN_STOP,
        seed=cfg.trainer.seed * 1_000_003 + iteration * p.prompts_per_step * p.samples_per_prompt, logprobs=0,
    )
    out = Rollouts([], [], [], [], [])
    for prompt, completions in zip(prompts, pool.generate(prompts, spec), strict=True):
        ids = tokenizer(prompt).input_ids
        for c in completions:
            out.prompts.append(prompt)
            out.responses.append(clean_output(c.text))
            out.prompt_ids.append(ids)
            out.response_ids.append(list(c.token_ids))
            out.sampler_logps.append(list(c.logprobs))
    return out


def _all_sum(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def _check_finite(value: torch.Tensor, what: str, phase: str, iteration: int) -> None:
    bad = _all_sum([0.0 if bool(torch.isfinite(value).all()) else 1.0])[0]
    if bad:
        raise FloatingPointError(
            f"non-finite {what} in the {phase} phase of iteration {iteration + 1}: PPO stopped;"
            " the last good checkpoint is kept (check the reward source, or lower"
            " trainer.learning_rate)"
        )


def _whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over the response tokens of every rank's share."""
    n, total, total_sq = _all_sum([mask.sum().item(), (x * mask).sum().item(), (x * x * mask).sum().item()])
    mean = total / n
    var = max(total_sq / n - mean * mean, 0.0)
    return (x - mean) / (var + 1e-8) ** 0.5 * mask


def _chunked(fn, batch: Packed, size: int) -> list[torch.Tensor]:
    """fn over row chunks of the batch, concatenated per output."""
    parts = [fn(batch.rows(torch.arange(i, min(i + size, len(batch.input_ids))))) for i in range(0, len(batch.input_ids), size)]
    return [torch.cat(col) for col in zip(*parts)]


class _Trainer:
    """The actor, critic and reference of one worker, and the steps that use them."""

    def __init__(self, lc: dict, cfg: PPOConfig, rank: int, world: int):
        import deepspeed
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t, p = cfg.trainer, cfg.ppo
        self.cfg, self.rank = cfg, rank
        self.tokenizer = AutoTokenizer.from_pretrained(lc["policy_path"])
        self.pad_id = lc["pad_id"]
        self.tolerance = probe_tolerance(cfg, lc["sampler_dtype"])
        dtype = torch_dtype(t.precision)  # the reference computes as the actor does: KL starts at 0
        actor = AutoModelForCausalLM.from_pretrained(lc["policy_path"], dtype=torch.float32)
        self.reference = AutoModelForCausalLM.from_pretrained(lc["policy_path"], dtype=dtype).eval()
        self.reference.requires_grad_(False)
        critic = critic_model(lc["critic_path"], self.pad_id)
        share = p.prompts_per_step * p.samples_per_prompt // world
        updates = p.iterations * p.ppo_epochs * (share // p.minibatch_per_worker)
        ds = deepspeed_config(t, p.minibatch_per_worker)
        self.actor, self.critic = (
            deepspeed.initialize(
                model=model, optimizer=opt, config=ds,
                lr_scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(t, updates)),
            )[0]
            for model, opt in (
                (actor, adamw(actor.parameters(), t.learning_rate, t.weight_decay)),
                (critic, adamw(critic.parameters(), cfg.critic.learning_rate, t.weight_decay)),
            )
        )

    def probe(self, prompt: str) -> Probe:
        """The trainer's raw log-probs of a fixed text after `prompt` (every rank calls it)."""
        ids = self.tokenizer(prompt).input_ids
        cont = self.tokenizer(PROBE_TEXT, add_special_tokens=False).input_ids
        with torch.no_grad():
            _, raw, _ = token_logps(self.actor, pack([ids], [cont], self.pad_id), 1.0)
        return Probe(prompt, PROBE_TEXT, tuple(raw[0].tolist()), self.tolerance)

    def sync(self, pool, probe_prompt: str) -> float | None:
        """Push the actor's weights to every sampler (waking them first) and verify them; rank
        0 returns the largest probe log-prob difference."""
        state = hf_state_dict(self.actor, self.cfg.trainer.zero_stage)
        probe = self.probe(probe_prompt)
        if self.rank != 0:
            return None
        pool.wake_up()
        pool.update_weights(state, probe)
        return pool.last_probe_diff

    def save(self, state: dict, metrics: dict) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            self.actor.save_checkpoint(os.path.join(tmp, "actor"), tag="state")
            self.critic.save_checkpoint(os.path.join(tmp, "critic"), tag="state")
            torch.save(torch.get_rng_state(), os.path.join(tmp, f"rng_rank{self.rank}.pt"))
            weights = hf_state_dict(self.actor, self.cfg.trainer.zero_stage)
            if self.rank == 0:
                self.actor.module.save_pretrained(os.path.join(tmp, "hf"), state_dict=weights, safe_serialization=True)
                self.tokenizer.save_pretrained(os.path.join(tmp, "hf"))
                Path(tmp, STATE_FILE).write_text(json.dumps(state))
            ray.train.report({**metrics, "step": state["step"]}, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def restore(self) -> dict:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return {}
        with checkpoint.as_directory() as folder:
            self.actor.load_checkpoint(os.path.join(folder, "actor"), tag="state")
            self.critic.load_checkpoint(os.path.join(folder, "critic"), tag="state")
            torch.set_rng_state(torch.load(os.path.join(folder, f"rng_rank{self.rank}.pt")))
            return json.loads(Path(folder, STATE_FILE).read_text())


def _score(scorer, ro: Rollouts, mine: list[int], cfg: PPOConfig, norm: RunningMoments, iteration: int):
    """(per-principle rewards [b, K], scalar reward used for training [b], scalar before normalising)."""
    r = cfg.reward
    per_principle = scorer([ro.prompts[i] for i in mine], [ro.responses[i] for i in mine])
    _check_finite(per_principle, "reward", "scoring", iteration)
    scalar = scalar_reward(per_principle, r)
    _check_finite(scalar, "scalarized reward", "scoring", iteration)
    raw = scalar
    if r.normalize:
        norm.update(*_all_sum([float(len(scalar)), scalar.sum().item(), (scalar * scalar).sum().item()]))
        scalar = (scalar - norm.mean) / max(norm.std, 1e-8)
    return per_principle, scalar, raw


def _update(tr: _Trainer, cfg: PPOConfig, batch: Packed, old, advantages, values, returns, iteration: int) -> dict:
    """ppo_epochs passes of minibatch updates of the actor and the critic; mean losses."""
    p, mask, mb = cfg.ppo, batch.response_mask, cfg.ppo.minibatch_per_worker
    sums = {"policy_loss": 0.0, "value_loss": 0.0, "clip_fraction": 0.0, "entropy": 0.0, "approx_kl": 0.0}
    updates = 0
    for epoch in range(p.ppo_epochs):
        seed = cfg.trainer.seed * 7919 + iteration * 101 + epoch
        order = torch.randperm(len(mask), generator=torch.Generator().manual_seed(seed))
        for start in range(0, len(mask), mb):
            idx = order[start : start + mb]
            sub, m = batch.rows(idx), mask[idx]
            logps, _, entropy = token_logps(tr.actor, sub, cfg.sampler.temperature)
            policy_loss, clip_fraction = ppo_policy_loss(logps, old[idx], advantages[idx], m, p.clip_eps)
            ent = masked_mean(entropy, m)
            loss = policy_loss - p.entropy_coef * ent if p.entropy_coef else policy_loss  # no vocab-wide backward for 0
            _check_finite(loss, "policy loss", "training", iteration)
            tr.actor.backward(loss)
            tr.actor.step()
            v = token_values(tr.critic.module, sub)
            value_loss = ppo_value_loss(v, values[idx], returns[idx], m, p.value_clip_eps)
            _check_finite(value_loss, "value loss", "training", iteration)
            tr.critic.backward(value_loss)
            tr.critic.step()
            sums["policy_loss"] += policy_loss.item()
            sums["value_loss"] += value_loss.item()
            sums["clip_fraction"] += float(clip_fraction)
            sums["entropy"] += ent.item()
            sums["approx_kl"] += masked_mean(0.5 * (logps.detach() - old[idx]) ** 2, m).item()
            updates += 1
    return {k: v / updates for k, v in sums.items()}


def ppo_loop(lc: dict) -> None:
    import mlflow
    from mlflow.entities import Metric

    from alignray.rewards.scorers import HttpRewardModel, LocalRewardModels

    cfg = PPOConfig.model_validate(lc["config"])
    t, p = cfg.trainer, cfg.ppo
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(t.seed + rank)
    prompts = ray.get(lc["prompts"])
    # colocated: the node's cores (alignray.train.placement), at most the cores this process may use
    torch.set_num_threads(min(lc["threads"], len(os.sched_getaffinity(0))))
    scorer = (
        HttpRewardModel.of(cfg.reward)
        if cfg.reward.endpoint
        else LocalRewardModels(
            [Path(f) for f in lc["reward_paths"]], lc["reward_labels"], cfg.sampler.max_model_len, torch_dtype(t.precision)
        )
    )
    tr = _Trainer(lc, cfg, rank, world)
    state = tr.restore()
    iteration = state.get("step", 0)
    kl_ctl = KLController(**state["kl"]) if state else KLController(p.kl_coef, p.kl_target, p.kl_horizon)
    norm = RunningMoments(**state.get("reward_norm", {}))
    pool = lc["pool"] if rank == 0 else None
    if iteration:  # resumed: the samplers start from the initial policy
        tr.sync(pool, prompts[0])
    client = mlflow.MlflowClient(lc["tracking_uri"]) if rank == 0 else None
    nodes = [None] * world
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    if rank == 0:
        client.set_tag(lc["run_id"], "placement.trainer_nodes", ",".join(sorted(set(nodes))))
    stop = min(p.iterations, p.stop_after_iterations or p.iterations)
    n = p.prompts_per_step * p.samples_per_prompt
    mine = list(range(rank, n, world))
    while iteration < stop:
        times, started = {}, time.monotonic()
        box = [None]
        if rank == 0:
            chosen = [prompts[i] for i in prompt_indices(iteration, p.prompts_per_step, len(prompts), t.seed)]
            box[0] = rollout(pool, tr.tokenizer, chosen, cfg, iteration)
            pool.sleep()  # frees the GPU for training when colocated on GPUs; else a no-op
        dist.broadcast_object_list(box, src=0)
        ro: Rollouts = box[0]
        times["rollout"] = time.monotonic() - started

        tick = time.monotonic()
        per_principle, scalar, raw_scalar = _score(scorer, ro, mine, cfg, norm, iteration)
        batch = pack([ro.prompt_ids[i] for i in mine], [ro.response_ids[i] for i in mine], tr.pad_id)
        mask = batch.response_mask
        mb = p.minibatch_per_worker
        with torch.no_grad():
            old, raw, _ = _chunked(lambda b: token_logps(tr.actor, b, cfg.sampler.temperature), batch, mb)
            ref, _, _ = _chunked(lambda b: token_logps(tr.reference, b, cfg.sampler.temperature), batch, mb)
            (values,) = _chunked(lambda b: (token_values(tr.critic.module, b),), batch, mb)
        kl = kl_penalty(old, ref, p.kl_estimator) * mask
        token_rewards = -kl_ctl.coef * kl
        last = mask.sum(1).long() - 1
        token_rewards[torch.arange(len(mine)), last] += scalar
        advantages, returns = gae(token_rewards, values, mask, p.gamma, p.lam)
        if p.whiten_advantages:
            advantages = _whiten(advantages, mask)
        _check_finite(advantages, "advantages", "advantage", iteration)
        sampler = torch.zeros_like(raw)
        for row, i in enumerate(mine):
            sampler[row, : len(ro.sampler_logps[i])] = torch.tensor(ro.sampler_logps[i])
        times["scoring"] = time.monotonic() - tick

        tick = time.monotonic()
        losses = _update(tr, cfg, batch, old, advantages, values, returns, iteration)
        times["training"] = time.monotonic() - tick

        tick = time.monotonic()
        probe_diff = tr.sync(pool, prompts[0])
        times["sync"] = time.monotonic() - tick
        iteration += 1

        lengths = mask.sum(1)
        err = (returns - values) * mask
        local = [
            float(len(mine)), (kl.sum(1)).sum().item(), raw_scalar.sum().item(), lengths.sum().item(),
            mask.sum().item(), (returns * mask).sum().item(), (returns**2 * mask).sum().item(),
            err.sum().item(), (err**2).sum().item(), ((raw - sampler).abs() * mask).sum().item(),
            batch.attention_mask.sum().item(), *per_principle.sum(0).tolist(),
        ]
        count, kl_sum, reward_sum, length_sum, tokens, r1, r2, e1, e2, gap, seq_tokens, *principle_sums = _all_sum(local)
        var_ret = r2 / tokens - (r1 / tokens) ** 2
        var_err = e2 / tokens - (e1 / tokens) ** 2
        kl_ctl_coef = kl_ctl.coef
        kl_ctl.update(kl_sum / count, int(count))
        logged = {k: v / world for k, v in zip(sorted(losses), _all_sum([losses[k] for k in sorted(losses)]))}
        logged |= {
            "reward": reward_sum / count,
            "kl": kl_sum / count,
            "kl_coef": kl_ctl_coef,
            "explained_variance": 1.0 - var_err / var_ret if var_ret > 0 else 0.0,
            "logprob_gap": gap / tokens,
            "response_length": length_sum / count,
            "tokens_per_s": length_sum / times["rollout"],
            "sequence_tokens": seq_tokens,  # prompt + response tokens of the iteration
            **{f"time_{k}": v for k, v in times.items()},
            "time_iteration": time.monotonic() - started,
        }
        names = scorer.principles or [f"principle_{k}" for k in range(len(principle_sums))]
        logged |= {f"reward_{name}": s / count for name, s in zip(names, principle_sums)}
        if rank == 0:
            logged |= {"sync_probe_diff": probe_diff, "sampler_restarts": pool.restarts, "rollout_samples": len(ro.prompts)}
            now = int(time.time() * 1000)
            client.log_batch(lc["run_id"], metrics=[Metric(k, float(v), now, iteration) for k, v in logged.items()])
            lc["progress"].update.remote(iteration, logged["reward"])
        if iteration % p.checkpoint_every == 0 or iteration == stop:
            tr.save(
                {"step": iteration, "final": iteration == p.iterations, "prompt_position": iteration * p.prompts_per_step,
                 "kl": kl_ctl.state(), "reward_norm": norm.state()},
                logged,
            )
