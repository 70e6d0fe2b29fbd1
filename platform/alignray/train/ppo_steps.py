"""The two steps of a PPO iteration on one Ray Train worker, after the rollout.

- `experience`: this rank's share of the rollouts becomes a batch with rewards (per principle,
  scalarized, optionally normalised over every rank), the actor's old log-probs, the reference's
  log-probs and advantages. PPO: the critic's values, the KL-penalised token rewards and GAE
  advantages and returns. RLOO / GRPO (no critic): each response's reward (minus the summed KL
  penalty, with kl_in = reward) against the other samples of its prompt, over every rank
  (`losses.group_advantages`), the same on each of its tokens.
- `update`: `ppo_epochs` passes of minibatch updates of the actor (with the k3 KL term when
  kl_in = loss) and of the critic, if there is one. When the update is a single pass over the
  rank's rows that nothing before it needs the old log-probs of (`single_update`), the
  experience skips the actor's forward pass and the update's log-probs serve as the old ones.

`iteration_metrics` turns both into the iteration's logged metrics (sums over ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from alignray.config import PPOConfig
from alignray.rewards.scorers import scalar_reward
from alignray.train.engines import check_finite, rank_means, rank_sums
from alignray.train.losses import (
    aggregate,
    gae,
    group_advantages,
    kl_penalty,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
)
from alignray.train.ppo_parts import (
    KLController,
    Packed,
    RunningMoments,
    pack,
    token_logps,
    token_values,
)


@dataclass
class Rollouts:
    prompts: list[str]
    responses: list[str]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    sampler_logps: list[list[float]]  # the samplers' raw (temperature 1) log-probs


@dataclass
class Experience:
    """One rank's share of an iteration's rollouts, scored; per-token tensors are [b, R]."""

    batch: Packed
    per_principle: Tensor  # [b, K] the reward models' scores
    reward: Tensor  # [b] the scalarized reward before normalising (the logged one)
    # old, raw and kl are None until `update` fills them when its one forward pass gives them (`single_update`)
    old: Tensor | None  # the actor's log-probs at the sampling temperature (PPO's ratio denominator)
    raw: Tensor | None  # the actor's log-probs at temperature 1 (compared with the sampler's)
    sampler: Tensor  # the sampler's log-probs at temperature 1, zero-padded
    kl: Tensor | None  # per-token KL estimate to the reference, masked
    ref: Tensor  # the reference's log-probs at the sampling temperature
    advantages: Tensor
    values: Tensor | None = None  # the critic's (ppo); None without one
    returns: Tensor | None = None


def _guard(value: Tensor, what: str, phase: str, iteration: int) -> None:
    check_finite(value, f"non-finite {what} in the {phase} phase of iteration {iteration + 1}: PPO stopped;"
                        " the last good checkpoint is kept (check the reward source, or lower trainer.learning_rate)")


def _whiten(x: Tensor, mask: Tensor) -> Tensor:
    """Zero mean, unit variance over the response tokens of every rank's share."""
    n, total, total_sq = rank_sums([mask.sum().item(), (x * mask).sum().item(), (x * x * mask).sum().item()])
    mean = total / n
    var = max(total_sq / n - mean * mean, 0.0)
    return (x - mean) / (var + 1e-8) ** 0.5 * mask


def _chunked(fn, batch: Packed, size: int) -> list[Tensor | None]:
    """fn over row chunks of the batch, concatenated per output (None stays None)."""
    n = len(batch.input_ids)
    parts = [fn(batch.rows(torch.arange(i, min(i + size, n)))) for i in range(0, n, size)]
    return [None if col[0] is None else torch.cat(col) for col in zip(*parts)]


def single_update(tr, cfg: PPOConfig, rows: int) -> bool:
    """Whether an iteration's update is one forward and backward pass over this rank's rows whose
    log-probs are then the old ones (one epoch, one minibatch, no dropout), nothing before the
    update needing them (RLOO / GRPO with the KL as a loss term): the experience then skips the
    actor's forward pass and the update fills in old, raw and kl."""
    p = cfg.ppo
    return (tr.critic is None and p.kl_in == "loss" and p.ppo_epochs == 1 and rows <= p.minibatch_per_worker
            and not tr.dropout)


def _shared_advantages(sequence: Tensor, mine: list[int], cfg: PPOConfig) -> Tensor:
    """RLOO / GRPO advantages of this rank's rows `mine`, from every rank's sequence rewards (a
    prompt's samples may sit on different ranks)."""
    p = cfg.ppo
    every = [0.0] * (p.prompts_per_step * p.samples_per_prompt)
    for row, i in enumerate(mine):
        every[i] = float(sequence[row])
    shared = group_advantages(torch.tensor(rank_sums(every)), p.samples_per_prompt, p.algorithm, p.group_std)
    return shared[mine].to(sequence.dtype)


def experience(tr, scorer, ro: Rollouts, mine: list[int], cfg: PPOConfig, kl_coef: float, norm: RunningMoments,
               iteration: int) -> Experience:
    """Score rows `mine` of the rollouts with the trainer `tr` (actor, critic or None, reference,
    pad_id); updates the reward normaliser `norm` with every rank's rewards."""
    p, r, temperature = cfg.ppo, cfg.reward, cfg.sampler.temperature
    per_principle = scorer([ro.prompts[i] for i in mine], [ro.responses[i] for i in mine])
    _guard(per_principle, "reward", "scoring", iteration)
    reward = scalar_reward(per_principle, r)
    _guard(reward, "scalarized reward", "scoring", iteration)
    trained = reward
    if r.normalize:
        norm.update(*rank_sums([float(len(reward)), reward.sum().item(), (reward * reward).sum().item()]))
        trained = (reward - norm.mean) / max(norm.std, 1e-8)

    batch = pack([ro.prompt_ids[i] for i in mine], [ro.response_ids[i] for i in mine], tr.pad_id)
    mask, mb = batch.response_mask, p.minibatch_per_worker
    tr.actor.eval()  # the experience without dropout; the update trains with it (if the config has any)
    old = raw = kl = None
    with torch.no_grad():
        if not single_update(tr, cfg, len(mine)):
            old, raw, _ = _chunked(lambda b: token_logps(tr.actor, b, temperature, entropy=False), batch, mb)
        (ref,) = _chunked(lambda b: (tr.reference_logps(b, temperature),), batch, mb)
    if old is not None:
        kl = kl_penalty(old, ref, p.kl_estimator) * mask
    values = returns = None
    if tr.critic is not None:
        tr.critic.eval()
        with torch.no_grad():
            (values,) = _chunked(lambda b: (token_values(tr.critic.module, b),), batch, mb)
        token_rewards = -kl_coef * kl
        token_rewards[torch.arange(len(mine)), mask.sum(1).long() - 1] += trained
        advantages, returns = gae(token_rewards, values, mask, p.gamma, p.lam)
    else:
        sequence = trained - kl_coef * kl.sum(1) if p.kl_in == "reward" else trained
        advantages = _shared_advantages(sequence, mine, cfg)[:, None] * mask
    if p.whiten:
        advantages = _whiten(advantages, mask)
    _guard(advantages, "advantages", "advantage", iteration)
    sampler = torch.zeros_like(ref)
    for row, i in enumerate(mine):
        sampler[row, : len(ro.sampler_logps[i])] = torch.tensor(ro.sampler_logps[i])
    return Experience(batch, per_principle, reward, old, raw, sampler, kl, ref, advantages, values, returns)


def update(tr, cfg: PPOConfig, exp: Experience, kl_coef: float, iteration: int) -> dict[str, float]:
    """`ppo_epochs` passes of minibatch updates of the actor and the critic (if any); this rank's
    mean losses, clip fraction, entropy and approximate KL to the old policy."""
    p, mask, mb = cfg.ppo, exp.batch.response_mask, cfg.ppo.minibatch_per_worker
    sums = {"policy_loss": 0.0, "clip_fraction": 0.0, "entropy": 0.0, "approx_kl": 0.0}
    sums |= {"value_loss": 0.0} if tr.critic is not None else {}
    sums |= {"kl_loss": 0.0} if p.kl_in == "loss" else {}
    updates = 0
    tr.actor.train()
    if tr.critic is not None:
        tr.critic.train()
    for epoch in range(p.ppo_epochs):
        seed = cfg.trainer.seed * 7919 + iteration * 101 + epoch
        order = torch.randperm(len(mask), generator=torch.Generator().manual_seed(seed))
        for start in range(0, len(mask), mb):
            idx = order[start : start + mb]
            sub, m = exp.batch.rows(idx), mask[idx]
            logps, raw, entropy = token_logps(tr.actor, sub, cfg.sampler.temperature, raw=exp.old is None)
            if exp.old is None:  # single_update: this pass's log-probs are the old ones
                for name, value in (("old", logps.detach()), ("raw", raw.detach())):
                    filled = torch.empty_like(value)
                    filled[idx] = value
                    setattr(exp, name, filled)
                exp.kl = kl_penalty(exp.old, exp.ref, p.kl_estimator) * mask
            old = exp.old[idx]
            policy_loss, clip_fraction = ppo_policy_loss(logps, old, exp.advantages[idx], m, p.clip_eps,
                                                         p.clip_eps_high, p.loss_aggregation)
            ent = masked_mean(entropy, m)
            loss = policy_loss - p.entropy_coef * ent if p.entropy_coef else policy_loss  # no vocab-wide backward for 0
            if p.kl_in == "loss":
                kl_loss = aggregate(kl_penalty(logps, exp.ref[idx], "k3"), m, p.loss_aggregation)
                loss = loss + kl_coef * kl_loss
                sums["kl_loss"] += kl_loss.item()
            _guard(loss, "policy loss", "training", iteration)
            tr.actor.backward(loss)
            tr.actor.step()
            if tr.critic is not None:
                v = token_values(tr.critic.module, sub)
                value_loss = ppo_value_loss(v, exp.values[idx], exp.returns[idx], m, p.value_clip_eps)
                _guard(value_loss, "value loss", "training", iteration)
                tr.critic.backward(value_loss)
                tr.critic.step()
                sums["value_loss"] += value_loss.item()
            sums["policy_loss"] += policy_loss.item()
            sums["clip_fraction"] += float(clip_fraction)
            sums["entropy"] += ent.item()
            sums["approx_kl"] += masked_mean(0.5 * (logps.detach() - old) ** 2, m).item()
            updates += 1
    return {k: v / updates for k, v in sums.items()}


def iteration_metrics(exp: Experience, losses: dict[str, float], kl_ctl: KLController, principles: list[str] | None,
                      seconds: dict[str, float]) -> dict[str, float]:
    """The iteration's metrics over every rank (losses: the mean of the ranks' means; the rest:
    per sample or per response token of the whole batch); then the KL controller takes this
    iteration's KL (the logged kl_coef is the one the iteration used)."""
    mask, batch = exp.batch.response_mask, exp.batch
    lengths = mask.sum(1)
    fit = []  # the critic's fit to the returns: their sums and squares, and the errors'
    if exp.values is not None:
        err = (exp.returns - exp.values) * mask
        fit = [(exp.returns * mask).sum().item(), (exp.returns**2 * mask).sum().item(), err.sum().item(),
               (err**2).sum().item()]
    local = [
        float(len(lengths)), exp.kl.sum().item(), exp.reward.sum().item(), lengths.sum().item(), mask.sum().item(),
        ((exp.raw - exp.sampler).abs() * mask).sum().item(), batch.attention_mask.sum().item(), *fit,
        *exp.per_principle.sum(0).tolist(),
    ]
    count, kl_sum, reward_sum, length_sum, tokens, gap, seq_tokens, *rest = rank_sums(local)
    fit, principle_sums = rest[: len(fit)], rest[len(fit):]
    logged = rank_means(losses) | {
        "reward": reward_sum / count,
        "kl": kl_sum / count,
        "kl_coef": kl_ctl.coef,
        "logprob_gap": gap / tokens,
        "response_length": length_sum / count,
        "tokens_per_s": length_sum / seconds["rollout"],
        "sequence_tokens": seq_tokens,  # prompt + response tokens of the iteration
        **{f"time_{k}": v for k, v in seconds.items()},
    }
    if fit:
        r1, r2, e1, e2 = fit
        var_ret = r2 / tokens - (r1 / tokens) ** 2
        var_err = e2 / tokens - (e1 / tokens) ** 2
        logged["explained_variance"] = 1.0 - var_err / var_ret if var_ret > 0 else 0.0
    names = principles or [f"principle_{k}" for k in range(len(principle_sums))]
    logged |= {f"reward_{name}": s / count for name, s in zip(names, principle_sums)}
    kl_ctl.update(kl_sum / count, int(count))
    return logged
