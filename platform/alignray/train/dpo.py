"""DPO and rDPO. Reference log-probs come from the initial policy, computed once before the
first step, so no reference model stays resident while training."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from alignray.train.batch import Method, response_logps
from alignray.train.data import Example
from alignray.train.losses import dpo_loss, rdpo_loss

REF_BATCH = 8


class DPOMethod(Method):
    kind = "dpo"
    eval_metric = "loss"
    higher_is_better = False

    def prepare(self, model: nn.Module, examples: list[Example], rank: int, world: int) -> None:
        mine = list(range(rank, len(examples), world))
        refs = {}
        with torch.no_grad():
            for start in range(0, len(mine), REF_BATCH):
                idx = mine[start : start + REF_BATCH]
                seqs = [s for i in idx for s in examples[i].seqs]
                logps, _ = response_logps(model, seqs, self.pad_id)
                for k, i in enumerate(idx):
                    refs[i] = logps[2 * k : 2 * k + 2].tolist()
        gathered = [None] * world
        dist.all_gather_object(gathered, refs)
        for part in gathered:
            for i, ref in part.items():
                examples[i].values["ref"] = ref

    def loss(self, model: nn.Module, examples: list[Example]) -> tuple[Tensor, dict[str, float]]:
        logps, _ = response_logps(model, [s for ex in examples for s in ex.seqs], self.pad_id, self.split)
        pc, pr = logps[0::2], logps[1::2]
        ref = torch.tensor([ex.values["ref"] for ex in examples], dtype=logps.dtype)
        rc, rr = ref[:, 0], ref[:, 1]
        d = self.cfg.dpo
        if d.soft_labels:
            p = torch.tensor([ex.values["preference_prob"] for ex in examples], dtype=logps.dtype)
            losses = rdpo_loss(pc, pr, rc, rr, d.beta, p)
        else:
            losses = dpo_loss(pc, pr, rc, rr, d.beta, d.label_smoothing)
        h = (d.beta * ((pc - rc) - (pr - rr))).detach()
        return losses.mean(), {"reward_accuracy": (h > 0).float().mean().item(), "reward_margin": (h / d.beta).mean().item()}
