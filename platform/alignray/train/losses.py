"""Preference-learning losses as pure functions: tensors in, per-example losses out.

Nothing is reduced over the batch unless a docstring says so; the caller picks the mean, sum
or weighting. Every argument is checked, and a bad one raises ValueError naming it and why.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_same_1d(**tensors: Tensor) -> None:
    """Each tensor is 1-D, and all share the shape of the first one given."""
    (first_name, first), *_ = tensors.items()
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D (one value per example), got shape {tuple(t.shape)}")
        if t.shape != first.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but {first_name} has shape "
                f"{tuple(first.shape)}; they must match"
            )


def _dpo_logits(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> Tensor:
    """h = beta * ((pc - rc) - (pr - rr)): how much more the policy prefers chosen than the reference does."""
    _check_same_1d(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    return beta * ((policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps))


def bradley_terry_loss(
    chosen_rewards: Tensor, rejected_rewards: Tensor, margin: float | Tensor | None = None
) -> Tensor:
    """Reward-model loss per pair: -logsigmoid(chosen - rejected - margin); margin 0 when None."""
    _check_same_1d(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    if isinstance(margin, Tensor):
        _check_same_1d(chosen_rewards=chosen_rewards, margin=margin)
    elif margin is None:
        margin = 0.0
    return -F.logsigmoid(chosen_rewards - rejected_rewards - margin)


def soft_bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor, preference_prob: Tensor) -> Tensor:
    """Reward-model loss per pair against a soft label p = P(chosen is better):
    -(p·logsigmoid(d) + (1-p)·logsigmoid(-d)), d = chosen - rejected. p ≡ 1 is Bradley-Terry;
    p = 0.5 pulls d towards 0 (a tie)."""
    _check_same_1d(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards, preference_prob=preference_prob)
    return _soft_logistic(chosen_rewards - rejected_rewards, preference_prob)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> Tensor:
    """DPO sigmoid loss per pair: -(1-ε)·logsigmoid(h) - ε·logsigmoid(-h), ε = label_smoothing.

    The log-probs are summed over each response's tokens; ε = 0 is standard DPO.
    """
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5], got {label_smoothing}")
    h = _dpo_logits(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    return -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)


def rdpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    preference_prob: Tensor,
) -> Tensor:
    """DPO with a soft label per pair: -(p·logsigmoid(h) + (1-p)·logsigmoid(-h)).

    p = preference_prob is a judge's probability that chosen beats rejected; p ≡ 1 is DPO.
    """
    h = _dpo_logits(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    _check_same_1d(policy_chosen_logps=policy_chosen_logps, preference_prob=preference_prob)
    return _soft_logistic(h, preference_prob)


def _soft_logistic(h: Tensor, preference_prob: Tensor) -> Tensor:
    """-(p·logsigmoid(h) + (1-p)·logsigmoid(-h)), after checking that p holds probabilities."""
    if torch.isnan(preference_prob).any():
        raise ValueError("preference_prob contains NaN; every pair needs a probability in [0, 1]")
    if ((preference_prob < 0) | (preference_prob > 1)).any():
        raise ValueError(
            f"preference_prob must be in [0, 1], got values from {float(preference_prob.min()):g} "
            f"to {float(preference_prob.max()):g}"
        )
    p = preference_prob
    return -(p * F.logsigmoid(h) + (1 - p) * F.logsigmoid(-h))


RRHF_SFT_REDUCTIONS = ("sum", "mean")


def rrhf_loss(
    logps: Tensor,
    lengths: Tensor,
    rewards: Tensor,
    length_penalty: float = 1.0,
    rank_weight: float = 1.0,
    sft_reduction: str = "sum",
) -> tuple[Tensor, Tensor, Tensor]:
    """RRHF loss for one prompt's k candidates; returns 0-dim (total, rank, sft).

    Scores are s_i = logps_i / lengths_i ** length_penalty (logps summed over response tokens).
    rank = Σ over pairs with r_i < r_j of max(0, s_i - s_j); total = rank_weight · rank + sft.
    sft is the NLL of the highest-reward candidate b (the first one if tied):
    - "sum" (default): -logps_b, summed over its tokens: the RRHF paper's fine-tuning loss
      L_ft = -Σ_t log P(y_b,t | x, y_b,<t) (Yuan et al. 2023, arXiv 2304.05302), so a longer
      best response weighs more against the rank term.
    - "mean": -logps_b / lengths_b, the mean NLL per token of b.
    (The authors' train.py in GanjinZero/RRHF does neither: it divides the best response's
    summed log-prob by the batch's padded sequence length, prompt and padding included.)
    """
    if sft_reduction not in RRHF_SFT_REDUCTIONS:
        raise ValueError(f"sft_reduction must be one of {RRHF_SFT_REDUCTIONS}, got {sft_reduction!r}")
    _check_same_1d(logps=logps, lengths=lengths, rewards=rewards)
    if logps.numel() < 2:
        raise ValueError(f"logps must hold k >= 2 candidates to rank, got k = {logps.numel()}")
    if (lengths <= 0).any():
        raise ValueError(f"lengths must all be > 0 (response token counts), got {lengths.tolist()}")
    if (rewards == rewards[0]).all():
        raise ValueError("rewards are all equal, so there is nothing to rank")
    lengths = lengths.to(logps.dtype)
    scores = logps / lengths**length_penalty
    worse_than = rewards[:, None] < rewards[None, :]  # [i, j]: r_i < r_j
    rank = (scores[:, None] - scores[None, :]).clamp(min=0)[worse_than].sum()
    best = torch.argmax(rewards)  # first index among ties
    sft = -logps[best] if sft_reduction == "sum" else -logps[best] / lengths[best]
    return rank_weight * rank + sft, rank, sft


def sequence_logps(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """Summed log-prob of the label tokens per sequence, and how many label tokens each has.

    logits (batch, seq, vocab) at position t predict labels (batch, seq) at t + 1; labels equal
    to ignore_index are left out. Computed in float32.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be 3-D (batch, seq, vocab), got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:2]:
        raise ValueError(
            f"labels must have shape (batch, seq) = {tuple(logits.shape[:2])} to match logits, "
            f"got {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer token ids, got dtype {labels.dtype}")
    targets = labels[:, 1:]
    mask = targets != ignore_index
    vocab = logits.shape[-1]
    if ((targets[mask] < 0) | (targets[mask] >= vocab)).any():
        raise ValueError(f"labels must be token ids in [0, {vocab}) or ignore_index={ignore_index}")
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logps = log_probs.gather(-1, targets.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, token_logps, 0.0).sum(-1), mask.sum(-1)


# PPO pieces. Tensors are per token, (batch, T), with a mask that is 1 (or True) on response
# tokens and 0 elsewhere; the losses below reduce to a masked mean over the whole batch.

KL_KINDS = ("k1", "k2", "k3")


def _check_same_shape(**tensors: Tensor) -> None:
    """Each argument is a tensor with the shape of the first one given."""
    (first_name, first), *_ = tensors.items()
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.shape != first.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)} but {first_name} has shape "
                f"{tuple(first.shape)}; they must match"
            )


def _check_mask(mask: Tensor, like: Tensor, like_name: str) -> Tensor:
    """The mask as bool, after checking it matches `like` and holds only 0 and 1."""
    _check_same_shape(**{like_name: like, "mask": mask})
    if ((mask != 0) & (mask != 1)).any():
        raise ValueError("mask must hold only 0 and 1 (or False and True)")
    return mask.bool()


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """0-dim mean of x over the entries where mask is 1; the mask must select at least one."""
    keep = _check_mask(mask, x, "x")
    if not keep.any():
        raise ValueError("mask must select at least one entry, got all zeros")
    return torch.where(keep, x, 0.0).sum() / keep.sum()


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """x shifted and scaled to mean 0 and std 1 over the masked entries; 0 where mask is 0.

    The std is the population one (divides by the count); eps is added to the variance.
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return torch.where(mask.bool(), (x - mean) * torch.rsqrt(var + eps), 0.0)


def kl_penalty(logps: Tensor, ref_logps: Tensor, kind: str) -> Tensor:
    """Per-token estimate of KL(policy ‖ reference) from the sampled tokens' log-probs.

    With d = logps - ref_logps: "k1" is d, "k2" is d²/2 and "k3" is exp(-d) - 1 + d, which is
    never negative. The output has the shape of the inputs.
    """
    _check_same_shape(logps=logps, ref_logps=ref_logps)
    d = logps - ref_logps
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d**2
    if kind == "k3":
        return torch.exp(-d) - 1 + d
    raise ValueError(f"kind must be one of {KL_KINDS}, got {kind!r}")


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates and returns, each (batch, T) and 0 where mask is 0.

    Going backwards over t: δ_t = r_t + γ·V_{t+1}·m_{t+1} - V_t and
    A_t = δ_t + γλ·m_{t+1}·A_{t+1}, with m_T = 0, so the value after a row's last response
    token is 0. returns = advantages + values. Computed under torch.no_grad(): both outputs are
    constants with no graph back to rewards or values.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be 2-D (batch, T), got shape {tuple(rewards.shape)}")
    _check_same_shape(rewards=rewards, values=values)
    keep = _check_mask(mask, rewards, "rewards")
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if not 0 <= lam <= 1:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    with torch.no_grad():
        m = keep.to(values.dtype)
        advantages = torch.zeros_like(values)
        next_value = next_adv = next_m = torch.zeros_like(values[:, 0])
        for t in reversed(range(rewards.shape[1])):
            delta = rewards[:, t] + gamma * next_value * next_m - values[:, t]
            advantages[:, t] = delta + gamma * lam * next_m * next_adv
            next_value, next_adv, next_m = values[:, t], advantages[:, t], m[:, t]
        advantages = torch.where(keep, advantages, 0.0)
        returns = torch.where(keep, advantages + values, 0.0)
    return advantages, returns


AGGREGATIONS = ("token", "sequence")


def aggregate(x: Tensor, mask: Tensor, how: str) -> Tensor:
    """0-dim reduction of per-token x (batch, T) over the masked entries: "token" is the mean
    over every masked token of the batch (long responses weigh more); "sequence" is the mean
    over rows of each row's masked mean (every response weighs the same). Rows with no masked
    token are left out of "sequence"."""
    if how == "token":
        return masked_mean(x, mask)
    if how != "sequence":
        raise ValueError(f"how must be one of {AGGREGATIONS}, got {how!r}")
    keep = _check_mask(mask, x, "x")
    counts = keep.sum(1)
    rows = counts > 0
    if not rows.any():
        raise ValueError("mask must select at least one entry, got all zeros")
    per_row = torch.where(keep, x, 0.0).sum(1)[rows] / counts[rows]
    return per_row.mean()


def ppo_policy_loss(
    logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float,
    clip_eps_high: float | None = None, aggregation: str = "token",
) -> tuple[Tensor, Tensor]:
    """PPO clipped surrogate, reduced to 0-dim by `aggregate` (default: the masked mean over
    every token of the batch).

    Per token, with ratio = exp(logps - old_logps):
    max(-A·ratio, -A·clip(ratio, 1 - ε, 1 + ε_high)), ε_high defaulting to ε. old_logps and
    advantages are constants (they are detached). Also returns clip_fraction, the detached 0-dim
    share of masked tokens (over the whole batch) where the clipped term is strictly the larger,
    i.e. where clipping was active.
    """
    _check_same_shape(logps=logps, old_logps=old_logps, advantages=advantages, mask=mask)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    if not (clip_eps > 0 and high > 0):
        raise ValueError(f"clip_eps and clip_eps_high must be > 0, got {clip_eps} and {high}")
    advantages = advantages.detach()
    ratio = torch.exp(logps - old_logps.detach())
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_eps, 1 + high)
    loss = aggregate(torch.maximum(unclipped, clipped), mask, aggregation)
    clip_fraction = masked_mean((clipped > unclipped).to(ratio.dtype), mask).detach()
    return loss, clip_fraction


ADVANTAGES = ("rloo", "grpo")


def group_advantages(rewards: Tensor, group: int, kind: str, scale: bool = True, eps: float = 1e-6) -> Tensor:
    """Critic-free advantages, one per response, from the rewards of responses sampled `group` at
    a time per prompt (rewards is 1-D, the `group` samples of each prompt next to each other).

    "rloo": each reward minus the mean of the other group - 1 rewards of its prompt (the
    leave-one-out baseline; group >= 2). "grpo": each reward minus its group's mean, divided by
    the group's standard deviation (the sample one, n - 1) plus eps when `scale`, else not
    divided (a group whose rewards are all equal gets zeros either way). Computed without a
    graph: the output is a constant.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (one per response), got shape {tuple(rewards.shape)}")
    if group < 2:
        raise ValueError(f"group must be >= 2 samples per prompt for a baseline from the others, got {group}")
    if len(rewards) % group:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {group}")
    if kind not in ADVANTAGES:
        raise ValueError(f"kind must be one of {ADVANTAGES}, got {kind!r}")
    with torch.no_grad():
        r = rewards.reshape(-1, group)
        if kind == "rloo":
            out = r - (r.sum(1, keepdim=True) - r) / (group - 1)
        else:
            out = r - r.mean(1, keepdim=True)
            if scale:
                out = out / (r.std(1, keepdim=True) + eps)
    return out.reshape(-1)


def ppo_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_eps: float
) -> Tensor:
    """Clipped value loss, reduced to a 0-dim masked mean over every token of the batch.

    Per token: ½·max((v - R)², (v_old + clip(v - v_old, -ε, ε) - R)²). old_values and returns
    are constants (they are detached).
    """
    _check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    old_values, returns = old_values.detach(), returns.detach()
    clipped_values = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    per_token = 0.5 * torch.maximum((values - returns) ** 2, (clipped_values - returns) ** 2)
    return masked_mean(per_token, mask)
