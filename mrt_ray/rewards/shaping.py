"""Reward functions over the n samples of ONE prompt, and their registry (config key `algo.reward`).

A RewardFn is `fn(correct, lengths, finished, cfg) -> list[float]`, one reward per sample: `correct` is the grader's
verdict, `lengths` the completion lengths in tokens, `finished` whether the sample ended with EOS (a truncated sample
counts as incorrect everywhere). Adding a reward is one decorated function:

    @register_reward("my_reward")
    def my_reward(correct, lengths, finished, cfg): ...
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from mrt_ray.registry import Registry

if TYPE_CHECKING:
    from mrt_ray.config import Config

RewardFn = Callable[[Sequence[bool], Sequence[int], Sequence[bool], "Config"], list[float]]
REWARDS: Registry[RewardFn] = Registry("reward", "algo.reward")
register_reward = REWARDS.register
get_reward = REWARDS.lookup


def _check(correct: Sequence[bool], lengths: Sequence[int], finished: Sequence[bool]) -> None:
    if not len(correct) == len(lengths) == len(finished):
        raise ValueError(
            f"one prompt's samples disagree in number: {len(correct)} correct flags, {len(lengths)} lengths, "
            f"{len(finished)} finished flags"
        )
    bad = [(i, n) for i, n in enumerate(lengths) if n < 0]
    if bad:
        raise ValueError(f"negative completion length at sample {bad[0][0]}: {bad[0][1]}")


def _sigmoid(z: float) -> float:
    """Logistic function without overflow for large |z| (z can reach ~1e9 when sigma is 0 plus 1e-7)."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def outcome_rewards(correct: Sequence[bool], finished: Sequence[bool]) -> list[float]:
    """1.0 for a correct, finished sample, else 0.0."""
    return [1.0 if c and f else 0.0 for c, f in zip(correct, finished)]


def length_penalty_rewards(
    correct: Sequence[bool], lengths: Sequence[int], alpha: float, finished: Sequence[bool] | None = None
) -> list[float]:
    """Arora & Zanette: 1{correct, finished} * (1 - alpha * sigmoid((len - mu) / (sigma + 1e-7))).

    mu, sigma: mean and population std of the lengths of this prompt's correct, finished samples. A correct sample
    earns a reward in [1 - alpha, 1]; a lone correct sample (or equal lengths) earns 1 - alpha / 2; the rest earn 0.
    `finished=None` means every sample ended with EOS.
    """
    if finished is None:
        finished = [True] * len(correct)
    _check(correct, lengths, finished)
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"length penalty alpha={alpha} must be in [0, 1) (algo.alpha)")
    ok = [bool(c and f) for c, f in zip(correct, finished)]
    good = [float(n) for n, g in zip(lengths, ok) if g]
    if not good:
        return [0.0] * len(ok)
    mu = sum(good) / len(good)
    sigma = math.sqrt(sum((n - mu) ** 2 for n in good) / len(good))
    return [1.0 - alpha * _sigmoid((n - mu) / (sigma + 1e-7)) if g else 0.0 for n, g in zip(lengths, ok)]


def overlong_penalty(lengths: Sequence[int], max_len: int, cache: int) -> list[float]:
    """DAPO soft overlong punishment: 0 up to max_len - cache, linear down to -1 at max_len, -1 beyond.

    cache = 0 punishes only lengths beyond max_len.
    """
    if max_len <= 0 or not 0 <= cache <= max_len:
        raise ValueError(
            f"overlong shaping needs 0 <= algo.overlong_cache ({cache}) <= rollout.max_new_tokens ({max_len}), "
            f"max_new_tokens > 0"
        )
    start = max_len - cache
    out = []
    for n in lengths:
        if n <= start:
            out.append(0.0)
        elif n <= max_len:
            out.append((start - n) / cache)
        else:
            out.append(-1.0)
    return out


@register_reward("outcome")
def outcome(correct: Sequence[bool], lengths: Sequence[int], finished: Sequence[bool], cfg: Config) -> list[float]:
    """1.0 if correct and finished, else 0.0."""
    _check(correct, lengths, finished)
    return outcome_rewards(correct, finished)


@register_reward("length_penalty")
def length_penalty(
    correct: Sequence[bool], lengths: Sequence[int], finished: Sequence[bool], cfg: Config
) -> list[float]:
    """Arora & Zanette length penalty with alpha = cfg.algo.alpha."""
    return length_penalty_rewards(correct, lengths, cfg.algo.alpha, finished)


@register_reward("dapo_overlong")
def dapo_overlong(
    correct: Sequence[bool], lengths: Sequence[int], finished: Sequence[bool], cfg: Config
) -> list[float]:
    """Outcome plus DAPO overlong shaping (L_max = cfg.rollout.max_new_tokens, L_cache = cfg.algo.overlong_cache)."""
    _check(correct, lengths, finished)
    shaping = overlong_penalty(lengths, cfg.rollout.max_new_tokens, cfg.algo.overlong_cache)
    return [r + s for r, s in zip(outcome_rewards(correct, finished), shaping)]
