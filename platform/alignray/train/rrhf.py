"""RRHF: rank k candidates by their length-normalised log-probs against their rewards, plus SFT
on the best candidate. No reference model, no PPO."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from alignray.train.batch import Method, response_logps
from alignray.train.data import Example
from alignray.train.losses import rrhf_loss


class RRHFMethod(Method):
    kind = "rrhf"
    eval_metric = "loss"
    higher_is_better = False

    def loss(self, model: nn.Module, examples: list[Example]) -> tuple[Tensor, dict[str, float]]:
        logps, lengths = response_logps(model, [s for ex in examples for s in ex.seqs], self.pad_id, self.split)
        totals, ranks, sfts, start = [], [], [], 0
        for ex in examples:
            k = len(ex.seqs)
            rewards = torch.tensor(ex.values["rewards"], dtype=logps.dtype)
            total, rank, sft = rrhf_loss(
                logps[start : start + k], lengths[start : start + k], rewards,
                self.cfg.rrhf.length_penalty, self.cfg.rrhf.rank_weight, self.cfg.rrhf.sft_reduction,
            )
            totals.append(total)
            ranks.append(rank.item())
            sfts.append(sft.item())
            start += k
        return torch.stack(totals).mean(), {"rank_loss": sum(ranks) / len(ranks), "sft_loss": sum(sfts) / len(sfts)}
