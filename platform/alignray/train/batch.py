"""The methods' shared interface, and the log-probs of responses."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar

import torch
from torch import Tensor, nn

from alignray.config import TrainConfig
from alignray.models.tokens import IGNORE, Seq, length_buckets, pad
from alignray.train.data import Example
from alignray.train.losses import sequence_logps


def bucketed(fn: Callable[[dict[str, Tensor]], tuple[Tensor, ...]], seqs: list[Seq], pad_id: int,
             split: bool = True) -> tuple[Tensor, ...]:
    """`fn` of the padded batch, run per length bucket (`length_buckets`: less padding than one
    batch padded to the longest; `split` False: one batch), its outputs' rows put back in the
    order of `seqs`."""
    groups = length_buckets([len(s.ids) for s in seqs]) if split else [list(range(len(seqs)))]
    outs = [fn(pad([seqs[i] for i in g], pad_id)) for g in groups]
    where = torch.tensor([i for g in groups for i in g]).argsort()
    return tuple(torch.cat(parts)[where] for parts in zip(*outs))


def response_logps(model: nn.Module, seqs: list[Seq], pad_id: int, split: bool = True) -> tuple[Tensor, Tensor]:
    """(summed log-prob of each response under `model`, its number of tokens); `split`: as `bucketed`."""

    def run(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return sequence_logps(logits, batch["labels"], ignore_index=IGNORE)

    return bucketed(run, seqs, pad_id, split)


class Method(ABC):
    """What one training kind supplies to the shared runner."""

    kind: ClassVar[str]
    eval_metric: ClassVar[str]  # the metric the registry's champion is chosen by
    higher_is_better: ClassVar[bool]

    def __init__(self, cfg: TrainConfig, pad_id: int):
        self.cfg, self.pad_id = cfg, pad_id
        # ZeRO-3 gathers the weights in every forward pass, collectively: every rank must run as
        # many passes, so its batches are not split into length buckets
        self.split = cfg.trainer.zero_stage != 3

    def load_model(self, path: str) -> nn.Module:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)

    def prepare(self, model: nn.Module, examples: list[Example], rank: int, world: int) -> None:
        """Per-example values computed once before training (e.g. reference log-probs)."""

    @abstractmethod
    def loss(self, model: nn.Module, examples: list[Example]) -> tuple[Tensor, dict[str, float]]:
        """Mean loss over the examples, and metrics to log (means over the examples)."""
