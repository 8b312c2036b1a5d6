"""Step 6 of the data path: per-token advantages for every trajectory, from the registered estimator
(`algo.advantage`) and, for MRT's bonus form, each episode's progress."""
from __future__ import annotations

import torch

from mrt_ray.algos.advantages import ADVANTAGES, mrt_bonus_advantages, whiten
from mrt_ray.config import Config
from mrt_ray.trajectory import Trajectory


def uniform_groups(groups: list[list[Trajectory]]) -> list[int]:
    """Indices of groups whose rewards are all equal (no learning signal under a group baseline)."""
    return [i for i, g in enumerate(groups) if max(t.reward for t in g) - min(t.reward for t in g) < 1e-12]


def assign_advantages(groups: list[list[Trajectory]], cfg: Config) -> None:
    rewards = torch.tensor([[t.reward for t in g] for g in groups], dtype=torch.float64)  # [G, n]
    seq_adv = ADVANTAGES[cfg.algo.advantage](rewards).reshape(-1)  # [G*n]
    flat = [t for g in groups for t in g]
    if cfg.algo.whiten:
        seq_adv = whiten(seq_adv)
    T = max(t.length for t in flat)
    mask = torch.zeros(len(flat), T)  # [B, T] completion tokens
    for b, t in enumerate(flat):
        mask[b, :t.length] = 1
    if cfg.algo.name == "mrt" and cfg.algo.mrt.variant == "bonus":
        adv = mrt_bonus_advantages(seq_adv.float(), [t.progress for t in flat], [t.episode_spans for t in flat],
                                   mask, cfg.algo.mrt.progress_coef)  # [B, T]
    else:
        adv = seq_adv.float()[:, None] * mask  # [B, T]
    for b, t in enumerate(flat):
        t.advantages = adv[b, :t.length].tolist()
