"""Pure progress arithmetic for MRT: per-episode progress, the adaptive Monte Carlo stopping rule, telemetry and
MRT-STaR selection. No Ray or torch.

Notation: J(c_j) is the accuracy of the forced answer after episodes 0..j; J(c_{-1}) is the forced answer with no
thinking at all. A `j` list holds [J(c_{-1}), J(c_0), ..., J(c_k)].
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mrt_ray.config import ProgressConfig

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def progress(j_values: Sequence[float]) -> list[float]:
    """r_prg_j = J(c_j) - J(c_{j-1}) for j = 0..k, from [J(c_{-1}), ..., J(c_k)] (length k + 2 -> k + 1)."""
    if len(j_values) == 0:
        raise ValueError("progress: j_values is empty; it needs at least J(c_-1)")
    return [b - a for a, b in zip(j_values[:-1], j_values[1:])]


def wilson_half_width(successes: int, trials: int, z: float = Z95) -> float:
    """Half-width of the Wilson score interval for a Bernoulli mean:
    z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/(4 n^2)), p = successes / n."""
    _check_counts(successes, trials)
    if trials == 0:
        raise ValueError("wilson_half_width: trials must be positive")
    n, p = trials, successes / trials
    return z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))


def _check_counts(successes: int, trials: int) -> None:
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got successes={successes}, trials={trials}")


def should_stop(successes: int, trials: int, cfg: ProgressConfig) -> bool:
    """Whether to stop sampling forced answers for one prefix after `trials` draws with `successes` correct.

    Always at cfg.samples. If cfg.adaptive, also once at least one round (cfg.round_size draws) is done and either all
    outcomes agree (all 0 or all 1) or the 95% Wilson score half-width is below cfg.half_width.
    """
    _check_counts(successes, trials)
    if trials >= cfg.samples:
        return True
    if not cfg.adaptive or trials < cfg.round_size:
        return False
    if successes in (0, trials):
        return True
    return wilson_half_width(successes, trials) < cfg.half_width


def plan_round(trials: int, cfg: ProgressConfig) -> int:
    """How many forced answers to draw next: min(round_size, samples - trials) when adaptive; not adaptive, all
    remaining samples - trials at once (rounds could not stop early). 0 once samples are reached."""
    if trials < 0:
        raise ValueError(f"plan_round: trials={trials} must be >= 0")
    left = max(0, cfg.samples - trials)
    return min(cfg.round_size, left) if cfg.adaptive else left


def mean_progress_by_episode(progress_lists: list[list[float]]) -> list[float]:
    """Element j: mean progress of episode j over the traces that have an episode j (lists may differ in length)."""
    width = max((len(p) for p in progress_lists), default=0)
    out = []
    for j in range(width):
        vals = [p[j] for p in progress_lists if len(p) > j]
        out.append(sum(vals) / len(vals))
    return out


def share_nonpositive(progress_lists: list[list[float]], eps: float = 1e-9) -> float:
    """Fraction of all episodes (over all traces) whose progress is <= eps; NaN when there are no episodes."""
    flat = [v for p in progress_lists for v in p]
    if not flat:
        return math.nan
    return sum(v <= eps for v in flat) / len(flat)


def select_star(traces: list[dict], keep: int | float) -> list[int]:
    """MRT-STaR selection: indices of the traces to fine-tune on, best first.

    Eligible: the final forced answer is correct, J(c_k) = j[-1] >= 0.5. Ranked by total progress j[-1] - j[0]
    (descending, compared at 1e-9), then by `tokens` (ascending), then by index. keep: an int is a count (>= 0);
    a float in (0, 1] is a fraction of the eligible traces, rounded up (1.0 keeps all eligible).
    """
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise ValueError(f"select_star: keep={keep!r} must be an int count or a float fraction")
    if isinstance(keep, int) and keep < 0:
        raise ValueError(f"select_star: keep={keep} must be >= 0")
    if isinstance(keep, float) and not 0.0 < keep <= 1.0:
        raise ValueError(f"select_star: keep={keep} as a fraction must be in (0, 1]")
    ranked = []
    for i, t in enumerate(traces):
        for key in ("j", "tokens"):
            if key not in t:
                raise ValueError(f"select_star: trace {i} has no '{key}' key (keys: {sorted(t)})")
        j = t["j"]
        if len(j) == 0:
            raise ValueError(f"select_star: trace {i} has an empty 'j' list")
        if j[-1] >= 0.5:
            # rounded so that equal progress computed from different J values ties exactly
            ranked.append((-round(j[-1] - j[0], 9), t["tokens"], i))
    ranked.sort()
    n = keep if isinstance(keep, int) else math.ceil(round(keep * len(ranked), 9))  # 0.07 * 100 -> 7, not 8
    return [i for _, _, i in ranked[:n]]
