"""What goes into and comes out of a sampler."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class SamplingSpec:
    """Sampling settings of one request (a prompt): vLLM's SamplingParams, the parts we use."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 128
    min_tokens: int = 0  # generate at least this many tokens (EOS and stop ignored before)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None  # None: none; 0: the sampled token's; k: and the top k

    def for_prompt(self, index: int) -> SamplingSpec:
        """The spec of the index-th prompt of a batch: a seed becomes seed + index * n, so equal
        prompts get different samples and results do not depend on how a batch is split.
        (vLLM seeds the j-th of n samples with seed + j: a stride of n keeps every sample's
        random stream distinct.)"""
        return self if self.seed is None else replace(self, seed=self.seed + index * self.n)

    def to_vllm(self):
        from vllm import SamplingParams

        return SamplingParams(
            n=self.n,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            min_tokens=self.min_tokens,
            stop=list(self.stop) or None,
            seed=self.seed,
            logprobs=self.logprobs,
        )


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]
    cumulative_logprob: float | None
    logprobs: tuple[float, ...] | None  # of each sampled token, when SamplingSpec.logprobs is set
    finish_reason: str | None


@dataclass(frozen=True)
class Reply:
    """One chat reply (`LocalModel.chat`, `Endpoint.chat`): its text and why it ended."""

    text: str
    finish_reason: str | None  # "stop", or "length": cut off at max_tokens


@dataclass(frozen=True)
class Score:
    """Log-probabilities of a given continuation after a prompt."""

    token_ids: tuple[int, ...]
    token_logprobs: tuple[float, ...]

    @property
    def total(self) -> float:
        return float(sum(self.token_logprobs))


@dataclass(frozen=True)
class Probe:
    """A sequence whose token log-probs the trainer computed with the weights being pushed;
    every sampler must reproduce them after loading those weights."""

    prompt: str
    continuation: str
    token_logprobs: tuple[float, ...]
    tolerance: float = 1e-3
