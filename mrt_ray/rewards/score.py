"""Step 5 of the data path: grade every trajectory and turn each prompt group's outcomes into scalar rewards with
the registered reward (`algo.reward`)."""
from __future__ import annotations

from typing import Callable

from mrt_ray.config import Config
from mrt_ray.rewards.shaping import REWARDS, GroupOutcome
from mrt_ray.trajectory import Trajectory


def score(groups: list[list[Trajectory]], cfg: Config, grader: Callable[[str, str], bool]) -> dict:
    """Sets `correct` (graded answer of a finished sample; a truncated one is incorrect) and `reward`."""
    reward_fn = REWARDS[cfg.algo.reward]
    for group in groups:
        for t in group:
            t.correct = bool(t.completion.finished and grader(t.completion.text, t.problem.answer))
        rewards = reward_fn(GroupOutcome([t.correct for t in group], [t.length for t in group],
                                         [t.completion.finished for t in group], group[0].problem.meta.get("budget")),
                            cfg)
        for t, r in zip(group, rewards):
            t.reward = float(r)
    flat = [t for g in groups for t in g]
    return {
        "reward": sum(t.reward for t in flat) / len(flat),
        "accuracy": sum(t.correct for t in flat) / len(flat),
        "solve_rate_any": sum(any(t.correct for t in g) for g in groups) / len(groups),
    }
