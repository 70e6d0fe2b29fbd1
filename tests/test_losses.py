"""Preference losses against hand-computed values, their identities, gradients and input checks."""

import math

import pytest
import torch
from alignray.train.losses import (
    bradley_terry_loss,
    dpo_loss,
    rdpo_loss,
    rrhf_loss,
    sequence_logps,
    soft_bradley_terry_loss,
)

# TRL 1.16 computes its DPO sigmoid loss only inside DPOTrainer._compute_loss (no pure function),
# so there is no comparison against TRL here.


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def nls(x):
    """-logsigmoid(x), by hand."""
    return math.log(1 + math.exp(-x))


def close(actual, expected):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=torch.float64))


# pc, pr, rc, rr with beta = 0.5: h = 0.5 * ((-1 + 1.5) - (-3 + 2.5)) = 0.5 and 0.5 * (0 - 0.5) = -0.25
DPO_ARGS = (t(-1.0, -2.0), t(-3.0, -1.0), t(-1.5, -2.0), t(-2.5, -1.5))
H = (0.5, -0.25)


@pytest.mark.parametrize(
    "margin, diffs",
    [(None, (1.0, -1.0, 0.0)), (0.5, (0.5, -1.5, -0.5)), (t(1.0, 0.0, -1.0), (0.0, -1.0, 1.0))],
)
def test_bradley_terry_by_hand(margin, diffs):
    loss = bradley_terry_loss(t(1.0, 0.0, 2.0), t(0.0, 1.0, 2.0), margin)
    close(loss, [nls(d) for d in diffs])


def test_soft_bradley_terry_by_hand_and_at_p_one_is_bradley_terry():
    chosen, rejected, p = t(1.0, 0.0, 2.0), t(0.0, 1.0, 2.0), (0.9, 0.2, 0.5)
    expected = [pi * nls(d) + (1 - pi) * nls(-d) for pi, d in zip(p, (1.0, -1.0, 0.0))]
    close(soft_bradley_terry_loss(chosen, rejected, t(*p)), expected)
    close(soft_bradley_terry_loss(chosen, rejected, t(1.0, 1.0, 1.0)), bradley_terry_loss(chosen, rejected))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_dpo_by_hand(eps):
    expected = [(1 - eps) * nls(h) + eps * nls(-h) for h in H]
    close(dpo_loss(*DPO_ARGS, beta=0.5, label_smoothing=eps), expected)


def test_rdpo_by_hand():
    p = (0.8, 0.3)
    expected = [pi * nls(h) + (1 - pi) * nls(-h) for pi, h in zip(p, H)]
    close(rdpo_loss(*DPO_ARGS, beta=0.5, preference_prob=t(*p)), expected)


@pytest.mark.parametrize("p", [1.0, 0.75, 0.5])
def test_rdpo_with_constant_p_is_dpo_with_label_smoothing_1_minus_p(p):
    rdpo = rdpo_loss(*DPO_ARGS, beta=0.5, preference_prob=t(p, p))
    close(rdpo, dpo_loss(*DPO_ARGS, beta=0.5, label_smoothing=1 - p))
    if p == 1.0:
        close(rdpo, dpo_loss(*DPO_ARGS, beta=0.5))


# k = 3: logps (-2, -6, -4), lengths (4, 9, 2), rewards (0.5, 2, 1). Pairs with r_i < r_j:
# (0, 1), (0, 2), (2, 1). Best candidate is 1, so sft = 6 (summed NLL, the default).
@pytest.mark.parametrize(
    "length_penalty, rank",
    [
        # s = (-1/2, -2/3, -2): s0 - s1 = 1/6, s0 - s2 = 3/2, s2 - s1 < 0
        (1.0, 1 / 6 + 3 / 2),
        # s = (-1, -2, -4/sqrt 2): s0 - s1 = 1, s0 - s2 = 4/sqrt 2 - 1, s2 - s1 < 0
        (0.5, 1 + (4 / math.sqrt(2) - 1)),
    ],
)
def test_rrhf_by_hand(length_penalty, rank):
    logps, lengths, rewards = t(-2.0, -6.0, -4.0), t(4.0, 9.0, 2.0), t(0.5, 2.0, 1.0)
    total, rank_term, sft = rrhf_loss(logps, lengths, rewards, length_penalty, rank_weight=2.0)
    assert total.dim() == rank_term.dim() == sft.dim() == 0
    close(rank_term, rank)
    close(sft, 6.0)
    close(total, 2 * rank + 6.0)


def test_rrhf_sft_is_the_summed_nll_by_default_or_the_mean_per_token():
    # The best candidate (reward 2) has 9 tokens and summed log-prob -6: the paper's L_ft is 6,
    # the per-token mean 6 / 9. The rank term does not depend on the choice.
    logps, lengths, rewards = t(-2.0, -6.0, -4.0), t(4.0, 9.0, 2.0), t(0.5, 2.0, 1.0)
    total, rank, sft = rrhf_loss(logps, lengths, rewards)
    close(sft, 6.0)
    close(total, rank + 6.0)
    mean_total, mean_rank, mean_sft = rrhf_loss(logps, lengths, rewards, sft_reduction="mean")
    close(mean_sft, 6 / 9)
    close(mean_rank, rank)
    close(mean_total, rank + 6 / 9)


def test_rrhf_tied_best_reward_takes_first_and_ties_are_not_ranked():
    lengths = torch.tensor([4, 9, 2])  # integer lengths are fine
    _, rank, sft = rrhf_loss(t(-2.0, -6.0, -4.0), lengths, t(1.0, 3.0, 3.0))
    close(sft, 6.0)
    close(rank, (-2 / 4 + 6 / 9) + (-2 / 4 + 4 / 2))  # (0, 1) and (0, 2) only


@pytest.mark.parametrize("ignore_index", [-100, 0])
def test_sequence_logps_matches_a_manual_loop(ignore_index):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=gen, dtype=torch.float64)
    labels = torch.randint(1, 7, (2, 5), generator=gen)
    labels[0, :2] = ignore_index  # a masked prompt
    labels[1, 3] = ignore_index  # and a masked token mid-sequence
    logps, counts = sequence_logps(logits, labels, ignore_index)
    for b in range(2):
        total, n = 0.0, 0
        for pos in range(1, 5):
            if labels[b, pos] != ignore_index:
                total += float(logits[b, pos - 1, labels[b, pos]] - torch.logsumexp(logits[b, pos - 1], 0))
                n += 1
        assert logps[b].item() == pytest.approx(total, rel=1e-5) and counts[b].item() == n
    assert logps.dtype == torch.float32
    assert sequence_logps(logits.bfloat16(), labels, ignore_index)[0].dtype == torch.float32


@pytest.mark.parametrize(
    "make_loss",
    [
        lambda x: bradley_terry_loss(x[0], x[1], margin=x[2]),
        lambda x: dpo_loss(*x[:4], beta=0.1, label_smoothing=0.2),
        lambda x: rdpo_loss(*x[:4], beta=0.1, preference_prob=torch.tensor([0.9, 0.6, 0.2])),
        lambda x: rrhf_loss(x[0], torch.tensor([2, 3, 4]), torch.tensor([0.0, 1.0, 2.0]))[0],
        lambda x: sequence_logps(torch.stack(x[:2], -1)[None], torch.ones(1, 3, dtype=torch.long))[0],
    ],
    ids=["bradley_terry", "dpo", "rdpo", "rrhf", "sequence_logps"],
)
def test_gradients_flow_and_inputs_are_untouched(make_loss):
    leaves = [torch.tensor([-1.0, -2.0, -3.0]) * (i + 1) for i in range(4)]
    leaves = [x.requires_grad_() for x in leaves]
    before = [x.detach().clone() for x in leaves]
    make_loss(leaves).sum().backward()
    used = [x for x in leaves if x.grad is not None]
    assert used and all(x.grad.abs().sum() > 0 for x in used)
    assert all(torch.equal(x.detach(), b) for x, b in zip(leaves, before))


TWO, THREE = t(1.0, 2.0), t(1.0, 2.0, 3.0)
IDS = torch.zeros(2, 3, dtype=torch.long)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: bradley_terry_loss(THREE, TWO), "^rejected_rewards has shape .* must match"),
        (lambda: bradley_terry_loss(THREE.reshape(1, 3), THREE), "^chosen_rewards must be 1-D"),
        (lambda: bradley_terry_loss(THREE, THREE, margin=TWO), "^margin has shape"),
        (lambda: soft_bradley_terry_loss(TWO, TWO, THREE), "^preference_prob has shape"),
        (lambda: soft_bradley_terry_loss(TWO, TWO, t(0.5, 1.5)), r"^preference_prob must be in \[0, 1\]"),
        (lambda: dpo_loss(TWO, TWO, TWO, THREE, beta=0.1), "^ref_rejected_logps has shape"),
        (lambda: dpo_loss(TWO, TWO, TWO, TWO, beta=0.0), "^beta must be > 0"),
        (lambda: dpo_loss(TWO, TWO, TWO, TWO, 0.1, 0.6), r"^label_smoothing must be in \[0, 0.5\]"),
        (lambda: dpo_loss(TWO, TWO, TWO, TWO, 0.1, -0.1), r"^label_smoothing must be in \[0, 0.5\]"),
        (lambda: rdpo_loss(TWO, TWO, TWO, TWO, 0.1, t(0.5, 1.2)), r"^preference_prob must be in \[0, 1\]"),
        (lambda: rdpo_loss(TWO, TWO, TWO, TWO, 0.1, t(-0.1, 0.5)), r"^preference_prob must be in \[0, 1\]"),
        (lambda: rdpo_loss(TWO, TWO, TWO, TWO, 0.1, t(math.nan, 0.5)), "^preference_prob contains NaN"),
        (lambda: rdpo_loss(TWO, TWO, TWO, TWO, 0.1, THREE), "^preference_prob has shape"),
        (lambda: rrhf_loss(t(-1.0), t(1.0), t(1.0)), "^logps must hold k >= 2"),
        (lambda: rrhf_loss(TWO, t(3.0, 0.0), TWO), "^lengths must all be > 0"),
        (lambda: rrhf_loss(TWO, THREE, TWO), "^lengths has shape"),
        (lambda: rrhf_loss(TWO, TWO, t(0.5, 0.5)), "^rewards are all equal, so there is nothing to rank"),
        (lambda: rrhf_loss(TWO, TWO, TWO, sft_reduction="token_mean"),
         r"^sft_reduction must be one of \('sum', 'mean'\), got 'token_mean'"),
        (lambda: sequence_logps(torch.zeros(2, 3), IDS), "^logits must be 3-D"),
        (lambda: sequence_logps(torch.zeros(2, 3, 4), IDS[:, :2]), "^labels must have shape"),
        (lambda: sequence_logps(torch.zeros(2, 3, 4), torch.zeros(2, 3)), "^labels must be integer"),
        (lambda: sequence_logps(torch.zeros(1, 2, 4), torch.tensor([[0, 4]])), r"^labels must be token ids"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()
