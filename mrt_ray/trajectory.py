"""One sampled trace as it moves down the data path: rollout fills the completion, scoring the correctness and
reward, segmentation the episodes, the estimator the J values, the advantage step the per-token advantages."""
from __future__ import annotations

from dataclasses import dataclass, field

from mrt_ray.rollout.types import Completion
from mrt_ray.tasks import Problem


@dataclass
class Trajectory:
    problem: Problem
    prompt_ids: list[int]
    completion: Completion
    group: int  # index of its prompt group in the step
    correct: bool = False
    reward: float = 0.0
    episode_spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) completion-token spans
    episode_cuts: list[int] = field(default_factory=list)  # token counts after which an answer is forced
    j_values: list[float] = field(default_factory=list)  # J(c_-1), J(c_0) .. J(c_k)
    progress: list[float] = field(default_factory=list)  # per episode
    ref_logprobs: list[float] = field(default_factory=list)  # reference policy, per token (algo.kl_in_reward)
    advantages: list[float] = field(default_factory=list)  # per completion token

    @property
    def length(self) -> int:
        return len(self.completion.ids)
