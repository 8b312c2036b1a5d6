"""Step 6 of the data path: per-token advantages for every trajectory.

In order: the registered estimator's advantage per sample (`algo.advantage`) broadcast to its completion tokens;
minus the k1 KL penalty as a reward-to-go when `algo.kl_in_reward` > 0 (needs each trajectory's reference
log-probs); whitened over all completion tokens of the batch when `algo.whiten`; plus, for MRT's bonus form, each
episode's progress (`algo.mrt.progress_coef`), which is already an advantage and is not whitened again.
"""
from __future__ import annotations

import torch

from mrt_ray.algos.advantages import ADVANTAGES, kl_reward_to_go, mrt_bonus_advantages, token_advantages, whiten
from mrt_ray.config import Config
from mrt_ray.trajectory import Trajectory


def uniform_groups(groups: list[list[Trajectory]]) -> list[int]:
    """Indices of groups whose rewards are all equal (no learning signal under a group baseline)."""
    return [i for i, g in enumerate(groups) if max(t.reward for t in g) - min(t.reward for t in g) < 1e-12]


def _padded(rows: list[list[float]], T: int) -> torch.Tensor:
    out = torch.zeros(len(rows), T, dtype=torch.float64)  # [B, T]
    for b, r in enumerate(rows):
        out[b, :len(r)] = torch.tensor(r, dtype=torch.float64)
    return out


def assign_advantages(groups: list[list[Trajectory]], cfg: Config, progress_bonus: bool = False) -> None:
    """Fills `advantages` (one per completion token) of every trajectory of `groups` (G prompts x n samples)."""
    ac = cfg.algo
    rewards = torch.tensor([[t.reward for t in g] for g in groups], dtype=torch.float64)  # [G, n]
    seq_adv = ADVANTAGES[ac.advantage](rewards).reshape(-1)  # [B]
    flat = [t for g in groups for t in g]
    T = max(t.length for t in flat)
    mask = torch.zeros(len(flat), T)  # [B, T] completion tokens
    for b, t in enumerate(flat):
        mask[b, :t.length] = 1
    adv = token_advantages(seq_adv, mask)  # [B, T]
    if ac.kl_in_reward > 0:
        missing = [b for b, t in enumerate(flat) if len(t.ref_logprobs) != t.length]
        if missing:
            raise ValueError(f"algo.kl_in_reward needs reference log-probs of every token; trajectory {missing[0]} "
                             f"has {len(flat[missing[0]].ref_logprobs)} for {flat[missing[0]].length} tokens")
        adv = adv + kl_reward_to_go(_padded([t.completion.logprobs for t in flat], T),
                                    _padded([t.ref_logprobs for t in flat], T), mask, ac.kl_in_reward)
    if ac.whiten:
        adv = whiten(adv, mask)
    if progress_bonus:
        adv = mrt_bonus_advantages(adv, [t.progress for t in flat], [t.episode_spans for t in flat], mask,
                                   ac.mrt.progress_coef)  # [B, T]
    for b, t in enumerate(flat):
        t.advantages = adv[b, :t.length].float().tolist()
