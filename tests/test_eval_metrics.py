"""Evaluation metrics, regret, budget-forcing prompts and plots against hand-computed values."""
from __future__ import annotations

import math
import random

import pytest

from mrt_ray.eval.forcing import BudgetPlan, cut_thinking, extend_prompt, force_answer_prompt
from mrt_ray.eval.metrics import (
    accuracy_per_1k_tokens,
    maj_at_k,
    majority_at_equal_tokens,
    majority_vote,
    pass_at_1,
    token_stats,
    tokens_to_reach,
    truncation_rate,
)
from mrt_ray.eval.regret import normalized_regret, regret_curve
from mrt_ray.tasks.embedded import FORCE_TEXT, THINK_CLOSE, make_problem, make_trace

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def exact(answer: str, gold: str) -> bool:
    return answer == gold


# ---- regret -------------------------------------------------------------------------------------------------------

def test_regret_single_point_at_budget():
    # J: (0,0) -> (100, 0.5); area = 0.5 * 100 * 0.5 = 25; 1 - 25/100
    assert normalized_regret([100], [0.5], 100) == pytest.approx(0.75)


def test_regret_budget_before_first_point():
    # J(50) = 0.25; area = 0.5 * 50 * 0.25 = 6.25; 1 - 6.25/50
    assert normalized_regret([100], [0.5], 50) == pytest.approx(0.875)


def test_regret_budget_past_last_point_holds_constant():
    # area = 25 + 0.5 * 100 = 75; 1 - 75/200
    assert normalized_regret([100], [0.5], 200) == pytest.approx(0.625)


def test_regret_several_points_and_cut_between():
    tokens, acc = [50, 100, 200], [0.4, 0.6, 0.7]
    # area to 200 = 10 + 25 + 65 = 100
    assert normalized_regret(tokens, acc, 200) == pytest.approx(0.5)
    # area to 150: J(150) = 0.65; 10 + 25 + 50 * 0.625 = 66.25
    assert normalized_regret(tokens, acc, 150) == pytest.approx(1 - 66.25 / 150)
    # point exactly at the budget: area to 100 = 35
    assert normalized_regret(tokens, acc, 100) == pytest.approx(0.65)


def test_regret_unsorted_and_duplicates_averaged():
    assert normalized_regret([200, 50, 100], [0.7, 0.4, 0.6], 200) == pytest.approx(0.5)
    # two measurements at 100 tokens (0.4 and 0.6) average to 0.5
    assert normalized_regret([100, 100], [0.4, 0.6], 100) == pytest.approx(0.75)


def test_regret_point_at_zero_tokens_replaces_anchor():
    assert normalized_regret([0], [0.5], 10) == pytest.approx(0.5)


def test_regret_curve_matches_pointwise():
    assert regret_curve([100], [0.5], [50, 100, 200]) == pytest.approx([0.875, 0.75, 0.625])


@pytest.mark.parametrize("tokens, acc, budget, match", [
    ([], [], 10, "at least one"),
    ([-1], [0.5], 10, r"tokens\[0\]"),
    ([10, 20], [0.5, 1.5], 10, r"accuracy\[1\]"),
    ([10], [0.5], 0, "budget"),
    ([10], [0.5, 0.6], 10, "differ in length"),
])
def test_regret_rejects_bad_input(tokens, acc, budget, match):
    with pytest.raises(ValueError, match=match):
        normalized_regret(tokens, acc, budget)


# ---- metrics ------------------------------------------------------------------------------------------------------

def test_pass_at_1_mean_and_stderr():
    mean, se = pass_at_1([[True, False], [True, True], [False, False, False, True]])
    # per-prompt means 0.5, 1.0, 0.25 -> mean 0.58333; sample std = 0.381881; / sqrt(3)
    assert mean == pytest.approx(7 / 12)
    assert se == pytest.approx(0.3818813079 / math.sqrt(3))
    assert math.isnan(pass_at_1([[True, False]])[1])
    with pytest.raises(ValueError, match="prompt 1"):
        pass_at_1([[True], []])


def test_majority_vote_tie_goes_to_first_occurrence():
    assert majority_vote(["3", "5", "5", "3"]) == "3"
    assert majority_vote(["3", "5", " 5", None]) == "5"
    assert majority_vote([None, ""]) is None


def test_maj_at_k():
    answers = [["1", "2", "2", "9"], ["4", "3", "3", "3"], [None, None, "7", "7"]]
    golds = ["2", "4", "7"]
    # k=1: only prompt 1 ("4") is right; k=2: ties go to "1" (wrong) and "4" (right), prompt 2 has no vote;
    # k=3: prompts 0 ("2") and 2 ("7") are right, prompt 1 votes "3"
    assert maj_at_k(answers, golds, 1, exact) == pytest.approx(1 / 3)
    assert maj_at_k(answers, golds, 2, exact) == pytest.approx(1 / 3)
    assert maj_at_k(answers, golds, 3, exact) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="prompt 0 has 4 samples"):
        maj_at_k(answers, golds, 5, exact)


def test_token_stats_and_truncation():
    stats = token_stats([10, 20, 30, 40, 100])
    assert stats == pytest.approx({"mean": 40.0, "p50": 30.0, "p90": 76.0})  # p90: 40 + 0.6 * 60
    assert truncation_rate([True, False, True, True]) == pytest.approx(0.25)


def test_tokens_to_reach_interpolates():
    tokens, acc = [100, 50, 200], [0.6, 0.4, 0.7]
    assert tokens_to_reach(tokens, acc, 0.2) == pytest.approx(25.0)  # on (0,0)-(50,0.4)
    assert tokens_to_reach(tokens, acc, 0.5) == pytest.approx(75.0)  # on (50,0.4)-(100,0.6)
    assert tokens_to_reach(tokens, acc, 0.7) == pytest.approx(200.0)
    assert tokens_to_reach(tokens, acc, 0.0) == 0.0
    assert tokens_to_reach(tokens, acc, 0.8) is None
    # non-monotone curve: the first crossing counts
    assert tokens_to_reach([10, 20, 30], [0.8, 0.2, 0.9], 0.5) == pytest.approx(6.25)


def test_accuracy_per_1k_tokens():
    assert accuracy_per_1k_tokens(0.5, 250) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="mean_tokens"):
        accuracy_per_1k_tokens(0.5, 0)


def test_majority_at_equal_tokens():
    samples = [
        [("5", 30), ("6", 32), ("5", 20), ("6", 32)],  # m=3: "5" x2 -> correct
        [("1", 32), ("2", 32), ("3", 32), ("2", 10)],  # m=3: tie -> "1" -> wrong
    ]
    out = majority_at_equal_tokens(samples, ["5", "2"], budget_short=32, budget_long=100, grader=exact)
    assert out.m == 3  # floor(100 / 32)
    assert out.accuracy == pytest.approx(0.5)
    assert out.mean_total_tokens == pytest.approx((82 + 96) / 2)
    with pytest.raises(ValueError, match="budget_short"):
        majority_at_equal_tokens(samples, ["5", "2"], budget_short=200, budget_long=100, grader=exact)
    with pytest.raises(ValueError, match="prompt 0 has 4 samples"):
        majority_at_equal_tokens(samples, ["5", "2"], budget_short=16, budget_long=100, grader=exact)


# ---- budget forcing -----------------------------------------------------------------------------------------------

CLOSE = [90, 91]  # e.g. the ids of "\n</think>"
FORCE = [90, 91, 92]
WAIT = [80, 81]


def test_cut_thinking_before_and_after_close():
    completion = [1, 2, 3, 4, *CLOSE, 7, 8]
    assert cut_thinking(completion, 3, CLOSE) == [1, 2, 3]  # budget ends before the close tag
    assert cut_thinking(completion, 4, CLOSE) == [1, 2, 3, 4]
    assert cut_thinking(completion, 5, CLOSE) == [1, 2, 3, 4]  # the close tag starts inside the budget
    assert cut_thinking(completion, 50, CLOSE) == [1, 2, 3, 4]
    assert cut_thinking([1, 90, 2, 90, 91], 10, CLOSE) == [1, 90, 2]  # only the full sequence counts
    assert cut_thinking([1, 2, 3], 10, CLOSE) == [1, 2, 3]  # no close tag (truncated trace)
    assert cut_thinking(completion, 0, CLOSE) == []


def test_force_and_extend_prompts():
    prompt, completion = [10, 11], [1, 2, 3, *CLOSE, 7, 8]
    thinking = cut_thinking(completion, 2, CLOSE)
    assert force_answer_prompt(prompt, thinking, FORCE) == [10, 11, 1, 2, 90, 91, 92]
    # extension strips the close tag and the answer, then appends the marker
    assert extend_prompt(prompt, completion, WAIT, CLOSE) == [10, 11, 1, 2, 3, 80, 81]
    assert extend_prompt(prompt, [1, 2, 3], WAIT, CLOSE) == [10, 11, 1, 2, 3, 80, 81]
    with pytest.raises(ValueError, match="continue_ids"):
        extend_prompt(prompt, completion, [], CLOSE)


def test_forcing_on_an_embedded_trace_is_in_distribution():
    def ids(s: str) -> list[int]:  # a character-level tokenizer
        return [ord(c) for c in s]

    def text(seq: list[int]) -> str:
        return "".join(map(chr, seq))

    problem = make_problem(0, "eval", 3)
    trace = make_trace(problem, "verbose", random.Random(0))
    close = ids("\n" + THINK_CLOSE)
    thinking = cut_thinking(ids(trace), 10_000, close)
    forced = force_answer_prompt(ids(problem.prompt), thinking, ids(FORCE_TEXT))
    assert text(forced) + problem.answer == problem.prompt + trace  # the whole trace, forced: exactly the original
    extended = text(extend_prompt(ids(problem.prompt), ids(trace), ids("\n\nWait"), close))
    assert extended == problem.prompt + trace[:trace.index(FORCE_TEXT)] + "\n\nWait"


def test_budget_plan():
    plan = BudgetPlan.build([16, 40, 41, 42, 64, 100], natural_length=40, marker_len=2)
    assert plan.cuts == [16, 40, 41, 42]  # 41, 42 cannot fit the marker plus a new token: whole trace kept
    assert plan.extensions == [64, 100]
    assert [(s.keep, s.new_tokens) for s in plan.steps] == [(16, 0), (40, 0), (40, 0), (40, 0), (40, 22), (40, 58)]
    assert plan.max_new_tokens == 58
    assert BudgetPlan.build([8], natural_length=40, marker_len=2).max_new_tokens == 0
    with pytest.raises(ValueError, match=r"budgets\[1\]"):
        BudgetPlan.build([8, 0], natural_length=40, marker_len=2)


# ---- plots --------------------------------------------------------------------------------------------------------

def test_plots_write_png(tmp_path):
    from mrt_ray.eval import plots

    acc = {"grpo": [(64, 0.5, 0.05), (16, 0.2, 0.04), (128, 0.6, 0.05)], "mrt": [(16, 0.3, 0.04), (64, 0.6, 0.05)]}
    paths = [
        plots.plot_accuracy_vs_tokens(acc, tmp_path / "a" / "acc.png"),
        plots.plot_regret_vs_budget({"grpo": [(16, 0.9), (64, 0.7)], "mrt": [(16, 0.85), (64, 0.6)]},
                                    tmp_path / "regret.png"),
        plots.plot_j_by_episode({"grpo": [0.2, 0.5, 0.5], "mrt": [0.3, 0.6, 0.7, 0.7]}, tmp_path / "j.png"),
        plots.plot_pareto([("alpha=0.05", 120, 0.62, 0.03, 4), ("alpha=0.4", 60, 0.5, 0.03, 3)],
                          tmp_path / "pareto.png"),
        plots.plot_used_vs_target({"l1": [(16, 20.5, 1.0), (64, 60.0, 2.0)], "grpo": [(16, 70.0, 3.0)]},
                                  tmp_path / "used.png"),
        plots.plot_accuracy_vs_tokens(acc, tmp_path / "acc_target.png", "Accuracy at each budget", "target tokens"),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="'mrt' has no points"):
        plots.plot_regret_vs_budget({"grpo": [(16, 0.9)], "mrt": []}, tmp_path / "bad.png")
