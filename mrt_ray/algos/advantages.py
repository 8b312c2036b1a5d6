"""Advantage estimators: group baselines (GRPO, RLOO, Dr.GRPO), whitening, and MRT's dense progress advantages.

An `AdvantageFn` maps the scalar rewards of G prompt groups of n samples each, `rewards: [G, n]`, to per-sample
advantages `[G, n]`. `token_advantages` broadcasts them over the completion tokens; `kl_reward_to_go` is the k1 KL
penalty inside the reward as a per-token return; `whiten` normalises over the batch's action tokens;
`mrt_bonus_advantages` adds MRT's per-episode progress bonus on top.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mrt_ray.registry import Registry

AdvantageFn = Callable[[Tensor], Tensor]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator", "algo.advantage")
register_advantage = ADVANTAGES.register

GRPO_EPS = 1e-6  # added to the group std in "grpo"
WHITEN_EPS = 1e-8  # floor of the variance in `whiten`


def _check_groups(rewards: Tensor, name: str, min_n: int) -> None:
    if rewards.dim() != 2:
        raise ValueError(
            f"advantage '{name}': rewards must be [G prompts, n samples], got shape {tuple(rewards.shape)}"
        )
    if rewards.shape[1] < min_n:
        raise ValueError(
            f"advantage '{name}' needs at least {min_n} samples per prompt (rollout.n_samples), got {rewards.shape[1]}"
        )
    if not rewards.is_floating_point():
        raise ValueError(f"advantage '{name}': rewards must be a floating-point tensor, got {rewards.dtype}")


@register_advantage("grpo")
def grpo(rewards: Tensor) -> Tensor:
    """(r - group mean) / (group std + 1e-6), std with Bessel's correction (the sample std, as DeepSeekMath, TRL and
    verl use). A group of equal rewards gets zeros."""
    _check_groups(rewards, "grpo", 2)
    mean = rewards.mean(dim=1, keepdim=True)  # [G, 1]
    std = rewards.std(dim=1, unbiased=True, keepdim=True)  # [G, 1]
    return (rewards - mean) / (std + GRPO_EPS)


@register_advantage("rloo")
def rloo(rewards: Tensor) -> Tensor:
    """r_i - mean of the other n-1 rewards of the same prompt (REINFORCE leave-one-out)."""
    _check_groups(rewards, "rloo", 2)
    n = rewards.shape[1]
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (n - 1)  # [G, n]
    return rewards - others


@register_advantage("drgrpo")
def drgrpo(rewards: Tensor) -> Tensor:
    """r - group mean, no std division (Dr. GRPO)."""
    _check_groups(rewards, "drgrpo", 2)
    return rewards - rewards.mean(dim=1, keepdim=True)


def whiten(adv: Tensor, mask: Tensor | None = None) -> Tensor:
    """(adv - mean) / sqrt(max(var, 1e-8)) over the whole batch (`algo.whiten`), the mean shift included.

    Mean and (population) variance are taken over the entries where `mask` is 1 (all entries when `mask` is None);
    masked-out entries come back as 0. On token advantages `[B, T]` with the completion mask this is the Arora &
    Zanette recipe's whitening (OpenRLHF's, over all action tokens of the batch: a long sample weighs by its tokens);
    on sequence advantages `[B]` it whitens per sample.
    """
    m = torch.ones_like(adv, dtype=torch.bool) if mask is None else _bool_mask(mask, adv.shape, "whiten")
    count = m.sum()
    if count == 0:
        raise ValueError("whiten: the mask selects no entries")
    vals = torch.where(m, adv, torch.zeros_like(adv))
    mean = vals.sum() / count
    var = torch.where(m, (adv - mean) ** 2, torch.zeros_like(adv)).sum() / count
    return torch.where(m, (adv - mean) * torch.rsqrt(var.clamp(min=WHITEN_EPS)), torch.zeros_like(adv))


def kl_reward_to_go(behaviour_logp: Tensor, ref_logp: Tensor, mask: Tensor, beta: float) -> Tensor:
    """The k1 KL penalty inside the reward, as a return: -beta * sum_{t' >= t} (logp_t' - ref_t') per token. `[B, T]`.

    Arora & Zanette (OpenRLHF's `compute_reward` + cumulative returns, gamma 1): per-token reward -beta * k1_t with
    k1_t = log pi_old(a_t) - log pi_ref(a_t), summed from t to the end of the sample; 0 on padding."""
    m = _bool_mask(mask, behaviour_logp.shape, "kl_reward_to_go")
    k1 = torch.where(m, behaviour_logp - ref_logp, torch.zeros_like(behaviour_logp))  # [B, T]
    rtg = torch.flip(torch.cumsum(torch.flip(k1, dims=[1]), dim=1), dims=[1])  # [B, T] suffix sums
    return torch.where(m, -beta * rtg, torch.zeros_like(rtg))


def token_advantages(seq_adv: Tensor, mask: Tensor) -> Tensor:
    """Broadcast one advantage per sequence `[B]` to its completion tokens: `[B, T]`, 0 where `mask` is 0."""
    if seq_adv.dim() != 1 or mask.dim() != 2 or mask.shape[0] != seq_adv.shape[0]:
        raise ValueError(
            f"token_advantages: seq_adv must be [B] and mask [B, T], got {tuple(seq_adv.shape)} and {tuple(mask.shape)}"
        )
    return seq_adv[:, None] * mask.to(seq_adv.dtype)


def mrt_bonus_advantages(
    base: Tensor,
    progress: list[list[float]],
    episode_token_spans: list[list[tuple[int, int]]],
    mask: Tensor,
    coef: float,
) -> Tensor:
    """MRT's dense advantages (bonus form): the outcome advantage of each token `base: [B, T]` + coef * progress of
    the token's episode. `[B, T]`.

    Row b has episodes j with progress `progress[b][j]` = J(c_j) - J(c_{j-1}) covering completion tokens
    `episode_token_spans[b][j]` = [start, end). Tokens outside every episode (e.g. the final answer) keep `base`;
    padding (`mask` 0) gets 0.

    The progress is used as given, NOT centred per prompt group: in l_MRT = l_FT + alpha * E[sum_j r_prg(z_j; c_{j-1})]
    each r_prg is already an advantage of episode z_j under the meta-prover mu, with the value of its own prefix
    J(c_{j-1}) as the baseline. Centring it again over the group would subtract a baseline that depends on the other
    samples' episodes and change the objective. `coef` is alpha (`algo.mrt.progress_coef`).
    """
    B, T = mask.shape
    m = _bool_mask(mask, (B, T), "mrt_bonus_advantages")
    if tuple(base.shape) != (B, T):
        raise ValueError(f"mrt_bonus_advantages: base advantages {tuple(base.shape)} do not match the mask {(B, T)}")
    out = torch.where(m, base, torch.zeros_like(base))  # [B, T]
    if len(progress) != B or len(episode_token_spans) != B:
        raise ValueError(
            f"mrt_bonus_advantages: batch has {B} rows but progress has {len(progress)} and "
            f"episode_token_spans {len(episode_token_spans)}"
        )
    bonus = torch.zeros(B, T, dtype=out.dtype, device=out.device)  # [B, T]
    for b, (prg, spans) in enumerate(zip(progress, episode_token_spans)):
        if len(prg) != len(spans):
            raise ValueError(
                f"mrt_bonus_advantages: row {b} has {len(prg)} progress values but {len(spans)} episode spans"
            )
        covered = torch.zeros(T, dtype=torch.bool)  # [T] tokens already in an episode
        for j, ((start, end), p) in enumerate(zip(spans, prg)):
            if not 0 <= start <= end <= T:
                raise ValueError(
                    f"mrt_bonus_advantages: row {b} episode {j} span [{start}, {end}) is not within [0, {T}]"
                )
            if covered[start:end].any():
                raise ValueError(
                    f"mrt_bonus_advantages: row {b} episode {j} span [{start}, {end}) overlaps an earlier one"
                )
            if not m[b, start:end].all():
                raise ValueError(
                    f"mrt_bonus_advantages: row {b} episode {j} span [{start}, {end}) covers tokens outside the mask"
                )
            covered[start:end] = True
            bonus[b, start:end] = p
    return out + coef * bonus


def termination_baseline_advantages(cont_rewards: Tensor, term_rewards: Tensor) -> Tensor:
    """MRT-RL with a termination baseline: continuation reward - mean termination reward of the same prefix.

    `cont_rewards: [P, m]` rewards of m continuations of each of P prefixes; `term_rewards: [P, q]` rewards of q forced
    answers right after the same prefixes. Returns `[P, m]`.
    """
    if cont_rewards.dim() != 2 or term_rewards.dim() != 2 or cont_rewards.shape[0] != term_rewards.shape[0]:
        raise ValueError(
            "termination_baseline_advantages: expected cont_rewards [P, m] and term_rewards [P, q] with the same P, "
            f"got {tuple(cont_rewards.shape)} and {tuple(term_rewards.shape)}"
        )
    if term_rewards.shape[1] == 0:
        raise ValueError("termination_baseline_advantages: term_rewards has no samples per prefix (q = 0)")
    return cont_rewards - term_rewards.mean(dim=1, keepdim=True)


def _bool_mask(mask: Tensor, shape: tuple[int, ...] | torch.Size, where: str) -> Tensor:
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{where}: mask shape {tuple(mask.shape)} does not match {tuple(shape)}")
    return mask.bool()
