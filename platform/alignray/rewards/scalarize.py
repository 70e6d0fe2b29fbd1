"""MORLAIF scalarization: one reward per sample from K per-principle rewards.

`scalarize` turns a (batch, K) tensor of per-principle rewards into a (batch,) tensor with one
of the methods in METHODS, `fit_principle_weights` fits per-principle weights on a small
labelled set of comparisons, and `fitted_weights` does so from texts with any scorer.

"The published code" below is MORLAIF's `PPO_training/MORL_scalarizer.py` (repository
marcus-jw/Multi-Objective-Reinforcement-Learning-from-AI-Feedback, as of its commit "added
bernoulli-nash", 2024-06-08); `scalarize`'s docstring says which choices of soft_min,
lower_quantile and median follow it. As there, each principle's reward is multiplied by its
weight before the method combines them. The published functions are written for one sample's
K rewards; here every method works row by row: row i's output depends only on row i.

One deliberate departure: the published Bernoulli–Nash multiplies raw reward logits, a product
whose sign flips with the number of negative factors. Here Bernoulli–Nash is the log of the
weighted product of win probabilities σ(r_k), which is finite, sign-safe and increasing in
every r_k (for positive weights).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _linear(rewards: Tensor, weights: Tensor) -> Tensor:
    return (rewards * weights).sum(-1)


def _min(rewards: Tensor, weights: Tensor) -> Tensor:
    return (rewards * weights).amin(-1)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _soft_min(rewards: Tensor, weights: Tensor, temperature: float = 1.0) -> Tensor:
    _check_temperature(temperature)
    x = rewards * weights
    return (torch.softmax(-x / temperature, dim=-1) * x).sum(-1)


def _logsumexp_min(rewards: Tensor, weights: Tensor, temperature: float = 1.0) -> Tensor:
    _check_temperature(temperature)
    return -temperature * torch.logsumexp(-(rewards * weights) / temperature, dim=-1)


def _uncertainty_weighted(rewards: Tensor, weights: Tensor, lam: float = 1.0) -> Tensor:
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    x = rewards * weights
    return x.mean(-1) - lam * x.var(-1, correction=0)


def _lower_quantile(rewards: Tensor, weights: Tensor, q: float = 1 / 3) -> Tensor:
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    # The 1e-9 keeps float noise from dropping a principle, e.g. 0.29 * 100 = 28.999999999999996.
    count = max(1, math.floor(q * rewards.shape[-1] + 1e-9))
    return (rewards * weights).sort(dim=-1).values[:, :count].mean(-1)


def _median(rewards: Tensor, weights: Tensor) -> Tensor:
    ordered = (rewards * weights).sort(dim=-1).values
    return ordered[:, (rewards.shape[-1] - 1) // 2]


def _bernoulli_nash(rewards: Tensor, weights: Tensor) -> Tensor:
    return (weights * F.logsigmoid(rewards)).sum(-1)


def _lexicographic(
    rewards: Tensor,
    weights: Tensor,
    priority: Sequence[int] | None = None,
    tolerance: float | Sequence[float] = 0.0,
    base: float = 1e3,
) -> Tensor:
    k = rewards.shape[-1]
    if priority is None:
        raise ValueError("priority is required for lexicographic: principle indices, highest priority first")
    priority = list(priority)
    if (
        not priority
        or len(set(priority)) != len(priority)
        or not all(isinstance(i, int) and 0 <= i < k for i in priority)
    ):
        raise ValueError(f"priority must be a non-empty list of distinct indices in [0, {k}), got {priority}")
    tolerances = [tolerance] * len(priority) if isinstance(tolerance, (int, float)) else list(tolerance)
    if len(tolerances) != len(priority) or not all(tol >= 0 for tol in tolerances):
        raise ValueError(
            f"tolerance must be a number >= 0 or a list of {len(priority)} of them (one per priority), "
            f"got {tolerance}"
        )
    if not base > 1:
        raise ValueError(f"base must be > 1, got {base}")
    if base ** len(priority) >= 2**53:
        raise ValueError(
            f"base ** len(priority) must be below 2**53 so float64 keeps every level exact, "
            f"got {base} ** {len(priority)}"
        )
    bound = (base - 1) / 2
    x = (rewards * weights).double()
    score = torch.zeros_like(x[:, 0])
    for index, tol in zip(priority, tolerances):
        level = torch.floor(x[:, index] / tol) if tol > 0 else x[:, index]
        score = score * base + level.clamp(-bound, bound)
    return score


METHODS = {
    "linear": _linear,
    "min": _min,
    "soft_min": _soft_min,
    "logsumexp_min": _logsumexp_min,
    "uncertainty_weighted": _uncertainty_weighted,
    "lower_quantile": _lower_quantile,
    "median": _median,
    "bernoulli_nash": _bernoulli_nash,
    "lexicographic": _lexicographic,
}


def scalarize(
    rewards: Tensor, method: str, weights: Tensor | Sequence[float] | None = None, **params: object
) -> Tensor:
    """One scalar reward per sample from rewards (batch, K); returns (batch,).

    weights (K,) default to ones. With x = rewards * weights, row by row:

    - linear: Σ_k x_k.
    - min: min_k x_k, the worst principle.
    - soft_min: MORLAIF's soft max-min, the softmin-weighted mean Σ_k p_k·x_k with
      p = softmax(-x / τ), τ = temperature > 0 (default 1.0, the published default). As in the
      published code (`soft_max_min`). It lies in [min, mean], equals x_k when all x_k are
      equal (x = [0, 0] gives 0), tends to min as τ → 0 and to the mean as τ → ∞.
    - logsumexp_min: the log-sum-exp smooth minimum -τ·logsumexp(-x / τ), τ = temperature > 0
      (default 1.0); not MORLAIF's (x = [0, 0] gives -log 2). It lies in [min - τ·log K, min]
      and tends to min as τ → 0.
    - uncertainty_weighted: mean_k x - λ·var_k x (population variance), λ = lam >= 0 (default 1.0).
    - lower_quantile: the mean of the floor(q·K) lowest x_k (at least one), q in (0, 1]
      (default 1/3). As in the published code (`lower_third`: the mean of the K // 3 lowest,
      4 of MORLAIF's 12 principles), except that it keeps at least one principle where the
      published slice would be empty (K < 3) and its mean NaN.
    - median: the lower median, the ((K + 1) // 2)-th smallest x_k: the middle value for odd K,
      the lower of the two middle values for even K (for MORLAIF's K = 12, the 6th smallest).
      As in the published code (`max_median`, torch.median, which returns the lower one); not
      the mean of the two middle values.
    - bernoulli_nash: Σ_k w_k·log σ(r_k), the log of Π_k σ(r_k)^w_k. Here the weights are
      exponents of the win probabilities σ(r_k), not multipliers of r.
    - lexicographic: params priority (distinct principle indices, highest priority first;
      principles not listed are ignored), tolerance (a number >= 0 or one per priority entry,
      default 0.0) and base B > 1 (default 1e3). For the j-th of the P prioritised principles,
      with tolerance t_j, its level is s_j = floor(x_j / t_j) when t_j > 0 (values in the same
      step of width t_j tie) and x_j itself when t_j = 0, clamped to ±(B - 1)/2. The score is
      Σ_j B^(P-1-j)·s_j, computed and returned in float64. Because a lower level can move the
      score by at most B - 1 times its place value, if two samples share the levels above j
      and one has s_j higher by at least 1 (for t_j > 0: x_j at least one tolerance step
      higher; for t_j = 0: at least 1 higher), it scores higher whatever its lower levels are.
      This assumes rewards are bounded so that |s_j| <= (B - 1)/2 (e.g. |x| <= 499.5 for
      t = 0 and the default B); levels beyond that saturate at the bound and tie. The floored
      levels carry no gradient.

    Unknown methods and unknown or missing params raise ValueError naming them.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
    if not isinstance(rewards, Tensor):
        raise ValueError(f"rewards must be a torch.Tensor, got {type(rewards).__name__}")
    if rewards.dim() != 2 or rewards.shape[1] == 0:
        raise ValueError(f"rewards must be 2-D (batch, K) with K >= 1, got shape {tuple(rewards.shape)}")
    if not rewards.dtype.is_floating_point:
        raise ValueError(f"rewards must be floating point, got dtype {rewards.dtype}")
    k = rewards.shape[1]
    weights = torch.ones(k) if weights is None else torch.as_tensor(weights)
    if weights.shape != (k,):
        raise ValueError(f"weights must have shape ({k},), one per principle, got {tuple(weights.shape)}")
    fn = METHODS[method]
    allowed = list(inspect.signature(fn).parameters)[2:]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"unknown params {unknown} for method {method!r}; it takes {allowed or 'none'}")
    return fn(rewards, weights.to(rewards), **params)


def fit_principle_weights(
    rewards: Tensor, labels: Tensor, l2: float = 1e-3, steps: int = 500, lr: float = 0.1
) -> Tensor:
    """Per-principle weights (K,) fitted by logistic regression on labelled comparisons.

    rewards (n, 2, K) hold the per-principle rewards of responses A and B; labels (n,) are 1
    when A was preferred and 0 otherwise. The model is P(A ≻ B) = σ(Σ_k w_k·(r_A,k - r_B,k)),
    with no bias. Minimises the mean binary cross-entropy plus l2·‖w‖² with full-batch L-BFGS
    (at most `steps` iterations, step size lr, strong Wolfe line search) from w = 0, in
    float64, so the result is deterministic. Returns detached weights in rewards' dtype.
    """
    if not isinstance(rewards, Tensor) or rewards.dim() != 3 or rewards.shape[1] != 2 or rewards.shape[2] == 0:
        shape = tuple(rewards.shape) if isinstance(rewards, Tensor) else type(rewards).__name__
        raise ValueError(f"rewards must be a (n, 2, K) tensor with K >= 1, got {shape}")
    if not rewards.dtype.is_floating_point:
        raise ValueError(f"rewards must be floating point, got dtype {rewards.dtype}")
    n, _, k = rewards.shape
    if not isinstance(labels, Tensor) or labels.shape != (n,):
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a ({n},) tensor, one per comparison, got {shape}")
    if ((labels != 0) & (labels != 1)).any():
        raise ValueError("labels must be 0 or 1 (1 when response A was preferred)")
    if not l2 >= 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an int >= 1, got {steps}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    diff = (rewards[:, 0] - rewards[:, 1]).detach().double()
    target = labels.double()
    w = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], lr=lr, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(diff @ w, target) + l2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return w.detach().to(rewards.dtype)


def fitted_weights(
    score: Callable[[Sequence[str], Sequence[str]], Tensor],
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    l2: float = 1e-3,
    seed: int = 0,
    batch: int = 64,
) -> list[float]:
    """Per-principle weights fitted on labelled texts: `chosen[i]` is preferred to
    `rejected[i]` as answers to `prompts[i]`. `score(prompts, responses)` returns the
    per-principle rewards (len, K); it is called on at most `batch` pairs at a time.

    The comparisons go to `fit_principle_weights` as (A, B) pairs with A the chosen side in a
    seeded half of them (label 1) and the rejected side in the other half (label 0). For this
    bias-free model the swap leaves the fit as it is (swapping a pair and flipping its label
    keeps its loss term: BCE(σ(-z), 0) = BCE(σ(z), 1)); it is done so that both classes are
    present, the well-posed problem `fit_principle_weights` describes, rather than a labelling
    of all ones that would go wrong the moment a bias or a class-weighted loss were added.
    """
    n = len(prompts)
    if n == 0 or len(chosen) != n or len(rejected) != n:
        raise ValueError(f"need as many prompts, chosen and rejected (>= 1), got {n}, {len(chosen)}, {len(rejected)}")
    if not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f"batch must be an int >= 1, got {batch}")

    def rewards(responses: Sequence[str]) -> Tensor:
        parts = [score(prompts[i : i + batch], responses[i : i + batch]) for i in range(0, n, batch)]
        return torch.cat([torch.as_tensor(p, dtype=torch.float64) for p in parts])

    good, bad = rewards(chosen), rewards(rejected)
    if good.dim() != 2 or good.shape[0] != n or good.shape[1] == 0 or bad.shape != good.shape:
        raise ValueError(
            f"score must return (len, K) rewards with K >= 1, got {tuple(good.shape)} for the chosen and"
            f" {tuple(bad.shape)} for the rejected of {n} pairs"
        )
    pairs = torch.stack([good, bad], dim=1)  # (n, 2, K), A = chosen
    if not torch.isfinite(pairs).all():
        raise ValueError("score returned a non-finite reward")
    labels = torch.ones(n, dtype=torch.long)
    swapped = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: n // 2]
    labels[swapped] = 0
    pairs[swapped] = pairs[swapped].flip(1)
    return fit_principle_weights(pairs, labels, l2=l2).tolist()
