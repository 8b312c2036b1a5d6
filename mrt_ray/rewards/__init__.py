"""Rewards and answer grading: the reward registry (`REWARDS`, `register_reward`) and math-verify grading."""
from mrt_ray.rewards.extract import extract_answer
from mrt_ray.rewards.grading import (
    get_grader,
    grading_stats,
    math_equal,
    math_equal_batch,
    shutdown_grading_pool,
)
from mrt_ray.rewards.shaping import (
    REWARDS,
    GroupOutcome,
    RewardFn,
    get_reward,
    length_penalty_rewards,
    outcome_rewards,
    overlong_penalty,
    register_reward,
)

__all__ = [
    "REWARDS",
    "GroupOutcome",
    "RewardFn",
    "extract_answer",
    "get_grader",
    "get_reward",
    "grading_stats",
    "length_penalty_rewards",
    "math_equal",
    "math_equal_batch",
    "outcome_rewards",
    "overlong_penalty",
    "register_reward",
    "shutdown_grading_pool",
]
