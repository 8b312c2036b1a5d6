"""Reward functions against hand-computed values, the registry, and property tests."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrt_ray.config import Config
from mrt_ray.rewards import (
    REWARDS,
    get_reward,
    length_penalty_rewards,
    outcome_rewards,
    overlong_penalty,
    register_reward,
)


def _cfg(alpha: float = 0.0, max_new_tokens: int = 100, cache: int = 20) -> Config:
    cfg = Config()
    cfg.algo.alpha = alpha
    cfg.rollout.max_new_tokens = max_new_tokens
    cfg.algo.overlong_cache = cache
    return cfg


# ----------------------------------------------------------------------------------------------- outcome


def test_outcome() -> None:
    got = REWARDS["outcome"]([True, False, True, False], [5, 6, 7, 8], [True, True, False, False], _cfg())
    assert got == [1.0, 0.0, 0.0, 0.0]  # the third is correct but truncated: incorrect


# ----------------------------------------------------------------------------------------------- length penalty


def test_length_penalty_hand_computed() -> None:
    # correct lengths 10, 20, 30: mu = 20, sigma = sqrt(200/3) = 8.1649658, z = -1.2247449, 0, +1.2247449
    # sigmoid(z) = 0.2270205, 0.5, 0.7729795 -> 1 - 0.2 * sigmoid(z)
    got = length_penalty_rewards([True, True, False, True], [10, 20, 30, 30], alpha=0.2)
    assert got == pytest.approx([0.9545795, 0.9, 0.0, 0.8454205], abs=1e-6)


def test_length_penalty_no_correct_sample() -> None:
    assert length_penalty_rewards([False, False, False], [3, 4, 5], alpha=0.3) == [0.0, 0.0, 0.0]


def test_length_penalty_lone_correct_sample() -> None:
    assert length_penalty_rewards([False, True, False], [3, 40, 5], alpha=0.1) == pytest.approx([0.0, 0.95, 0.0])


def test_length_penalty_unfinished_counts_incorrect() -> None:
    # the truncated sample (length 5) is excluded from mu/sigma: correct lengths 10, 30 -> mu 20, sigma 10, z = -1, +1
    # 1 - 0.5 * sigmoid(-1) = 1 - 0.5 * 0.2689414 = 0.8655293 ; 1 - 0.5 * 0.7310586 = 0.6344707
    got = length_penalty_rewards([True, True, True], [10, 30, 5], alpha=0.5, finished=[True, True, False])
    assert got == pytest.approx([0.8655293, 0.6344707, 0.0], abs=1e-6)
    cfg = _cfg(alpha=0.5)
    assert REWARDS["length_penalty"]([True, True, True], [10, 30, 5], [True, True, False], cfg) == got


def test_length_penalty_equal_lengths() -> None:
    # sigma = 0: z = 0 / 1e-7 = 0 for every correct sample -> 1 - alpha / 2
    got = length_penalty_rewards([True, True, False, True], [7, 7, 3, 7], alpha=0.4)
    assert got == pytest.approx([0.8, 0.8, 0.0, 0.8])


def test_length_penalty_alpha_zero_is_outcome() -> None:
    correct, lengths, finished = [True, False, True, True, False], [4, 9, 12, 30, 1], [True, True, True, False, False]
    assert length_penalty_rewards(correct, lengths, 0.0, finished) == outcome_rewards(correct, finished)


def test_length_penalty_extreme_lengths_stay_in_range() -> None:
    got = length_penalty_rewards([True, True, True], [0, 1, 10**9], alpha=0.3)
    assert all(math.isfinite(r) and 0.7 <= r <= 1.0 for r in got)
    assert got[0] > got[1] > got[2]  # shorter correct answers earn more


def test_length_penalty_bad_input() -> None:
    with pytest.raises(ValueError, match=r"alpha=1.5 must be in \[0, 1\)"):
        length_penalty_rewards([True], [3], alpha=1.5)
    with pytest.raises(ValueError, match="2 correct flags, 3 lengths"):
        length_penalty_rewards([True, False], [3, 4, 5], alpha=0.1)
    with pytest.raises(ValueError, match="negative completion length at sample 1"):
        length_penalty_rewards([True, False], [3, -4], alpha=0.1)


# ----------------------------------------------------------------------------------------------- DAPO overlong


def test_overlong_penalty_hand_computed() -> None:
    # L_max 100, L_cache 20: 0 up to 80, then (80 - len) / 20, -1 beyond 100
    assert overlong_penalty([50, 80, 85, 90, 100, 120], 100, 20) == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    assert overlong_penalty([100, 101], 100, 0) == [0.0, -1.0]  # no soft zone
    with pytest.raises(ValueError, match="overlong_cache"):
        overlong_penalty([1], 100, 200)


def test_dapo_overlong() -> None:
    got = REWARDS["dapo_overlong"](
        [True, True, False, True], [50, 90, 85, 100], [True, True, True, False], _cfg(max_new_tokens=100, cache=20)
    )
    assert got == [1.0, 0.5, -0.25, -1.0]  # the last one is truncated: outcome 0, shaping -1


# ----------------------------------------------------------------------------------------------- registry


def test_register_reward() -> None:
    @register_reward("test_constant")
    def constant(correct, lengths, finished, cfg):  # noqa: ANN001, ANN202
        return [0.5] * len(correct)

    try:
        assert get_reward("test_constant") is constant
        assert REWARDS["test_constant"]([True, False], [1, 2], [True, True], _cfg()) == [0.5, 0.5]
        with pytest.raises(ValueError, match="already registered"):
            register_reward("test_constant")(constant)
    finally:
        del REWARDS["test_constant"]
    with pytest.raises(ValueError, match="algo.reward='nope' is not registered"):
        get_reward("nope")


def test_config_reward_defaults_are_registered() -> None:
    assert Config().algo.reward in REWARDS
    assert {"outcome", "length_penalty", "dapo_overlong"} <= set(REWARDS)


# ----------------------------------------------------------------------------------------------- properties

_groups = st.lists(
    st.tuples(st.booleans(), st.integers(min_value=0, max_value=10**6), st.booleans()), min_size=1, max_size=16
)


@settings(max_examples=200, deadline=None)
@given(group=_groups, alpha=st.floats(min_value=0.0, max_value=0.999), cache=st.integers(0, 100))
def test_rewards_properties(group: list[tuple[bool, int, bool]], alpha: float, cache: int) -> None:
    correct, lengths, finished = (list(x) for x in zip(*group))
    cfg = _cfg(alpha=alpha, max_new_tokens=100, cache=cache)
    ok = [c and f for c, f in zip(correct, finished)]
    for name, fn in (("outcome", REWARDS["outcome"]), ("length_penalty", REWARDS["length_penalty"]),
                     ("dapo_overlong", REWARDS["dapo_overlong"])):
        got = fn(correct, lengths, finished, cfg)
        assert len(got) == len(group) and all(math.isfinite(r) for r in got), name
    lp = REWARDS["length_penalty"](correct, lengths, finished, cfg)
    assert all((1.0 - alpha <= r <= 1.0) if g else r == 0.0 for r, g in zip(lp, ok))
    assert REWARDS["outcome"](correct, lengths, finished, cfg) == [float(g) for g in ok]
    dapo = REWARDS["dapo_overlong"](correct, lengths, finished, cfg)
    assert all(-1.0 <= r <= 1.0 for r in dapo)
    assert all(r == float(g) for r, g, n in zip(dapo, ok, lengths) if n <= 100 - cache)
