"""Token handling shared by training and the reward scorers: a prompt + response as token ids,
and their padding into tensors.

A response follows its prompt directly, after one space when neither side has whitespace at
the join, and ends with the tokenizer's EOS token. A pair longer than `max_length` is cut: the
prompt from `side` first, then the response's tail; `Tokenize.truncated` counts them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE = -100  # the label of a position the loss skips
# What one more forward pass costs, in padded token slots: on SmolLM2-135M, 2 CPU threads, bf16
# autocast, forward + backward measured as much as 60-120 slots (docs/benchmarks.md); the low end.
BUCKET_OVERHEAD = 64


@dataclass
class Seq:
    """One prompt + response, as token ids; the loss covers the response only."""

    prompt: list[int]
    response: list[int]

    @property
    def ids(self) -> list[int]:
        return self.prompt + self.response


def joined(prompt: str, response: str) -> str:
    """The response text as it follows the prompt."""
    if prompt and response and not prompt[-1].isspace() and not response[0].isspace():
        return " " + response
    return response


class Tokenize:
    def __init__(self, tokenizer, max_length: int, side: str):
        self.tok, self.max_length, self.side = tokenizer, max_length, side
        self.truncated = 0

    def __call__(self, prompt: str, response: str) -> Seq:
        p = self.tok(prompt).input_ids
        r = self.tok(joined(prompt, response), add_special_tokens=False).input_ids
        r.append(self.tok.eos_token_id)
        if len(p) + len(r) <= self.max_length:
            return Seq(p, r)
        self.truncated += 1
        keep = max(1, self.max_length - len(r))
        p = p[-keep:] if self.side == "left" else p[:keep]
        return Seq(p, r[: self.max_length - len(p)])


def pad(seqs: list[Seq], pad_id: int) -> dict[str, Tensor]:
    """Right-padded input_ids, attention_mask, and labels that cover the responses only."""
    width = max(len(s.ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for i, s in enumerate(seqs):
        n, p = len(s.ids), len(s.prompt)
        ids[i, :n] = torch.tensor(s.ids)
        mask[i, :n] = 1
        labels[i, p:n] = ids[i, p:n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def length_buckets(lengths: list[int], overhead: int = BUCKET_OVERHEAD) -> list[list[int]]:
    """The indices of `lengths`, grouped to be padded and run separately: runs of the sorted
    lengths, chosen to minimise the padded token slots plus `overhead` per group."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    cost, cut = [0.0] + [math.inf] * len(order), [0] * (len(order) + 1)  # best cost of the first j sorted
    for j in range(1, len(order) + 1):
        for i in range(j):
            c = cost[i] + (j - i) * lengths[order[j - 1]] + overhead
            if c < cost[j]:
                cost[j], cut[j] = c, i
    groups, j = [], len(order)
    while j:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]
