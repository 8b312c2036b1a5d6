"""Reward functions against hand-computed values and every edge case (all wrong, all equal, one correct, truncated
samples), the registry, and property tests: no registered reward pays a wrong sample more than the worst correct one
of its group where the documented conditions hold, and the counterexamples where the papers' own settings allow it."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrt_ray.config import Config
from mrt_ray.rewards import (
    REWARDS,
    GroupOutcome,
    get_reward,
    length_penalty_rewards,
    outcome_rewards,
    overlong_penalty,
    register_reward,
)
from mrt_ray.rewards.shaping import generation_limit
from mrt_ray.tasks.budget import Budget


def _cfg(alpha: float = 0.0, max_new_tokens: int = 100, cache: int = 20, **algo) -> Config:
    cfg = Config()
    cfg.algo.alpha = alpha
    cfg.rollout.max_new_tokens = max_new_tokens
    cfg.algo.overlong_cache = cache
    for k, v in algo.items():
        setattr(cfg.algo, k, v)
    return cfg


def _o(correct, lengths, finished=None, budget: Budget | None = None) -> GroupOutcome:
    return GroupOutcome(correct, lengths, [True] * len(correct) if finished is None else finished, budget)


# ----------------------------------------------------------------------------------------------- outcome


def test_outcome() -> None:
    got = REWARDS["outcome"](_o([True, False, True, False], [5, 6, 7, 8], [True, True, False, False]), _cfg())
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
    assert REWARDS["length_penalty"](_o([True, True, True], [10, 30, 5], [True, True, False]), cfg) == got


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
        _o([True, True, False, True], [50, 90, 85, 100], [True, True, True, False]), _cfg(max_new_tokens=100, cache=20)
    )
    assert got == [1.0, 0.5, -0.25, -1.0]  # the last one is truncated: outcome 0, shaping -1


# ----------------------------------------------------------------------------------------------- registry


def test_register_reward() -> None:
    @register_reward("test_constant")
    def constant(o, cfg):  # noqa: ANN001, ANN202
        return [0.5] * len(o.correct)

    try:
        assert get_reward("test_constant") is constant
        assert REWARDS["test_constant"](_o([True, False], [1, 2]), _cfg()) == [0.5, 0.5]
        with pytest.raises(ValueError, match="already registered"):
            register_reward("test_constant")(constant)
    finally:
        del REWARDS["test_constant"]
    with pytest.raises(ValueError, match="algo.reward='nope' is not registered"):
        get_reward("nope")


def test_config_reward_defaults_are_registered() -> None:
    assert Config().algo.reward in REWARDS
    assert {"outcome", "length_penalty", "dapo_overlong", "l1_exact", "l1_max", "kimi_length", "shorter_better",
            "thinkprune"} <= set(REWARDS)


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
    o = _o(correct, lengths, finished)
    for name in ("outcome", "length_penalty", "dapo_overlong"):
        got = REWARDS[name](o, cfg)
        assert len(got) == len(group) and all(math.isfinite(r) for r in got), name
    lp = REWARDS["length_penalty"](o, cfg)
    assert all((1.0 - alpha <= r <= 1.0) if g else r == 0.0 for r, g in zip(lp, ok))
    assert REWARDS["outcome"](o, cfg) == [float(g) for g in ok]
    dapo = REWARDS["dapo_overlong"](o, cfg)
    assert all(-1.0 <= r <= 1.0 for r in dapo)
    assert all(r == float(g) for r, g, n in zip(dapo, ok, lengths) if n <= 100 - cache)


# ----------------------------------------------------------------------------------------------- the group outcome


def test_group_outcome_checks_its_shape() -> None:
    with pytest.raises(ValueError, match="2 correct flags, 3 lengths, 2 finished flags"):
        GroupOutcome([True, False], [3, 4, 5], [True, True])
    with pytest.raises(ValueError, match="negative completion length at sample 1"):
        GroupOutcome([True, False], [3, -4], [True, True])
    o = GroupOutcome([True, True, False], [1, 2, 3], [True, False, True])
    assert o.ok == [True, False, False] and o.lengths == (1, 2, 3) and o.budget is None
    with pytest.raises(ValueError, match="budget must be >= 1"):
        Budget(0)
    with pytest.raises(ValueError, match="budget kind 'most'"):
        Budget(5, "most")


# ----------------------------------------------------------------------------------------------- L1 / LCPO


def test_l1_exact_hand_computed() -> None:
    # target 50, alpha 0.01: correct 40, 50, 70 -> 1 - 0.1, 1, 1 - 0.2; wrong 45 -> -0.05; the truncated sample
    # (correct flag, no EOS) is wrong: 0 - 0.01 * 50
    cfg = _cfg(l1_alpha=0.01)
    o = _o([True, True, True, False, True], [40, 50, 70, 45, 100], [True, True, True, True, False], Budget(50))
    assert REWARDS["l1_exact"](o, cfg) == pytest.approx([0.9, 1.0, 0.8, -0.05, -0.5])


def test_l1_exact_edge_cases() -> None:
    cfg = _cfg(l1_alpha=0.01)
    b = Budget(50)
    # all wrong: still pulled to the target (the paper's eq. 1 penalises wrong samples' length too)
    assert REWARDS["l1_exact"](_o([False, False], [50, 60], budget=b), cfg) == pytest.approx([0.0, -0.1])
    # all equal lengths: the length term is the same for all, the outcome decides
    assert REWARDS["l1_exact"](_o([True, False], [30, 30], budget=b), cfg) == pytest.approx([0.8, -0.2])
    # one correct sample
    assert REWARDS["l1_exact"](_o([False, True, False], [10, 90, 50], budget=b), cfg) == pytest.approx(
        [-0.4, 0.6, 0.0])
    with pytest.raises(ValueError, match="needs a token budget"):
        REWARDS["l1_exact"](_o([True], [5]), cfg)
    with pytest.raises(ValueError, match="maximum budget; use algo.reward=l1_max"):
        REWARDS["l1_exact"](_o([True], [5], budget=Budget(50, "max")), cfg)


def test_l1_max_hand_computed() -> None:
    # max 50, alpha 0.01, delta 0.5: correct 20 -> 0.3 + 0.5; 50 -> 0.5; 80 -> -0.3 + 0.5; 110 -> clipped to 0;
    # wrong 10 -> 0; truncated 100 -> 0
    cfg = _cfg(l1_alpha=0.01, l1_delta=0.5)
    o = _o([True, True, True, True, False, True], [20, 50, 80, 110, 10, 100], [True] * 5 + [False],
           Budget(50, "max"))
    assert REWARDS["l1_max"](o, cfg) == pytest.approx([0.8, 0.5, 0.2, 0.0, 0.0, 0.0])
    # far under the budget: clipped to 1
    assert REWARDS["l1_max"](_o([True], [0], budget=Budget(50, "max")), _cfg(l1_alpha=0.02)) == [1.0]


def test_l1_max_edge_cases() -> None:
    cfg = _cfg(l1_alpha=0.01, l1_delta=0.5)
    b = Budget(50, "max")
    assert REWARDS["l1_max"](_o([False, False], [5, 500], budget=b), cfg) == [0.0, 0.0]  # all wrong: 0
    assert REWARDS["l1_max"](_o([True, True], [40, 40], budget=b), cfg) == pytest.approx([0.6, 0.6])  # all equal
    # a prompt with an exact budget gets L1-Exact (the paper's dual objective)
    exact = _o([True, False], [40, 45], budget=Budget(50))
    assert REWARDS["l1_max"](exact, cfg) == REWARDS["l1_exact"](exact, cfg)
    with pytest.raises(ValueError, match="needs a token budget"):
        REWARDS["l1_max"](_o([True], [5]), cfg)


# ----------------------------------------------------------------------------------------------- Kimi 1.5


def test_kimi_length_hand_computed() -> None:
    # min 10, max 50: lambda = 0.5, 0.25, 0, -0.5; correct gets lambda, wrong min(0, lambda); plus the 0/1 outcome
    o = _o([True, False, True, False], [10, 20, 30, 50])
    assert REWARDS["kimi_length"](o, _cfg(kimi_coef=1.0)) == pytest.approx([1.5, 0.0, 1.0, -0.5])
    assert REWARDS["kimi_length"](o, _cfg(kimi_coef=0.5)) == pytest.approx([1.25, 0.0, 1.0, -0.25])
    assert REWARDS["kimi_length"](o, _cfg(kimi_coef=0.0)) == [1.0, 0.0, 1.0, 0.0]


def test_kimi_length_edge_cases() -> None:
    cfg = _cfg(kimi_coef=1.0)
    assert REWARDS["kimi_length"](_o([True, False], [7, 7]), cfg) == [1.0, 0.0]  # all equal: length reward 0
    assert REWARDS["kimi_length"](_o([False] * 3, [10, 20, 30]), cfg) == pytest.approx([0.0, 0.0, -0.5])  # all wrong
    assert REWARDS["kimi_length"](_o([False, True], [10, 30]), cfg) == pytest.approx([0.0, 0.5])  # one correct
    # a truncated sample is wrong, and its length counts in min/max
    assert REWARDS["kimi_length"](_o([True, True], [100, 20], [False, True]), cfg) == pytest.approx([-0.5, 1.5])


# ----------------------------------------------------------------------------------------------- ShorterBetter


def test_shorter_better_hand_computed() -> None:
    # SOL = 30 (shortest correct): 2 - 0.01 * |len - 30|, wrong samples without the 2
    cfg = _cfg(sb_alpha=2.0, sb_beta=0.01)
    assert REWARDS["shorter_better"](_o([True, True, False, False], [30, 50, 20, 80]), cfg) == pytest.approx(
        [2.0, 1.8, -0.1, -0.5])


def test_shorter_better_edge_cases() -> None:
    cfg = _cfg(sb_alpha=2.0, sb_beta=0.01)
    # none correct: SOL is the mean length of all samples (20)
    assert REWARDS["shorter_better"](_o([False] * 3, [10, 20, 30]), cfg) == pytest.approx([-0.1, 0.0, -0.1])
    # one correct
    assert REWARDS["shorter_better"](_o([False, True, False], [10, 40, 90]), cfg) == pytest.approx([-0.3, 2.0, -0.5])
    # a truncated sample neither counts as correct nor sets SOL
    assert REWARDS["shorter_better"](_o([True, True], [10, 40], [False, True]), cfg) == pytest.approx([-0.3, 2.0])
    assert REWARDS["shorter_better"](_o([True, True], [25, 25]), cfg) == [2.0, 2.0]  # all equal


# ----------------------------------------------------------------------------------------------- ThinkPrune


def test_thinkprune() -> None:
    cfg = _cfg(token_limit=50)
    o = _o([True, True, False, True, True], [40, 50, 30, 51, 20], [True, True, True, True, False])
    assert REWARDS["thinkprune"](o, cfg) == [1.0, 1.0, 0.0, 0.0, 0.0]  # over the limit or truncated: 0
    assert REWARDS["thinkprune"](_o([False, False], [5, 60]), cfg) == [0.0, 0.0]  # all wrong
    with pytest.raises(ValueError, match="needs algo.token_limit > 0"):
        REWARDS["thinkprune"](o, _cfg(token_limit=0))


def test_generation_limit() -> None:
    assert generation_limit(_cfg(max_new_tokens=100)) == 100
    assert generation_limit(_cfg(max_new_tokens=100, token_limit=60)) == 60
    assert generation_limit(_cfg(max_new_tokens=100, token_limit=150)) == 100


# ----------------------------------------------------------------------------------------------- failing fast

BUILTIN = {"outcome", "length_penalty", "dapo_overlong", "l1_exact", "l1_max", "kimi_length", "shorter_better",
           "thinkprune"}


def test_every_registered_reward_is_checked_for_failing_fast() -> None:
    assert {k for k in REWARDS if "test" not in k} == BUILTIN  # a new reward joins BUILTIN and the test below


@settings(max_examples=300, deadline=None)
@given(group=st.lists(st.tuples(st.booleans(), st.integers(0, 200), st.booleans()), min_size=2, max_size=12),
       target=st.integers(1, 200), kind=st.sampled_from(["exact", "max"]), u=st.floats(0.0, 1.0),
       alpha=st.floats(0.0, 0.999), cache=st.integers(0, 200), limit=st.integers(1, 200))
def test_no_reward_pays_a_wrong_sample_more_than_a_correct_one(group, target, kind, u, alpha, cache, limit) -> None:
    """Within the documented conditions (max_new_tokens = 200): l1_alpha * 200 <= 1, kimi_coef <= 2,
    sb_beta * 200 <= sb_alpha; every length within the sampling cap."""
    correct, lengths, finished = (list(x) for x in zip(*group))
    cfg = _cfg(alpha=alpha, max_new_tokens=200, cache=cache, l1_alpha=u / 200, l1_delta=u, kimi_coef=2 * u,
               sb_alpha=2.0, sb_beta=2.0 * u / 200, token_limit=limit)
    o = _o(correct, lengths, finished, Budget(target, kind))
    for name in BUILTIN:
        if name == "l1_exact" and kind == "max":
            continue
        r = REWARDS[name](o, cfg)
        right = [x for x, g in zip(r, o.ok) if g]
        wrong = [x for x, g in zip(r, o.ok) if not g]
        if right and wrong:
            assert max(wrong) <= min(right) + 1e-12, (name, r, o)


def test_where_the_papers_settings_pay_a_wrong_sample_more() -> None:
    # L1 at the paper's alpha 0.0003 and 4096-token cap: a correct sample 3996 tokens off its 100-token target earns
    # 1 - 1.1988 < 0, a wrong one on target earns 0 (it happens when alpha * (|d_correct| - |d_wrong|) > 1)
    got = REWARDS["l1_exact"](_o([True, False], [4096, 100], budget=Budget(100)), _cfg(l1_alpha=0.0003))
    assert got == pytest.approx([-0.1988, 0.0]) and got[1] > got[0]
    # ShorterBetter at the paper's alpha 2, beta 0.001 and 6000-token cap: correct at 5000 with SOL 500 earns -2.5
    got = REWARDS["shorter_better"](_o([True, True, False], [500, 5000, 500]), _cfg(sb_alpha=2.0, sb_beta=0.001))
    assert got == pytest.approx([2.0, -2.5, 0.0]) and got[2] > got[1]
    # Kimi with a weight above 2: the longest correct sample earns 1 - 0.5 * 3 < 0, the shortest wrong one 0
    got = REWARDS["kimi_length"](_o([False, True], [10, 50]), _cfg(kimi_coef=3.0))
    assert got == pytest.approx([0.0, -0.5])
