"""Advantage estimators, policy losses and log-prob helpers (pure torch)."""
from mrt_ray.algos.advantages import (
    ADVANTAGES,
    AdvantageFn,
    mrt_bonus_advantages,
    register_advantage,
    termination_baseline_advantages,
    token_advantages,
    whiten,
)
from mrt_ray.algos.logprobs import entropy_from_logits, gather_logprobs
from mrt_ray.algos.losses import LOSSES, LossFn, LossInputs, StepNorm, aggregate, kl_penalty, register_loss

__all__ = [
    "ADVANTAGES",
    "AdvantageFn",
    "LOSSES",
    "LossFn",
    "LossInputs",
    "StepNorm",
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
