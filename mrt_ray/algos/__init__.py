"""Advantage estimators and policy losses (pure torch)."""
from mrt_ray.algos.advantages import (
    ADVANTAGES,
    AdvantageFn,
    mrt_bonus_advantages,
    register_advantage,
    termination_baseline_advantages,
    token_advantages,
    whiten,
)
from mrt_ray.algos.losses import (
    LOSSES,
    LossFn,
    aggregate,
    entropy_from_logits,
    gather_logprobs,
    kl_penalty,
    register_loss,
)

__all__ = [
    "ADVANTAGES",
    "AdvantageFn",
    "LOSSES",
    "LossFn",
    "aggregate",
    "entropy_from_logits",
    "gather_logprobs",
    "kl_penalty",
    "mrt_bonus_advantages",
    "register_advantage",
    "register_loss",
    "termination_baseline_advantages",
    "token_advantages",
    "whiten",
]
