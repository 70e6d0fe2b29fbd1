"""The methods' shared interface, and the log-probs of responses."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor, nn

from alignray.config import TrainConfig
from alignray.models.tokens import IGNORE, Seq, pad
from alignray.train.data import Example
from alignray.train.losses import sequence_logps


def response_logps(model: nn.Module, seqs: list[Seq], pad_id: int) -> tuple[Tensor, Tensor]:
    """(summed log-prob of each response under `model`, its number of tokens)."""
    batch = pad(seqs, pad_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_logps(logits, batch["labels"], ignore_index=IGNORE)


class Method(ABC):
    """What one training kind supplies to the shared runner."""

    kind: ClassVar[str]
    eval_metric: ClassVar[str]  # the metric the registry's champion is chosen by
    higher_is_better: ClassVar[bool]

    def __init__(self, cfg: TrainConfig, pad_id: int):
        self.cfg, self.pad_id = cfg, pad_id

    def load_model(self, path: str) -> nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

    def prepare(self, model: nn.Module, examples: list[Example], rank: int, world: int) -> None:
        """Per-example values computed once before training (e.g. reference log-probs)."""

    @abstractmethod
    def loss(self, model: nn.Module, examples: list[Example]) -> tuple[Tensor, dict[str, float]]:
        """Mean loss over the examples, and metrics to log (means over the examples)."""
