"""Seed statistics for method comparisons: the mean over seeds with a 95% confidence interval (Student's t), and
paired differences on the same seeds. A claim that one method beats another rests on these, never on one run."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# two-sided 95% quantiles of Student's t, t_{0.975, df}, df = 1..30
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """t_{0.975, df}; beyond the table, the normal quantile with the first Cornish-Fisher correction."""
    if df < 1:
        raise ValueError(f"t975: df={df} must be >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    return z + (z ** 3 + z) / (4 * df)


@dataclass(frozen=True)
class Estimate:
    mean: float
    half_width: float  # 95% CI half-width; NaN with one value
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def text(self, fmt: str = ".3f", scale: float = 1.0) -> str:
        m = format(self.mean * scale, fmt)
        hw = format(self.half_width * scale, fmt.replace("+", ""))  # fmt "+.1f": a signed difference
        return m if math.isnan(self.half_width) else f"{m} ± {hw}"


def mean_ci(values: Sequence[float]) -> Estimate:
    """Mean of per-seed values and the half-width of its 95% t interval (sample std, n - 1 degrees of freedom)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_ci: no values")
    n = len(vals)
    mean = sum(vals) / n
    if n == 1:
        return Estimate(mean, math.nan, 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    return Estimate(mean, t975(n - 1) * sd / math.sqrt(n), n)


def paired_difference(a: dict[int, float], b: dict[int, float]) -> Estimate:
    """a - b on the seeds both have (dicts seed -> value): the mean difference with its 95% t interval."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError(f"paired_difference: no common seeds ({sorted(a)} vs {sorted(b)})")
    return mean_ci([a[s] - b[s] for s in seeds])
