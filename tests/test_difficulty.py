"""Per-difficulty evaluation (mrt_ray/eval/difficulty.py) against hand-computed tables, and the data loader's
difficulty field."""
from __future__ import annotations

import json

import pytest

from mrt_ray.eval.difficulty import TraceRecord, by_difficulty, tokens_after_first_right


def rec(prompt, difficulty, correct, tokens, thinking, j=(), cuts=()):
    return TraceRecord(prompt, difficulty, correct, tokens, thinking, list(j), list(cuts))


def test_tokens_after_the_first_right_episode():
    # J(c_-1)=0, J(c_0)=0.25 at 10 tokens, J(c_1)=0.75 at 30 (first right), J(c_2)=1.0 at 50; 60 thinking tokens
    r = rec(0, 2, True, 70, 60, [0.0, 0.25, 0.75, 1.0], [0, 10, 30, 50])
    assert tokens_after_first_right(r) == 30
    assert tokens_after_first_right(rec(0, 2, False, 70, 60, [0.0, 0.25, 0.0], [0, 10, 30])) == 0


def test_bucket_table_hand_computed():
    records = [
        # difficulty 2: two prompts x two samples; right after episode 0 and confirming afterwards
        rec(0, 2, True, 40, 30, [0.0, 1.0, 1.0, 1.0], [0, 6, 18, 30]),
        rec(0, 2, False, 50, 40, [0.0, 1.0, 0.0], [0, 6, 40]),  # a flip: right after episode 0, wrong at the end
        rec(1, 2, True, 20, 10, [0.0, 1.0], [0, 10]),
        rec(1, 2, True, 30, 20, [0.0, 0.0, 1.0], [0, 8, 20]),  # a repair: right only after episode 1
        # difficulty 6: one prompt, never right
        rec(2, 6, False, 90, 80, [0.0, 0.25], [0, 80]),
    ]
    easy, hard = by_difficulty(records)
    assert easy["difficulty"] == 2 and hard["difficulty"] == 6
    assert easy["prompts"] == 2 and easy["traces"] == 4
    assert easy["accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert easy["tokens_mean"] == pytest.approx((45 + 25) / 2)
    # after the first right episode: 24 + 34 + 0 + 0 tokens of 30 + 40 + 10 + 20 thinking tokens
    assert easy["share_after_first_correct"] == pytest.approx(58 / 100)
    assert easy["flip_rate"] == pytest.approx(1 / 4)  # 4 traces were right somewhere, 1 ended wrong
    # progress by episode: ep0 (1, 1, 1, 0) -> 0.75; ep1 (0, -1, 1) -> 0; ep2 (0) -> 0
    assert easy["progress_by_episode"] == pytest.approx([0.75, 0.0, 0.0])
    assert hard["share_after_first_correct"] == 0.0 and hard["flip_rate"] is None
    assert hard["accuracy_se"] == 0.0 and hard["tokens_se"] == 0.0


def test_buckets_sort_numbers_then_labels_and_unknown_last():
    rows = by_difficulty([rec(0, "Level 10", True, 5, 5), rec(1, "Level 2", True, 5, 5), rec(2, None, True, 5, 5),
                          rec(3, "Level 1", False, 5, 5)])
    assert [r["difficulty"] for r in rows] == ["Level 1", "Level 2", "Level 10", "unknown"]
    assert "share_after_first_correct" not in rows[0]  # no episode stage, no over-thinking measures


def test_data_rows_carry_their_difficulty(tmp_path):
    from mrt_ray.config import TaskConfig
    from mrt_ray.tasks.data import DataError, load_problems

    f = tmp_path / "math.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [{"problem": "1+1", "solution": "\\boxed{2}", "level": "Level 1"},
                                                    {"problem": "2+2", "solution": "\\boxed{4}", "level": 3}]))
    cfg = TaskConfig(name="file", question_key="problem", answer_key="solution", difficulty_key="level")
    assert [p.meta["difficulty"] for p in load_problems(cfg, str(f)).problems] == ["Level 1", 3]
    f.write_text(json.dumps({"problem": "1+1", "solution": "\\boxed{2}", "level": [1]}))
    with pytest.raises(DataError, match="difficulty 'level' must be a string or a number"):
        load_problems(cfg, str(f))
