"""What crosses the rollout boundary: sampling requests and completions."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingSpec:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    seed: int | None = None  # same seed, same samples
    stop: tuple[str, ...] = ()


@dataclass
class Request:
    prompt_ids: list[int]
    spec: SamplingSpec


@dataclass
class Completion:
    ids: list[int]  # sampled token ids, the EOS token included when the sample finished
    logprobs: list[float]  # behaviour-policy log-prob of each sampled token (after temperature)
    text: str  # decoded completion, special tokens skipped
    finished: bool  # ended with EOS or a stop string; False: cut at max_tokens (truncated)
    version: int = 0  # policy version (number of weight pushes) that produced it


class EngineDead(RuntimeError):
    """The inference engine can never answer again (vLLM's engine-core process died): the worker process must end,
    so that Ray restarts it with a fresh engine."""


@dataclass
class CollectedRollout:
    """Completions already sampled, in the place of a pending submission's futures: [prompt][sample], stats."""

    outs: list[list[Completion]]
    stats: dict
