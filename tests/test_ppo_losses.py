"""PPO pieces against hand-computed values, their gradients and input checks."""

import math

import pytest
import torch
from alignray.train.losses import (
    aggregate,
    gae,
    group_advantages,
    kl_penalty,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def close(actual, expected):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=torch.float64))


# (logp, ref) points; d = logp - ref is 0.5, -1.5 and 0.
KL_POINTS = [(-1.0, -1.5), (-2.0, -0.5), (-0.3, -0.3)]


@pytest.mark.parametrize(
    "kind, by_hand",
    [
        ("k1", lambda lp, ref: lp - ref),
        ("k2", lambda lp, ref: 0.5 * (lp - ref) ** 2),
        ("k3", lambda lp, ref: math.exp(ref - lp) - 1 - (ref - lp)),
    ],
)
def test_kl_penalty_by_hand(kind, by_hand):
    logps, refs = t([p[0] for p in KL_POINTS]), t([p[1] for p in KL_POINTS])
    out = kl_penalty(logps, refs, kind)
    assert out.shape == (1, 3)
    close(out, [[by_hand(lp, ref) for lp, ref in KL_POINTS]])


def test_kl_k3_is_never_negative():
    gen = torch.Generator().manual_seed(0)
    logps, refs = torch.randn(2, 4, 50, generator=gen) * 3, torch.randn(2, 4, 50, generator=gen) * 3
    assert (kl_penalty(logps, refs, "k3") >= 0).all()


def test_masked_mean_and_whiten_by_hand():
    x, mask = t([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]), torch.tensor([[1, 1, 0], [0, 1, 0]])
    close(masked_mean(x, mask), (1 + 2 + 5) / 3)
    # masked (1, 3): mean 2, population variance 1
    close(masked_whiten(t([1.0, 3.0, 100.0]), torch.tensor([[True, True, False]])), [[-1.0, 1.0, 0.0]])


def test_masked_whiten_gives_mean_0_std_1_on_masked_entries():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, generator=gen, dtype=torch.float64) * 4 + 7
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0]])
    out = masked_whiten(x, mask)
    kept = out[mask.bool()]
    assert kept.mean().item() == pytest.approx(0.0, abs=1e-9)
    assert kept.std(correction=0).item() == pytest.approx(1.0, abs=1e-6)
    assert (out[~mask.bool()] == 0).all()


def test_gae_one_row_by_hand():
    gamma, lam = 0.9, 0.8
    rewards, values = t([0.0, 1.0, 3.0]), t([0.5, -1.0, 2.0])
    d2 = 3.0 - 2.0  # the value after the last token is 0
    a2 = d2
    d1 = 1.0 + gamma * 2.0 - (-1.0)
    a1 = d1 + gamma * lam * a2
    d0 = 0.0 + gamma * (-1.0) - 0.5
    a0 = d0 + gamma * lam * a1
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma, lam)
    close(advantages, [[a0, a1, a2]])
    close(returns, [[a0 + 0.5, a1 - 1.0, a2 + 2.0]])


def test_gae_batch_with_different_masks_by_hand():
    gamma, lam = 0.5, 0.6
    gl = gamma * lam
    # Row 0: prompt at 0, response 1..3, padding at 4. Row 1: response 2..4, to the end.
    # The 9s and 7 sit where the mask is 0 and must not matter.
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]])
    rewards = t([9.0, 0.5, 0.0, 1.0, 9.0], [9.0, 9.0, 0.0, 0.0, 2.0])
    values = t([7.0, 0.2, 0.4, 0.6, 7.0], [7.0, 7.0, 1.0, -0.5, 0.25])
    r0_3 = 1.0 - 0.6  # the value after the last response token is 0, not 7
    r0_2 = (0.0 + gamma * 0.6 - 0.4) + gl * r0_3
    r0_1 = (0.5 + gamma * 0.4 - 0.2) + gl * r0_2
    r1_4 = 2.0 - 0.25
    r1_3 = (0.0 + gamma * 0.25 + 0.5) + gl * r1_4
    r1_2 = (0.0 + gamma * -0.5 - 1.0) + gl * r1_3
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    close(advantages, [[0.0, r0_1, r0_2, r0_3, 0.0], [0.0, 0.0, r1_2, r1_3, r1_4]])
    close(returns, [[0.0, r0_1 + 0.2, r0_2 + 0.4, r0_3 + 0.6, 0.0], [0.0, 0.0, r1_2 + 1.0, r1_3 - 0.5, r1_4 + 0.25]])
    close(returns, torch.where(mask.bool(), advantages + values, 0.0))


def test_gae_carries_no_gradient():
    rewards, values = t([1.0, 2.0]).requires_grad_(), t([0.5, 0.5]).requires_grad_()
    advantages, returns = gae(rewards, values, torch.ones(1, 2), 0.9, 0.95)
    assert not advantages.requires_grad and not returns.requires_grad


# clip_eps = 0.2. Per token (ratio, A) -> max(-A·ratio, -A·clip(ratio)), clipping active?
#   (1.5,  2) -> max(-3.0, -2.4) = -2.4  yes
#   (0.5,  1) -> max(-0.5, -0.8) = -0.5  no
#   (0.5, -1) -> max( 0.5,  0.8) =  0.8  yes
#   (1.1, -2) -> max( 2.2,  2.2) =  2.2  no (a tie is not clipping)
#   (1.5, -1) -> max( 1.5,  1.2) =  1.5  no
#   (3.0, 10) -> masked out
RATIOS, ADVANTAGES = [[1.5, 0.5, 0.5], [1.1, 1.5, 3.0]], t([2.0, 1.0, -1.0], [-2.0, -1.0, 10.0])
POLICY_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_ppo_policy_loss_by_hand():
    old_logps = t([-1.0, -2.0, -0.5], [-3.0, -1.0, -2.0])
    logps = (old_logps + torch.log(t(*RATIOS))).requires_grad_()
    loss, clip_fraction = ppo_policy_loss(logps, old_logps, ADVANTAGES, POLICY_MASK, clip_eps=0.2)
    close(loss, (-2.4 - 0.5 + 0.8 + 2.2 + 1.5) / 5)
    close(clip_fraction, 2 / 5)
    assert clip_fraction.dim() == 0 and not clip_fraction.requires_grad
    loss.backward()
    # d/dlogp of -A·ratio is -A·ratio; clipped tokens and the masked one get 0.
    close(logps.grad, [[0.0, -1.0 * 0.5 / 5, 0.0], [2.0 * 1.1 / 5, 1.0 * 1.5 / 5, 0.0]])


def test_ppo_policy_loss_with_a_higher_upper_clip_and_a_mean_per_response():
    # clip range [0.8, 1.6]: the ratio 1.5 with A = 2 is no longer clipped; only (0.5, A = -1) is
    old_logps = t([-1.0, -2.0, -0.5], [-3.0, -1.0, -2.0])
    logps = (old_logps + torch.log(t(*RATIOS))).requires_grad_()
    loss, clip_fraction = ppo_policy_loss(logps, old_logps, ADVANTAGES, POLICY_MASK, 0.2, clip_eps_high=0.6,
                                          aggregation="sequence")
    # per token: row 1 -3.0, -0.5, 0.8; row 2 2.2, 1.5 (and one masked): the mean of the rows' means
    close(loss, ((-3.0 - 0.5 + 0.8) / 3 + (2.2 + 1.5) / 2) / 2)
    close(clip_fraction, 1 / 5)  # over tokens, whatever the aggregation
    loss.backward()
    close(logps.grad, [[-2.0 * 1.5 / 6, -1.0 * 0.5 / 6, 0.0], [2.0 * 1.1 / 4, 1.0 * 1.5 / 4, 0.0]])
    token, _ = ppo_policy_loss(logps.detach(), old_logps, ADVANTAGES, POLICY_MASK, 0.2, clip_eps_high=0.6)
    close(token, (-3.0 - 0.5 + 0.8 + 2.2 + 1.5) / 5)
    with pytest.raises(ValueError, match="clip_eps and clip_eps_high must be > 0"):
        ppo_policy_loss(logps, old_logps, ADVANTAGES, POLICY_MASK, 0.2, clip_eps_high=0.0)


def test_aggregate_per_token_or_per_response():
    x, mask = t([1.0, 2.0, 9.0], [4.0, 9.0, 9.0], [9.0, 9.0, 9.0]), torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    close(aggregate(x, mask, "token"), (1 + 2 + 4) / 3)
    close(aggregate(x, mask, "sequence"), (1.5 + 4) / 2)  # a row with no token is left out
    with pytest.raises(ValueError, match="how must be one of"):
        aggregate(x, mask, "prompt")
    with pytest.raises(ValueError, match="at least one entry"):
        aggregate(x, torch.zeros_like(mask), "sequence")


def test_rloo_and_grpo_advantages_by_hand():
    rewards = t(1.0, 2.0, 6.0, 5.0, 5.0, 5.0)  # two prompts, three samples each
    # leave-one-out: each minus the mean of the other two
    close(group_advantages(rewards, 3, "rloo"), [1 - 4, 2 - 3.5, 6 - 1.5, 0.0, 0.0, 0.0])
    # GRPO: minus the group's mean (3), over its sample std (sqrt((4 + 1 + 9) / 2)); an even group: zeros
    std = math.sqrt(7)
    close(group_advantages(rewards, 3, "grpo", eps=1e-12), [-2 / std, -1 / std, 3 / std, 0.0, 0.0, 0.0])
    close(group_advantages(rewards, 3, "grpo", scale=False), [-2.0, -1.0, 3.0, 0.0, 0.0, 0.0])
    # RLOO is the unscaled GRPO advantage times k / (k - 1)
    close(group_advantages(rewards, 3, "rloo"), 1.5 * group_advantages(rewards, 3, "grpo", scale=False))
    assert not group_advantages(rewards.clone().requires_grad_(), 3, "rloo").requires_grad
    for args, message in [((rewards, 1, "rloo"), "group must be >= 2"), ((rewards, 4, "rloo"), "do not split into groups of 4"),
                          ((rewards, 3, "ppo"), "kind must be one of"), ((rewards[None], 3, "rloo"), "must be 1-D")]:
        with pytest.raises(ValueError, match=message):
            group_advantages(*args)


def test_ppo_value_loss_by_hand():
    # clip_eps = 0.5. Per token (v, old, R) -> ½·max((v - R)², (old + clip(v - old) - R)²):
    #   (2.0, 1.0, 2.0) -> clipped v = 1.5: max(0, 0.25) = 0.25, the clipped branch
    #   (0.0, 1.0, 3.0) -> clipped v = 0.5: max(9, 6.25) = 9, the unclipped branch
    #   (1.2, 1.0, 0.0) -> inside the clip range: 1.44
    #   (100, 1.0, 0.0) -> masked out
    values = t([2.0, 0.0], [1.2, 100.0]).requires_grad_()
    old_values, returns = t([1.0, 1.0], [1.0, 1.0]), t([2.0, 3.0], [0.0, 0.0])
    loss = ppo_value_loss(values, old_values, returns, torch.tensor([[1, 1], [1, 0]]), clip_eps=0.5)
    close(loss, 0.5 * (0.25 + 9 + 1.44) / 3)
    loss.backward()
    # (v - R) / 3 where the unclipped branch wins; 0 on the clipped token and the masked one.
    close(values.grad, [[0.0, -3.0 / 3], [1.2 / 3, 0.0]])


MASK = torch.tensor([[1, 1, 0], [0, 1, 1]])


@pytest.mark.parametrize(
    "make_loss",
    [
        lambda x: kl_penalty(x[0], x[1], "k1"),
        lambda x: kl_penalty(x[0], x[1], "k2"),
        lambda x: kl_penalty(x[0], x[1], "k3"),
        lambda x: masked_mean(x[0], MASK),
        lambda x: masked_whiten(x[0], MASK),
        lambda x: ppo_policy_loss(x[0], x[1], x[2], MASK, 0.2)[0],
        lambda x: ppo_value_loss(x[0], x[1], x[2], MASK, 0.2),
    ],
    ids=["k1", "k2", "k3", "masked_mean", "masked_whiten", "ppo_policy", "ppo_value"],
)
def test_gradients_flow_and_inputs_are_untouched(make_loss):
    gen = torch.Generator().manual_seed(0)
    leaves = [torch.randn(2, 3, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(3)]
    before = [x.detach().clone() for x in leaves]
    (make_loss(leaves) * torch.arange(1.0, 7.0, dtype=torch.float64).reshape(2, 3)).sum().backward()
    assert leaves[0].grad is not None and leaves[0].grad.abs().sum() > 0
    assert all(torch.equal(x.detach(), b) for x, b in zip(leaves, before))


X = torch.zeros(2, 3)
ONES = torch.ones(2, 3)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: kl_penalty(X, X, "kl"), r"^kind must be one of \('k1', 'k2', 'k3'\), got 'kl'"),
        (lambda: kl_penalty(X, X[:, :2], "k1"), "^ref_logps has shape"),
        (lambda: kl_penalty([0.0], X, "k1"), "^logps must be a torch.Tensor"),
        (lambda: masked_mean(X, torch.zeros(2, 3)), "^mask must select at least one entry"),
        (lambda: masked_mean(X, 2 * ONES), "^mask must hold only 0 and 1"),
        (lambda: masked_mean(X, ONES[:1]), "^mask has shape"),
        (lambda: masked_whiten(X, ONES, eps=0.0), "^eps must be > 0"),
        (lambda: gae(X[0], X[0], ONES[0], 0.9, 0.9), "^rewards must be 2-D"),
        (lambda: gae(X, X[:1], ONES, 0.9, 0.9), "^values has shape"),
        (lambda: gae(X, X, ONES[:, :2], 0.9, 0.9), "^mask has shape"),
        (lambda: gae(X, X, ONES, 1.5, 0.9), r"^gamma must be in \[0, 1\]"),
        (lambda: gae(X, X, ONES, 0.9, -0.1), r"^lam must be in \[0, 1\]"),
        (lambda: ppo_policy_loss(X, X, X, ONES, 0.0), "^clip_eps and clip_eps_high must be > 0"),
        (lambda: ppo_policy_loss(X, X, X[:1], ONES, 0.2), "^advantages has shape"),
        (lambda: ppo_policy_loss(X, X, X, ONES[:1], 0.2), "^mask has shape"),
        (lambda: ppo_policy_loss(X, X, X, -ONES, 0.2), "^mask must hold only 0 and 1"),
        (lambda: ppo_value_loss(X, X, X[:, :1], ONES, 0.2), "^returns has shape"),
        (lambda: ppo_value_loss(X, X, X, ONES, -1.0), "^clip_eps must be > 0"),
        (lambda: ppo_value_loss(X, X, X, torch.zeros(2, 3), 0.2), "^mask must select at least one entry"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()
