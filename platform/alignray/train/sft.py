"""Context distillation: supervised fine-tuning on the chosen (o+) outputs, response tokens only."""

from __future__ import annotations

from torch import Tensor, nn

from alignray.train.batch import Method, response_logps
from alignray.train.data import Example


class SFTMethod(Method):
    kind = "sft"
    eval_metric = "loss"
    higher_is_better = False

    def loss(self, model: nn.Module, examples: list[Example]) -> tuple[Tensor, dict[str, float]]:
        logps, lengths = response_logps(model, [ex.seqs[0] for ex in examples], self.pad_id, self.split)
        loss = -logps.sum() / lengths.sum()  # mean negative log-likelihood per response token
        return loss, {"response_tokens": lengths.sum().item()}
