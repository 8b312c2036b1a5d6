"""Reward functions over the n samples of ONE prompt, and their registry (config key `algo.reward`).

A RewardFn is `fn(outcome: GroupOutcome, cfg) -> list[float]`, one reward per sample. `GroupOutcome` holds the
grader's verdicts, the completion lengths in tokens (the EOS token included when a sample finished), whether each
sample ended with EOS (a truncated sample counts as incorrect everywhere) and the token budget the prompt carried
(L1), if any. Adding a reward is one decorated function:

    @register_reward("my_reward")
    def my_reward(o: GroupOutcome, cfg: Config) -> list[float]: ...

The rewards read only `REWARD_PARAMS` of `algo`, in the driver, each step: those keys may follow a schedule
(`algo.schedule`, `mrt_ray.schedule`). Formulas, worked examples and what a wrong answer earns: docs/algorithms.md.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mrt_ray.registry import Registry
from mrt_ray.tasks.budget import Budget

if TYPE_CHECKING:
    from mrt_ray.config import Config

# algo keys read by the rewards (and by the sampler: token_limit); the only keys `algo.schedule` may change by step
REWARD_PARAMS = ("alpha", "overlong_cache", "l1_alpha", "l1_delta", "kimi_coef", "sb_alpha", "sb_beta", "token_limit")


@dataclass(frozen=True)
class GroupOutcome:
    """One prompt's n samples as a reward sees them."""

    correct: tuple[bool, ...]  # the grader's verdict per sample
    lengths: tuple[int, ...]  # completion tokens per sample, EOS included when it finished
    finished: tuple[bool, ...]  # ended with EOS or a stop string; a truncated sample is incorrect everywhere
    budget: Budget | None = None  # the token budget the prompt asked for (L1); None: the prompt carried none

    def __post_init__(self):
        for name in ("correct", "lengths", "finished"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not len(self.correct) == len(self.lengths) == len(self.finished):
            raise ValueError(
                f"one prompt's samples disagree in number: {len(self.correct)} correct flags, {len(self.lengths)} "
                f"lengths, {len(self.finished)} finished flags"
            )
        bad = [(i, n) for i, n in enumerate(self.lengths) if n < 0]
        if bad:
            raise ValueError(f"negative completion length at sample {bad[0][0]}: {bad[0][1]}")

    @property
    def ok(self) -> list[bool]:
        """Correct AND finished: what every reward counts as a right answer."""
        return [bool(c and f) for c, f in zip(self.correct, self.finished)]


RewardFn = Callable[[GroupOutcome, "Config"], list[float]]
REWARDS: Registry[RewardFn] = Registry("reward", "algo.reward")
register_reward = REWARDS.register
get_reward = REWARDS.lookup


def _sigmoid(z: float) -> float:
    """Logistic function without overflow for large |z| (z can reach ~1e9 when sigma is 0 plus 1e-7)."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _budget(o: GroupOutcome, reward: str) -> Budget:
    if o.budget is None:
        raise ValueError(f"algo.reward={reward} needs a token budget in every prompt: set algo.budget.max_tokens > 0 "
                         f"(the L1 presets do)")
    return o.budget


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
    o = GroupOutcome(correct, lengths, [True] * len(correct) if finished is None else finished)
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"length penalty alpha={alpha} must be in [0, 1) (algo.alpha)")
    good = [float(n) for n, g in zip(o.lengths, o.ok) if g]
    if not good:
        return [0.0] * len(o.ok)
    mu = sum(good) / len(good)
    sigma = math.sqrt(sum((n - mu) ** 2 for n in good) / len(good))
    return [1.0 - alpha * _sigmoid((n - mu) / (sigma + 1e-7)) if g else 0.0 for n, g in zip(o.lengths, o.ok)]


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


def kimi_length_rewards(ok: Sequence[bool], lengths: Sequence[int]) -> list[float]:
    """Kimi 1.5's length reward alone: lambda = 0.5 - (len - min_len) / (max_len - min_len) over ALL samples of the
    prompt; a correct sample gets lambda, a wrong one min(0, lambda); all 0 when every length is equal."""
    lo, hi = min(lengths), max(lengths)
    if hi == lo:
        return [0.0] * len(lengths)
    lam = [0.5 - (n - lo) / (hi - lo) for n in lengths]
    return [x if g else min(0.0, x) for x, g in zip(lam, ok)]


def l1_exact_rewards(ok: Sequence[bool], lengths: Sequence[int], target: int, alpha: float) -> list[float]:
    """L1-Exact: 1{correct} - alpha * |target - len| for every sample, right or wrong."""
    return [float(g) - alpha * abs(target - n) for g, n in zip(ok, lengths)]


# ----------------------------------------------------------------------------------------------- registered rewards


@register_reward("outcome")
def outcome(o: GroupOutcome, cfg: Config) -> list[float]:
    """1.0 if correct and finished, else 0.0."""
    return outcome_rewards(o.correct, o.finished)


@register_reward("length_penalty")
def length_penalty(o: GroupOutcome, cfg: Config) -> list[float]:
    """Arora & Zanette length penalty with alpha = cfg.algo.alpha."""
    return length_penalty_rewards(o.correct, o.lengths, cfg.algo.alpha, o.finished)


@register_reward("dapo_overlong")
def dapo_overlong(o: GroupOutcome, cfg: Config) -> list[float]:
    """Outcome plus DAPO overlong shaping (L_max = cfg.rollout.max_new_tokens, L_cache = cfg.algo.overlong_cache)."""
    shaping = overlong_penalty(o.lengths, cfg.rollout.max_new_tokens, cfg.algo.overlong_cache)
    return [r + s for r, s in zip(outcome_rewards(o.correct, o.finished), shaping)]


@register_reward("l1_exact")
def l1_exact(o: GroupOutcome, cfg: Config) -> list[float]:
    """L1/LCPO-Exact (Aggarwal & Welleck 2025, eq. 1): 1{correct} - l1_alpha * |n_target - n|, wrong samples too.
    Every prompt must carry an exact budget."""
    b = _budget(o, "l1_exact")
    if b.kind != "exact":
        raise ValueError("algo.reward=l1_exact got a prompt with a maximum budget; use algo.reward=l1_max for "
                         "algo.budget.max_share > 0")
    return l1_exact_rewards(o.ok, o.lengths, b.tokens, cfg.algo.l1_alpha)


@register_reward("l1_max")
def l1_max(o: GroupOutcome, cfg: Config) -> list[float]:
    """L1-Max (eq. 2): 1{correct} * clip(l1_alpha * (n_max - n) + l1_delta, 0, 1) for a prompt with a maximum budget;
    a prompt with an exact budget gets L1-Exact, as in the paper's dual objective."""
    b = _budget(o, "l1_max")
    a = cfg.algo
    if b.kind == "exact":
        return l1_exact_rewards(o.ok, o.lengths, b.tokens, a.l1_alpha)
    return [min(1.0, max(0.0, a.l1_alpha * (b.tokens - n) + a.l1_delta)) if g else 0.0
            for g, n in zip(o.ok, o.lengths)]


@register_reward("kimi_length")
def kimi_length(o: GroupOutcome, cfg: Config) -> list[float]:
    """Kimi 1.5 (2.3.3): 1{correct} + kimi_coef * len_reward (`kimi_length_rewards`)."""
    return [float(g) + cfg.algo.kimi_coef * x for g, x in zip(o.ok, kimi_length_rewards(o.ok, o.lengths))]


@register_reward("shorter_better")
def shorter_better(o: GroupOutcome, cfg: Config) -> list[float]:
    """ShorterBetter: sb_alpha * 1{correct} - sb_beta * |n - SOL|, SOL = the shortest correct length of the prompt,
    or the mean length of all its samples when none is correct."""
    good = [n for n, g in zip(o.lengths, o.ok) if g]
    sol = min(good) if good else sum(o.lengths) / len(o.lengths)
    return [cfg.algo.sb_alpha * g - cfg.algo.sb_beta * abs(n - sol) for g, n in zip(o.ok, o.lengths)]


@register_reward("thinkprune")
def thinkprune(o: GroupOutcome, cfg: Config) -> list[float]:
    """ThinkPrune: 1 for a correct, finished sample within algo.token_limit tokens, else 0 (the sampler stops at the
    limit as well, `generation_limit`)."""
    limit = cfg.algo.token_limit
    if limit < 1:
        raise ValueError("algo.reward=thinkprune needs algo.token_limit > 0 (or a schedule for it)")
    return [1.0 if g and n <= limit else 0.0 for g, n in zip(o.ok, o.lengths)]


def generation_limit(cfg: Config) -> int:
    """Most tokens a training sample may have: rollout.max_new_tokens, capped by algo.token_limit when > 0."""
    limit = cfg.algo.token_limit
    return min(cfg.rollout.max_new_tokens, limit) if limit > 0 else cfg.rollout.max_new_tokens
