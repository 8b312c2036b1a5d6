"""Progress arithmetic, the adaptive stopping rule, telemetry and MRT-STaR selection (hand-computed values)."""
from __future__ import annotations

import math

import pytest

from mrt_ray.config import ProgressConfig
from mrt_ray.progress.estimate import (
    mean_progress_by_episode,
    plan_round,
    progress,
    select_star,
    share_nonpositive,
    should_stop,
    wilson_half_width,
)


def test_progress_by_hand():
    # J(c_-1)=0.25, J(c_0)=0.5, J(c_1)=0.5, J(c_2)=1.0
    assert progress([0.25, 0.5, 0.5, 1.0]) == [0.25, 0.0, 0.5]
    assert progress([0.75, 0.25]) == [-0.5]
    assert progress([0.5]) == []  # no episodes
    assert sum(progress([0.125, 0.5, 0.375, 0.875])) == pytest.approx(0.875 - 0.125)  # telescopes
    with pytest.raises(ValueError, match="empty"):
        progress([])


@pytest.mark.parametrize(
    "s, n, half",
    # z = 1.959964: z / (1 + z^2/n) * sqrt(p(1-p)/n + z^2/(4n^2))
    # 2/4: 0.999795 * sqrt(0.0625 + 0.060023) = 0.349961 ; 4/8: 1.324137 * sqrt(0.03125 + 0.015006) = 0.284784
    # 6/8: 1.324137 * sqrt(0.0234375 + 0.015006) = 0.259623 ; 6/12: 1.484685 * sqrt(0.0208333 + 0.0066691) = 0.246218
    # 50/100: 1.887459 * sqrt(0.0025 + 0.0000960) = 0.096168 ; 0/4: 0.999795 * sqrt(0.060023) = 0.244945
    [(2, 4, 0.349961), (4, 8, 0.284784), (6, 8, 0.259623), (6, 12, 0.246218), (50, 100, 0.096168), (0, 4, 0.244945)],
)
def test_wilson_half_width(s, n, half):
    assert wilson_half_width(s, n) == pytest.approx(half, abs=2e-6)


def test_counts_validated():
    for s, n in [(3, 2), (-1, 2), (0, -1)]:
        with pytest.raises(ValueError, match="successes"):
            should_stop(s, n, ProgressConfig())
    with pytest.raises(ValueError, match="trials"):
        wilson_half_width(0, 0)


def test_should_stop_default_rounds():
    cfg = ProgressConfig(samples=8, round_size=4, half_width=0.25, adaptive=True)
    assert not should_stop(0, 0, cfg)
    assert not should_stop(2, 2, cfg)  # all equal, but the first round is not done
    assert should_stop(4, 4, cfg) and should_stop(0, 4, cfg)  # all 1 / all 0 after one round
    assert not should_stop(2, 4, cfg)  # half-width 0.350
    assert not should_stop(3, 4, cfg)  # 0.327
    assert should_stop(4, 8, cfg) and should_stop(1, 8, cfg)  # samples reached
    assert should_stop(3, 9, cfg)


def test_should_stop_half_width():
    cfg = ProgressConfig(samples=64, round_size=4, half_width=0.25, adaptive=True)
    assert not should_stop(4, 8, cfg)  # 0.2848
    assert not should_stop(6, 8, cfg)  # 0.2596
    assert should_stop(6, 12, cfg)  # 0.2462 < 0.25
    assert not should_stop(6, 12, ProgressConfig(samples=64, round_size=4, half_width=0.2))


def test_should_stop_not_adaptive():
    cfg = ProgressConfig(samples=8, round_size=4, adaptive=False)
    assert not should_stop(4, 4, cfg) and not should_stop(0, 4, cfg)
    assert not should_stop(0, 7, cfg)
    assert should_stop(8, 8, cfg) and should_stop(3, 8, cfg)


def test_plan_round():
    cfg = ProgressConfig(samples=10, round_size=4, adaptive=True)
    assert [plan_round(t, cfg) for t in (0, 4, 8, 10, 12)] == [4, 4, 2, 0, 0]
    assert plan_round(0, ProgressConfig(samples=10, round_size=4, adaptive=False)) == 10
    assert plan_round(3, ProgressConfig(samples=10, round_size=4, adaptive=False)) == 7
    with pytest.raises(ValueError, match="trials"):
        plan_round(-1, cfg)


def run_rounds(outcomes: list[int], cfg: ProgressConfig) -> int:
    """Draw outcomes round by round as an estimator would; returns how many were used."""
    trials = successes = 0
    while not should_stop(successes, trials, cfg):
        k = plan_round(trials, cfg)
        successes += sum(outcomes[trials:trials + k])
        trials += k
    return trials


def test_round_loop():
    cfg = ProgressConfig(samples=8, round_size=4, half_width=0.25)
    assert run_rounds([1] * 8, cfg) == 4
    assert run_rounds([0] * 8, cfg) == 4
    assert run_rounds([1, 0, 1, 1, 0, 0, 0, 0], cfg) == 8
    wide = ProgressConfig(samples=32, round_size=4, half_width=0.25)
    assert run_rounds([1, 0] * 16, wide) == 12  # 0.2848 at 8, 0.2462 at 12
    assert run_rounds([1, 0] * 16, ProgressConfig(samples=8, round_size=4, adaptive=False)) == 8


def test_mean_progress_by_episode():
    lists = [[0.5, 0.0], [0.25], [0.0, -0.25, 0.5]]
    assert mean_progress_by_episode(lists) == [0.25, -0.125, 0.5]
    assert mean_progress_by_episode([]) == []
    assert mean_progress_by_episode([[], [1.0]]) == [1.0]


def test_share_nonpositive():
    lists = [[0.5, 0.0], [0.25], [0.0, -0.25, 0.5]]
    assert share_nonpositive(lists) == 0.5  # 0.0, 0.0, -0.25 of 6
    assert share_nonpositive([[1e-12, 2e-3]]) == 0.5
    assert share_nonpositive([[1e-12, 2e-3]], eps=1e-2) == 1.0
    assert math.isnan(share_nonpositive([[], []]))


TRACES = [
    {"j": [0.0, 0.5, 1.0], "tokens": 30},  # 0: progress 1.0
    {"j": [0.5, 1.0], "tokens": 10},  # 1: 0.5
    {"j": [0.0, 0.25, 0.375], "tokens": 5},  # 2: final forced answer wrong -> never kept
    {"j": [0.25, 0.75], "tokens": 12},  # 3: 0.5, more tokens than 1
    {"j": [1.0, 1.0, 1.0], "tokens": 3},  # 4: 0.0
    {"j": [0.3, 0.5], "tokens": 8},  # 5: 0.2 (0.5 - 0.3 = 0.2)
    {"j": [0.6, 0.8], "tokens": 9},  # 6: 0.2 (0.8 - 0.6 = 0.20000000000000007): ties with 5, more tokens
    {"j": [0.0, 0.5], "tokens": 2},  # 7: J(c_k) = 0.5 counts as correct, progress 0.5, fewest tokens
]


def test_select_star_ranking():
    assert select_star(TRACES, 100) == [0, 7, 1, 3, 5, 6, 4]
    assert select_star(TRACES, 3) == [0, 7, 1]
    assert select_star(TRACES, 0) == []
    assert select_star(TRACES, 1.0) == [0, 7, 1, 3, 5, 6, 4]
    assert select_star(TRACES, 0.5) == [0, 7, 1, 3]  # ceil(0.5 * 7 eligible) = 4
    assert select_star(TRACES, 1) == [0]  # an int is a count, not a fraction
    assert select_star([], 0.5) == []


def test_select_star_fraction_rounding():
    traces = [{"j": [0.0, 1.0], "tokens": t} for t in range(100)]
    assert select_star(traces, 0.07) == list(range(7))  # 0.07 * 100 is 7.000000000000001 in floats
    assert select_star(traces, 0.001) == [0]  # rounded up


@pytest.mark.parametrize("keep", [True, -1, 0.0, 1.5, "all", None])
def test_select_star_bad_keep(keep):
    with pytest.raises(ValueError, match="keep"):
        select_star(TRACES, keep)


def test_select_star_bad_trace():
    with pytest.raises(ValueError, match="trace 1 has no 'tokens'"):
        select_star([{"j": [0.0, 1.0], "tokens": 1}, {"j": [0.0, 1.0]}], 1)
    with pytest.raises(ValueError, match="trace 0 has an empty 'j'"):
        select_star([{"j": [], "tokens": 1}], 1)
