"""PPO building blocks: the KL controller, the running reward normaliser, the rollouts' diversity
watch, and turning rollouts into tensors and per-token log-probs and values. Each holds its
state in a plain dict so a checkpoint can carry it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alignray.config import RewardConfig
from alignray.models import lora
from alignray.rewards.diversity import Diversity, collapse, diversity
from alignray.rewards.scorers import scalar_reward


@dataclass
class KLController:
    """Fixed when `target` is None; else the adaptive rule of Ziegler et al. (2019):
    coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * samples / horizon."""

    coef: float
    target: float | None = None
    horizon: int = 10000

    def update(self, kl: float, samples: int) -> None:
        if self.target is not None:
            error = min(0.2, max(-0.2, kl / self.target - 1.0))
            self.coef *= 1.0 + error * samples / self.horizon

    def state(self) -> dict:
        return asdict(self)


@dataclass
class RunningMoments:
    """Mean and variance of every value seen so far (Chan et al.'s parallel update)."""

    count: float = 0.0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, count: float, total: float, total_sq: float) -> None:
        """Merge a batch given as (n, sum x, sum x^2)."""
        if count == 0:
            return
        b_mean = total / count
        b_m2 = max(0.0, total_sq - count * b_mean * b_mean)
        n = self.count + count
        delta = b_mean - self.mean
        self.mean += delta * count / n
        self.m2 += b_m2 + delta * delta * self.count * count / n
        self.count = n

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 1 else 1.0

    def state(self) -> dict:
        return asdict(self)


@dataclass
class DiversityWatch:
    """The rollouts' diversity figures (:mod:`alignray.rewards.diversity`) per iteration against
    the first iteration's, the starting policy's rollouts: `observe` returns the figures as
    metrics `diversity_<figure>` and, the first time `collapse` finds any, its reasons (later: no
    reasons, so the run warns once). The state (the start's figures, whether it warned) goes in
    the checkpoint: a resumed run keeps its start and does not warn again."""

    start: dict | None = None
    warned: bool = False

    def observe(self, answers: list[str]) -> tuple[dict[str, float], list[str]]:
        figures = diversity(answers)
        if self.start is None:
            self.start = asdict(figures)
        reasons = [] if self.warned else collapse(figures, Diversity(**self.start))
        self.warned = self.warned or bool(reasons)
        return {f"diversity_{k}": v for k, v in figures.figures().items()}, reasons

    def state(self) -> dict:
        return asdict(self)


@dataclass
class Packed:
    """Prompts left-padded to one width P, responses right-padded after them to width R, so
    response token j of every row sits at column P + j."""

    input_ids: Tensor  # [B, P + R]
    attention_mask: Tensor  # [B, P + R]
    position_ids: Tensor  # [B, P + R]: positions count real tokens only
    response_mask: Tensor  # [B, R] float, 1 on response tokens
    prompt_width: int

    def rows(self, idx: Tensor) -> Packed:
        return Packed(
            self.input_ids[idx], self.attention_mask[idx], self.position_ids[idx], self.response_mask[idx], self.prompt_width
        )


def pack(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> Packed:
    p_width, r_width = max(map(len, prompts)), max(map(len, responses))
    ids = torch.full((len(prompts), p_width + r_width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    mask = torch.zeros((len(prompts), r_width))
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        ids[i, p_width - len(p) : p_width] = torch.tensor(p)
        ids[i, p_width : p_width + len(r)] = torch.tensor(r)
        attention[i, p_width - len(p) : p_width + len(r)] = 1
        mask[i, : len(r)] = 1.0
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    return Packed(ids, attention, positions, mask, p_width)


def _inputs(batch: Packed) -> dict[str, Tensor]:
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "position_ids": batch.position_ids}


def token_logps(model: nn.Module, batch: Packed, temperature: float, *, raw: bool = True,
                entropy: bool = True) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Per response token: (log-prob at `temperature`, raw log-prob at 1, entropy at
    `temperature`), each [B, R]; the last two are None unless asked for (each is another pass over
    the vocabulary). Logits at column P-1+j predict response token j."""
    r_width = batch.response_mask.shape[1]
    logits = model(**_inputs(batch), logits_to_keep=r_width + 1).logits[:, :-1].float()
    targets = batch.input_ids[:, batch.prompt_width :].unsqueeze(-1)
    tempered = F.log_softmax(logits if temperature == 1.0 else logits / temperature, -1)
    picked = tempered.gather(-1, targets).squeeze(-1)
    at_one = None
    if raw:
        at_one = picked if temperature == 1.0 else F.log_softmax(logits, -1).gather(-1, targets).squeeze(-1)
    spread = -(tempered.exp() * tempered).sum(-1) if entropy else None
    return picked, at_one, spread


def token_values(critic: nn.Module, batch: Packed) -> Tensor:
    """The value model's estimate at each response token's state (before emitting it), [B, R]."""
    critic = lora.unwrap(critic)  # adapters stay in place
    hidden = critic.base_model(**_inputs(batch)).last_hidden_state[:, batch.prompt_width - 1 : -1]
    return critic.score(hidden).float()[..., 0]


def one_head_reward_model(path: str) -> bool:
    """Whether the folder holds a preference model with a single head (one scalar reward)."""
    from transformers import AutoConfig

    source = AutoConfig.from_pretrained(path)
    return any(a.endswith("ForSequenceClassification") for a in source.architectures or []) and source.num_labels == 1


def critic_head_scale(reward: RewardConfig, one_head: bool) -> float:
    """How the value head starts, as a multiple of the critic's source head (0: a head of zeros).

    The critic must predict returns of the reward PPO trains on. When that reward is the single
    head's score r times a constant w (one one-head model, a scalarizer that is linear through 0
    for one principle, no clip, no normalising), the head starts at w times the reward head: its
    values start at the trained reward. Anything else (several models or heads, a clip, a
    nonlinear scalarizer, `normalize`, whose returns are centred near 0) starts from zeros rather
    than from a head whose scale and offset the returns do not share."""
    if not one_head or reward.clip is not None or reward.normalize:
        return 0.0
    probe = torch.tensor([[-3.0], [-0.5], [0.0], [1.0], [2.5]])
    out = scalar_reward(probe, reward).double()
    w = float(out[3])
    return w if torch.allclose(out, w * probe[:, 0].double(), atol=1e-9) else 0.0


def critic_model(path: str, pad_id: int, head_scale: float) -> nn.Module:
    """The value model, in float32 (DeepSpeed casts it to the training dtype): the backbone of
    `path` with one value head, `head_scale` times the path's one reward head (see
    `critic_head_scale`); a head of zeros when it is 0 or the path has no such head (a policy,
    a multi-head MORLAIF model), so values start at 0 rather than at random."""
    from transformers import AutoModelForSequenceClassification

    keep = head_scale != 0.0 and one_head_reward_model(path)
    critic = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, ignore_mismatched_sizes=True, dtype=torch.float32
    )
    critic.config.pad_token_id = pad_id
    with torch.no_grad():
        for p in critic.score.parameters():
            if keep:
                p.mul_(head_scale)
            else:
                p.zero_()
    return critic
