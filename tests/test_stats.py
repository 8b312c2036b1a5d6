"""Seed statistics against hand-computed values."""
import math

import pytest

from mrt_ray.stats import mean_ci, paired_difference, t975


def test_t_quantiles():
    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(30) == 2.042
    assert 1.962 < t975(1000) < 1.963 and 2.01 < t975(40) < 2.03  # true values 1.9623 and 2.0211
    with pytest.raises(ValueError):
        t975(0)


def test_mean_ci_three_seeds():
    est = mean_ci([0.60, 0.62, 0.64])  # sd 0.02, se 0.02/sqrt(3), t(2) 4.303
    assert est.mean == pytest.approx(0.62)
    assert est.half_width == pytest.approx(4.303 * 0.02 / math.sqrt(3))
    assert est.text(".1f", 100) == "62.0 ± 5.0"
    one = mean_ci([0.5])
    assert math.isnan(one.half_width) and one.text() == "0.500"


def test_paired_difference_uses_common_seeds_only():
    a = {0: 0.7, 1: 0.72, 2: 0.69, 3: 0.9}
    b = {0: 0.6, 1: 0.65, 2: 0.61}
    d = paired_difference(a, b)
    assert d.n == 3 and d.mean == pytest.approx((0.1 + 0.07 + 0.08) / 3)
    with pytest.raises(ValueError, match="no common seeds"):
        paired_difference({0: 1.0}, {1: 1.0})
