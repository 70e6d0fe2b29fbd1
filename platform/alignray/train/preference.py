"""Preference (reward) model: a causal-LM backbone with a scalar head, Bradley-Terry loss.

MORLAIF mode (`preference.principles`) puts K heads on one backbone, one per principle: a
single forward pass scores a response under every principle, and the backbone is stored once,
which at K = 12 is what makes per-principle rewards affordable inside PPO. Each pair trains
only the head of the principle it was labelled for (its `principle` column), or, with
`preference.soft_labels` (the wide format of `simulation.method=morlaif`), every pair trains
every head against its soft label column ``preference_prob_<principle>``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from alignray.train.batch import Method, bucketed
from alignray.train.data import Example
from alignray.train.losses import bradley_terry_loss, soft_bradley_terry_loss


class PreferenceMethod(Method):
    kind = "preference"
    eval_metric = "accuracy"
    higher_is_better = True

    def load_model(self, path: str) -> nn.Module:
        from transformers import AutoModelForSequenceClassification

        heads = len(self.cfg.preference.principles or [None])
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=heads, dtype=torch.float32)
        model.config.pad_token_id = self.pad_id
        if self.cfg.preference.principles:
            model.config.id2label = dict(enumerate(self.cfg.preference.principles))
            model.config.label2id = {n: i for i, n in model.config.id2label.items()}
        return model

    def loss(self, model: nn.Module, examples: list[Example]) -> tuple[Tensor, dict[str, float]]:
        (scores,) = bucketed(lambda b: (model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,),
                             [s for ex in examples for s in ex.seqs], self.pad_id, self.split)
        scores = scores.view(len(examples), 2, -1)
        if self.cfg.preference.soft_labels:
            return self._soft_loss(scores, examples)
        heads = torch.tensor([int(ex.values.get("head", 0)) for ex in examples])
        scores = scores[torch.arange(len(examples)), :, heads]
        margin = None
        if self.cfg.preference.margin_column:
            margin = torch.tensor([ex.values["margin"] for ex in examples], dtype=scores.dtype)
        losses = bradley_terry_loss(scores[:, 0], scores[:, 1], margin)
        diff = (scores[:, 0] - scores[:, 1]).detach()
        return losses.mean(), {"accuracy": (diff > 0).float().mean().item(), "margin": diff.mean().item()}

    def _soft_loss(self, scores: Tensor, examples: list[Example]) -> tuple[Tensor, dict[str, float]]:
        """Every head against its soft label; accuracy counts agreement with the labels' side
        (ties left out), overall and per principle."""
        probs = torch.tensor([ex.values["probs"] for ex in examples], dtype=scores.dtype)  # [B, K]
        diff = scores[:, 0, :] - scores[:, 1, :]
        losses = soft_bradley_terry_loss(scores[:, 0, :].flatten(), scores[:, 1, :].flatten(), probs.flatten())
        decided = probs != 0.5
        agree = ((diff.detach() > 0) == (probs > 0.5)) & decided
        metrics = {"accuracy": (agree.sum() / decided.sum().clamp(min=1)).item(), "margin": diff.detach().mean().item()}
        for k, name in enumerate(self.cfg.preference.principles or []):
            metrics[f"accuracy_{name}"] = (agree[:, k].sum() / decided[:, k].sum().clamp(min=1)).item()
        return losses.mean(), metrics
