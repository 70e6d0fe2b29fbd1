"""MORLAIF scalarizers against hand-computed values, their properties, weight fitting and checks."""

import hashlib
import math
import random
import statistics

import pytest
import torch
from alignray.config import SCALARIZERS
from alignray.rewards.scalarize import METHODS, fit_principle_weights, fitted_weights, scalarize


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def close(actual, expected):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=torch.float64))


def logsig(x):
    return -math.log(1 + math.exp(-x))


def soft_min(xs, tau):
    weights = [math.exp(-x / tau) for x in xs]
    return sum(w * x for w, x in zip(weights, xs)) / sum(weights)


def logsumexp_min(xs, tau):
    return -tau * math.log(sum(math.exp(-x / tau) for x in xs))


def uncertainty(xs, lam):
    return statistics.mean(xs) - lam * statistics.pvariance(xs)


R = t([1.0, -2.0, 0.5], [0.3, 0.2, -0.1])
W = (2.0, 1.0, 0.5)
# Weighted rewards r·w per row:
X0, X1 = (2.0, -2.0, 0.25), (0.6, 0.2, -0.05)
# Params that every method accepts, for the property tests.
PARAMS = {"lexicographic": {"priority": [2, 0]}}


@pytest.mark.parametrize(
    "method, params, expected",
    [
        ("linear", {}, [sum(X0), sum(X1)]),
        ("min", {}, [-2.0, -0.05]),
        ("soft_min", {}, [soft_min(X0, 1.0), soft_min(X1, 1.0)]),
        ("soft_min", {"temperature": 0.5}, [soft_min(X0, 0.5), soft_min(X1, 0.5)]),
        ("logsumexp_min", {}, [logsumexp_min(X0, 1.0), logsumexp_min(X1, 1.0)]),
        ("logsumexp_min", {"temperature": 0.5}, [logsumexp_min(X0, 0.5), logsumexp_min(X1, 0.5)]),
        ("uncertainty_weighted", {}, [uncertainty(X0, 1.0), uncertainty(X1, 1.0)]),
        ("uncertainty_weighted", {"lam": 0.5}, [uncertainty(X0, 0.5), uncertainty(X1, 0.5)]),
        ("lower_quantile", {}, [-2.0, -0.05]),  # floor(3 / 3) = 1: the minimum
        ("lower_quantile", {"q": 0.5}, [-2.0, -0.05]),  # floor(1.5) = 1
        ("lower_quantile", {"q": 0.7}, [(-2.0 + 0.25) / 2, (-0.05 + 0.2) / 2]),  # floor(2.1) = 2
        ("lower_quantile", {"q": 1.0}, [sum(X0) / 3, sum(X1) / 3]),
        ("median", {}, [0.25, 0.2]),
        (
            "bernoulli_nash",
            {},
            [
                2 * logsig(1.0) + 1 * logsig(-2.0) + 0.5 * logsig(0.5),
                2 * logsig(0.3) + 1 * logsig(0.2) + 0.5 * logsig(-0.1),
            ],
        ),
        # Levels: x_2 in steps of 0.1 (0.25 -> 2, -0.05 -> -1), then x_0 as is; base 1000.
        ("lexicographic", {"priority": [2, 0], "tolerance": [0.1, 0.0]}, [2 * 1000 + 2.0, -1 * 1000 + 0.6]),
        # One tolerance for both levels and base 10: x_0 in steps of 1 (2 -> 2, 0.6 -> 0),
        # x_1 (-2 -> -2, 0.2 -> 0).
        ("lexicographic", {"priority": [0, 1], "tolerance": 1.0, "base": 10.0}, [2 * 10 - 2.0, 0.0]),
    ],
)
def test_scalarizers_by_hand(method, params, expected):
    close(scalarize(R, method, torch.tensor(W), **params), expected)


def test_median_of_an_even_count_is_the_lower_middle_value_as_torch_median():
    rewards = t([1.0, 4.0, 2.0, 3.0], [0.0, -1.0, 5.0, -1.0])
    close(scalarize(rewards, "median"), [2.0, -1.0])
    close(scalarize(rewards, "median"), [torch.median(row) for row in rewards])


def test_lower_quantile_default_is_morlaifs_lower_third():
    # K = 12: the mean of the 4 lowest; K = 11 and 13: 11 // 3 = 3 and 13 // 3 = 4.
    rewards = t([float(v) for v in (7, 0, 11, 3, 9, 1, 5, 2, 10, 6, 8, 4)])
    close(scalarize(rewards, "lower_quantile"), [(0 + 1 + 2 + 3) / 4])
    close(scalarize(rewards[:, :11], "lower_quantile"), [(0 + 1 + 2) / 3])  # without the 4
    close(scalarize(torch.cat([rewards, t([-1.0])], 1), "lower_quantile"), [(-1 + 0 + 1 + 2) / 4])
    close(scalarize(t([2.0, 1.0]), "lower_quantile"), [1.0])  # K < 3: still the minimum, not NaN


def test_soft_min_is_morlaifs_softmin_weighted_mean():
    # The log-sum-exp form gives -log 2 here; the softmin-weighted mean of equal values is that value.
    close(scalarize(t([0.0, 0.0], [3.0, 3.0]), "soft_min"), [0.0, 3.0])
    close(scalarize(t([0.0, 0.0]), "logsumexp_min"), [-math.log(2)])
    # Softmin weights e^0, e^-1 over 1 + e^-1 on (0, 1).
    close(scalarize(t([0.0, 1.0]), "soft_min"), [math.exp(-1) / (1 + math.exp(-1))])


def test_the_configs_scalarizer_names_are_the_methods():
    assert SCALARIZERS == tuple(METHODS)


@pytest.mark.parametrize("method", list(METHODS))
def test_each_row_depends_only_on_itself(method):
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    weights = torch.rand(4, generator=gen, dtype=torch.float64) + 0.5
    before = scalarize(rewards, method, weights, **PARAMS.get(method, {}))
    rewards[1] = t(-50.0, 30.0, 8.0, -7.0)
    after = scalarize(rewards, method, weights, **PARAMS.get(method, {}))
    assert torch.equal(before[[0, 2]], after[[0, 2]])
    assert before.shape == (3,)


@pytest.mark.parametrize("method", list(METHODS))
def test_gradients_flow(method):
    rewards = t([1.0, -2.0, 0.5], [0.3, 0.2, -0.1]).requires_grad_()
    scalarize(rewards, method, **PARAMS.get(method, {})).sum().backward()
    assert rewards.grad.abs().sum() > 0


def test_linear_with_one_principle_is_that_principle():
    rewards = t([0.7], [-1.3], [0.0])
    close(scalarize(rewards, "linear"), [0.7, -1.3, 0.0])
    close(scalarize(rewards, "linear", [1.0]), [0.7, -1.3, 0.0])


def test_soft_min_lies_between_min_and_mean_and_tends_to_each():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    hard, mean = scalarize(rewards, "min"), rewards.mean(-1)
    for tau in (100.0, 2.0, 1.0, 0.1, 0.01):
        soft = scalarize(rewards, "soft_min", temperature=tau)
        assert (soft >= hard).all() and (soft <= mean).all()
    torch.testing.assert_close(scalarize(rewards, "soft_min", temperature=1e-4), hard, atol=1e-3, rtol=0)
    torch.testing.assert_close(scalarize(rewards, "soft_min", temperature=1e4), mean, atol=1e-3, rtol=0)


def test_logsumexp_min_is_below_min_and_tends_to_it():
    gen = torch.Generator().manual_seed(0)
    rewards = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    hard = scalarize(rewards, "min")
    for tau in (2.0, 1.0, 0.1, 0.01):
        soft = scalarize(rewards, "logsumexp_min", temperature=tau)
        assert (soft <= hard).all() and (soft >= hard - tau * math.log(4)).all()
    torch.testing.assert_close(scalarize(rewards, "logsumexp_min", temperature=1e-4), hard, atol=1e-3, rtol=0)


def test_bernoulli_nash_is_finite_and_order_preserving_on_negative_rewards():
    # Each row is worse than the one above on every principle. A raw product of two negative
    # rewards would rank them backwards ((-1)·(-1) = 1 < (-2)·(-2) = 4).
    rewards = t([-1.0, -1.0], [-2.0, -2.0], [-2.0, -30.0], [-800.0, -900.0])
    scores = scalarize(rewards, "bernoulli_nash")
    assert torch.isfinite(scores).all()
    assert (scores[:-1] > scores[1:]).all()


def test_lexicographic_orders_like_tuples_of_levels():
    # priority [2, 0]: x_2 in steps of 1, then x_0 as is; x_1 is not prioritised. Rewards in
    # [-100, 100] keep every level within ±(1000 - 1)/2, so the order must be exactly that of
    # the Python tuples (floor(x_2), x_0).
    gen = torch.Generator().manual_seed(0)
    rewards = (torch.rand(400, 3, generator=gen, dtype=torch.float64) - 0.5) * 200
    rewards[200:, 2] = rewards[:200, 2]  # also pairs that tie on the first level
    scores = scalarize(rewards, "lexicographic", priority=[2, 0], tolerance=[1.0, 0.0]).tolist()
    keys = [(math.floor(r[2]), r[0]) for r in rewards.tolist()]
    for i in range(200):
        for j in (i + 1, i + 200):
            assert (scores[i] > scores[j]) == (keys[i] > keys[j])
    rewards[:, 1] = 1e6
    assert scalarize(rewards, "lexicographic", priority=[2, 0], tolerance=[1.0, 0.0]).tolist() == scores


def test_lexicographic_levels_beyond_the_bound_saturate_but_still_dominate_below():
    # Level 1 is far outside ±(1000 - 1)/2 in both rows and is clamped; level 0 still decides.
    rewards = t([1.0, -1e6], [0.0, 1e6])
    scores = scalarize(rewards, "lexicographic", priority=[0, 1])
    close(scores, [1000 - 499.5, 499.5])
    assert scores[0] > scores[1]


def test_fit_principle_weights_recovers_the_generating_weights():
    gen = torch.Generator().manual_seed(0)
    true_w = t(2.0, -1.0, 0.5)
    rewards = torch.randn(4000, 2, 3, generator=gen, dtype=torch.float64)
    p_a = torch.sigmoid((rewards[:, 0] - rewards[:, 1]) @ true_w)
    labels = (torch.rand(4000, generator=gen, dtype=torch.float64) < p_a).long()
    w = fit_principle_weights(rewards, labels)
    assert w.shape == (3,) and not w.requires_grad and w.dtype == torch.float64
    assert torch.equal(torch.sign(w), torch.sign(true_w))
    torch.testing.assert_close(w / w[0], true_w / true_w[0], atol=0.1, rtol=0)
    assert torch.equal(w, fit_principle_weights(rewards, labels))  # deterministic


def politeness_and_noise(prompts, responses):
    """A plain scoring function of the texts: principle 0 counts "please", principle 1 is a
    hash of the response in [-1, 1] (noise that has nothing to do with the labels)."""
    assert len(prompts) == len(responses)
    noise = [int.from_bytes(hashlib.sha256(r.encode()).digest()[:4]) / 2**31 - 1 for r in responses]
    return torch.tensor([[r.count("please"), x] for r, x in zip(responses, noise)])


def polite_pairs(n=1000, agree=0.85):
    """Pairs whose chosen side is the politer one in `agree` of them (the labels are noisy)."""
    rng = random.Random(0)
    prompts, chosen, rejected = [], [], []
    for i in range(n):
        low, high = sorted(rng.sample(range(5), 2))
        better, worse = (high, low) if rng.random() < agree else (low, high)
        prompts.append(f"Human: question {i}\n\nAssistant:")
        chosen.append("please " * better + f"answer {i} a")
        rejected.append("please " * worse + f"answer {i} b")
    return prompts, chosen, rejected


def test_fitted_weights_follow_the_principle_that_tracks_the_labels():
    w = fitted_weights(politeness_and_noise, *polite_pairs())
    assert isinstance(w, list) and len(w) == 2 and all(isinstance(x, float) for x in w)
    assert w[0] > 0.5 and abs(w[1]) < 0.25 * w[0]  # the noise principle: within its standard error (~0.09) of 0
    assert fitted_weights(politeness_and_noise, *polite_pairs()) == w  # deterministic
    assert fitted_weights(politeness_and_noise, *polite_pairs(agree=0.15))[0] < -0.5  # labels flipped, sign flips


def test_fitted_weights_do_not_depend_on_which_side_is_swapped_or_on_the_batch():
    pairs = polite_pairs()
    w = torch.tensor(fitted_weights(politeness_and_noise, *pairs, seed=0), dtype=torch.float64)
    # balanced labels vs. a different balanced swap vs. no swap at all (every label 1)
    prompts, chosen, rejected = pairs
    unswapped = torch.stack([politeness_and_noise(prompts, chosen), politeness_and_noise(prompts, rejected)], 1).double()
    for other in (torch.tensor(fitted_weights(politeness_and_noise, *pairs, seed=1), dtype=torch.float64),
                  fit_principle_weights(unswapped, torch.ones(len(prompts), dtype=torch.long))):
        assert torch.equal(torch.sign(other), torch.sign(w))
        torch.testing.assert_close(other, w, atol=1e-6, rtol=1e-6)
    sizes = []

    def counting(p, r):
        sizes.append(len(r))
        return politeness_and_noise(p, r)

    torch.testing.assert_close(torch.tensor(fitted_weights(counting, *pairs, batch=7), dtype=torch.float64), w, atol=1e-9, rtol=0)
    assert max(sizes) == 7 and sum(sizes) == 2 * len(prompts)


R3 = torch.zeros(2, 3)
PAIRS, LABELS = torch.zeros(4, 2, 3), torch.tensor([1, 0, 1, 0])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: scalarize(R3, "max"), r"^method must be one of \('linear', .*\), got 'max'"),
        (lambda: scalarize(R3, "linear", temperature=1.0), r"^unknown params \['temperature'\] for method 'linear'"),
        (lambda: scalarize(R3, "soft_min", tau=1.0), r"^unknown params \['tau'\] for method 'soft_min'"),
        (lambda: scalarize(R3, "soft_min", temperature=0.0), "^temperature must be > 0, got 0.0"),
        (lambda: scalarize(R3, "logsumexp_min", temperature=-1.0), "^temperature must be > 0, got -1.0"),
        (lambda: scalarize(R3, "uncertainty_weighted", lam=-1.0), "^lam must be >= 0"),
        (lambda: scalarize(R3, "lower_quantile", q=0.0), r"^q must be in \(0, 1\]"),
        (lambda: scalarize(R3, "lower_quantile", q=1.5), r"^q must be in \(0, 1\]"),
        (lambda: scalarize(R3, "lexicographic"), "^priority is required for lexicographic"),
        (lambda: scalarize(R3, "lexicographic", priority=[3]), r"^priority must be .* in \[0, 3\)"),
        (lambda: scalarize(R3, "lexicographic", priority=[1, 1]), "^priority must be .* distinct"),
        (lambda: scalarize(R3, "lexicographic", priority=[]), "^priority must be a non-empty"),
        (lambda: scalarize(R3, "lexicographic", priority=[0], tolerance=-0.1), "^tolerance must be"),
        (lambda: scalarize(R3, "lexicographic", priority=[0, 1], tolerance=[0.1]), "^tolerance must be"),
        (lambda: scalarize(R3, "lexicographic", priority=[0], base=1.0), "^base must be > 1"),
        (lambda: scalarize(R3, "lexicographic", priority=[0, 1, 2], base=1e6), r"^base \*\* len\(priority\)"),
        (lambda: scalarize(R3, "linear", [1.0, 2.0]), r"^weights must have shape \(3,\)"),
        (lambda: scalarize(R3[0], "linear"), "^rewards must be 2-D"),
        (lambda: scalarize(R3.long(), "linear"), "^rewards must be floating point"),
        (lambda: fit_principle_weights(R3, LABELS), r"^rewards must be a \(n, 2, K\) tensor"),
        (lambda: fit_principle_weights(PAIRS.long(), LABELS), "^rewards must be floating point"),
        (lambda: fit_principle_weights(PAIRS, LABELS[:3]), r"^labels must be a \(4,\) tensor"),
        (lambda: fit_principle_weights(PAIRS, torch.tensor([1, 0, 2, 0])), "^labels must be 0 or 1"),
        (lambda: fit_principle_weights(PAIRS, LABELS, l2=-1.0), "^l2 must be >= 0"),
        (lambda: fit_principle_weights(PAIRS, LABELS, steps=0), "^steps must be an int >= 1"),
        (lambda: fit_principle_weights(PAIRS, LABELS, lr=0.0), "^lr must be > 0"),
        (lambda: fitted_weights(politeness_and_noise, ["p"], ["c"], []), "^need as many prompts, chosen and rejected"),
        (lambda: fitted_weights(politeness_and_noise, [], [], []), "^need as many prompts, chosen and rejected"),
        (lambda: fitted_weights(lambda p, r: torch.zeros(len(r)), ["p"], ["c"], ["r"]), r"^score must return \(len, K\)"),
        (lambda: fitted_weights(lambda p, r: torch.full((len(r), 2), math.nan), ["p"], ["c"], ["r"]), "^score returned a non-finite"),
        (lambda: fitted_weights(politeness_and_noise, ["p"], ["c"], ["r"], batch=0), "^batch must be an int >= 1"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()
