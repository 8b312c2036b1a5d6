"""Step 5 of the data path: grade every trajectory of the step at once (`Grader.many`) and turn each prompt group's
outcomes into scalar rewards with the registered reward (`algo.reward`)."""
from __future__ import annotations

from mrt_ray.config import Config
from mrt_ray.rewards.grading import grading_stats
from mrt_ray.rewards.shaping import REWARDS, GroupOutcome
from mrt_ray.trajectory import Trajectory


def score(groups: list[list[Trajectory]], cfg: Config, grader) -> dict:
    """Sets `correct` (graded answer of a finished sample; a truncated one is incorrect) and `reward`. Returns the
    step's reward, accuracy, share of prompts with a right sample, and this process's grading counters (cumulative:
    timeouts and errors score 0)."""
    flat = [t for g in groups for t in g]
    graded = grader.many([t.completion.text for t in flat], [t.problem.answer for t in flat])
    for t, ok in zip(flat, graded):
        t.correct = bool(t.completion.finished and ok)
    reward_fn = REWARDS[cfg.algo.reward]
    for group in groups:
        rewards = reward_fn(GroupOutcome([t.correct for t in group], [t.length for t in group],
                                         [t.completion.finished for t in group], group[0].problem.meta.get("budget")),
                            cfg)
        for t, r in zip(group, rewards):
            t.reward = float(r)
    counters = grading_stats()
    return {
        "reward": sum(t.reward for t in flat) / len(flat),
        "accuracy": sum(t.correct for t in flat) / len(flat),
        "solve_rate_any": sum(any(t.correct for t in g) for g in groups) / len(groups),
        "grading_timeouts": counters["timeouts"], "grading_errors": counters["errors"],
    }
