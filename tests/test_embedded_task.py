"""The embedded chain-arithmetic task: traces end with the right answer and grade True, the running value stays in
range, problems are pure functions of (seed, stream, index), the repair style makes real progress, and the
bootstrap's character tokenizer round-trips every trace (also after save_pretrained + AutoTokenizer)."""
from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mrt_ray.bootstrap import SPECIALS, build_tokenizer
from mrt_ray.tasks import Problem
from mrt_ray.tasks.embedded import (
    ANSWER_MARK,
    FORCE_TEXT,
    STYLES,
    THINK_CLOSE,
    grade,
    make_problem,
    make_trace,
)

# (min_terms, max_terms, max_operand, max_value): the default shape and others with max_value >= 2*max_operand - 1
SHAPES = [(2, 8, 9, 29), (2, 6, 9, 19), (1, 3, 5, 9), (4, 10, 3, 5), (2, 8, 9, 17)]


def _problems(n: int = 150) -> list[Problem]:
    return [make_problem(seed, stream, i, *shape) for shape in SHAPES for seed in (0, 7) for stream in ("train", "eval")
            for i in range(n // 4)]


def _evaluate(prompt: str) -> int:
    """Independent evaluation of the prompt's expression, e.g. "3+5-2=?\\n<think>\\n" -> 6."""
    expr = prompt.split("=?", 1)[0]
    assert re.fullmatch(r"\d+([+-]\d+)*", expr), prompt
    return sum(int(t) for t in re.findall(r"[+-]?\d+", expr))


def _running_values(p: Problem) -> list[int]:
    values = [p.meta["terms"][0]]
    for op, t in zip(p.meta["ops"], p.meta["terms"][1:]):
        values.append(values[-1] + t if op == "+" else values[-1] - t)
    return values


class _FixedRng:
    """Stands in for random.Random in make_trace: the repair style's slip lands on line `k`."""

    def __init__(self, k: int):
        self.k = k

    def randrange(self, n: int) -> int:
        assert 0 <= self.k < n
        return self.k


# ------------------------------------------------------------------------------------------------ traces

P368 = Problem(id="t", prompt="3+5-2=?\n<think>\n", answer="6",
               meta={"terms": [3, 5, 2], "ops": ["+", "-"], "expr": "3+5-2", "difficulty": 3, "difficulty_frac": 0.0})


class _ConfirmRng:
    """make_trace's confirm style: solution `per_line` operations per line, then `3 - 2*frac + u` confirmations."""

    def __init__(self, per_line: int, u: float):
        self.per_line, self.u = per_line, u

    def choice(self, options):
        assert self.per_line in options
        return self.per_line

    def random(self) -> float:
        return self.u


@pytest.mark.parametrize(("style", "rng", "thinking"), [
    ("concise", None, "3+5-2=6"),
    ("stepwise", None, "3+5=8\n8-2=6"),
    ("verbose", None, "3+5=8\n8-2=6\n\nWait, let me check.\n3+5=8\n8-2=6\n\nWait, check again.\n3+5=8\n8-2=6"),
    # easiest problem (frac 0): three confirmations, each restating the expression and the value found
    ("confirm", _ConfirmRng(1, 0.5),
     "3+5=8\n8-2=6\n\nWait, check: 3+5-2=6\n\nBut wait, 3+5-2=6\n\nWait, again: 3+5-2=6"),
    ("confirm", _ConfirmRng(2, 0.0), "3+5-2=6\n\nWait, check: 3+5-2=6\n\nBut wait, 3+5-2=6\n\nWait, again: 3+5-2=6"),
    # a concise attempt (one line for two operations) with a slip: 6 is even -> 5; then the stepwise redo
    ("repair", _FixedRng(0), "3+5-2=5\n\nWait, that step looks wrong.\n3+5=8\n8-2=6"),
    ("recheck", None, "3+5-2=6\n\nWait, let me redo it step by step.\n3+5=8\n8-2=6"),
])
def test_trace_hand_computed(style: str, rng, thinking: str) -> None:
    assert make_trace(P368, style, rng or random.Random(0)) == thinking + "\n</think>\n#### 6"


def test_confirmations_fall_with_difficulty() -> None:
    from mrt_ray.tasks.embedded import confirmations

    def n(frac: float, u: float) -> int:
        return confirmations(Problem("t", "", "0", meta={"difficulty_frac": frac}), _ConfirmRng(1, u))

    assert (n(0.0, 0.0), n(0.0, 0.99), n(0.5, 0.0), n(0.5, 0.99), n(1.0, 0.0), n(1.0, 0.99)) == (3, 3, 2, 2, 1, 1)
    assert (n(0.25, 0.4), n(0.25, 0.6)) == (2, 3)  # 2.5 rounds up half the time


def test_style_mix_interpolates_with_difficulty() -> None:
    from mrt_ray.tasks.embedded import style_weights

    easy, hard = {"confirm": 0.8, "repair": 0.0}, {"confirm": 0.2, "repair": 0.4}
    w = style_weights(easy, hard, 0.5)
    assert w["confirm"] == pytest.approx(0.5) and w["repair"] == pytest.approx(0.2) and w["concise"] == 0.0
    with pytest.raises(ValueError, match="unknown styles"):
        style_weights({"terse": 1.0}, hard, 0.0)


def test_confirm_episodes_make_no_progress() -> None:
    rng = random.Random(5)
    for p in _problems():
        trace = make_trace(p, "confirm", rng)
        episodes = trace[: trace.index(FORCE_TEXT)].split("\n\n")
        assert 2 <= len(episodes) <= 4 and all(e.startswith(("Wait", "But wait")) for e in episodes[1:])
        assert all(grade(_forced("\n\n".join(episodes[: j + 1])), p.answer) for j in range(len(episodes)))


def test_verbose_checks_once_for_more_than_four_terms() -> None:
    p = Problem(id="t", prompt="1+2+3+4+5=?\n<think>\n", answer="15",
                meta={"terms": [1, 2, 3, 4, 5], "ops": ["+"] * 4})
    lines = "1+2=3\n3+3=6\n6+4=10\n10+5=15"
    assert make_trace(p, "verbose", random.Random(0)) == f"{lines}\n\nWait, let me check.\n{lines}\n</think>\n#### 15"


def test_unknown_style_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown trace style 'terse'"):
        make_trace(P368, "terse", random.Random(0))


@pytest.mark.parametrize("style", STYLES)
def test_every_style_ends_with_the_right_answer_and_grades_true(style: str) -> None:
    rng = random.Random(1)
    for p in _problems():
        assert int(p.answer) == _evaluate(p.prompt)
        trace = make_trace(p, style, rng)
        assert trace.endswith(FORCE_TEXT + p.answer)
        assert trace.count(THINK_CLOSE) == 1
        assert grade(trace, p.answer)
        assert not grade(trace, str(int(p.answer) + 1))


def test_grade() -> None:
    assert grade("x\n</think>\n#### 12", "12")
    assert grade("#### 3\n#### 12 apples", "12")  # the last mark counts, first token after it
    assert not grade("#### 12", "13")
    assert not grade("no mark 12", "12")
    assert not grade("#### ", "12")
    assert not grade("#### twelve", "12")


# ------------------------------------------------------------------------------------------------ problems


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
def test_running_value_stays_in_range(shape: tuple[int, int, int, int]) -> None:
    min_terms, max_terms, max_operand, max_value = shape
    for i in range(400):
        p = make_problem(3, "train", i, *shape)
        n = p.meta["num_terms"]
        assert min_terms <= n <= max_terms and len(p.meta["terms"]) == n and len(p.meta["ops"]) == n - 1
        assert all(0 <= t <= max_operand for t in p.meta["terms"])
        values = _running_values(p)
        assert all(0 <= v <= max_value for v in values), (p.prompt, values)
        assert str(values[-1]) == p.answer


def test_problem_format() -> None:
    p = make_problem(0, "eval", 5)
    assert p.id == "eval-5"
    assert p.prompt.endswith("=?\n<think>\n")
    assert int(p.answer) == _evaluate(p.prompt)


def test_problems_are_deterministic_per_seed_stream_index() -> None:
    for seed, stream, i in [(0, "train", 0), (0, "eval", 3), (5, "train", 17)]:
        a, b = make_problem(seed, stream, i), make_problem(seed, stream, i)
        assert (a, a.meta) == (b, b.meta)
    base = [make_problem(0, "train", i).prompt for i in range(50)]
    assert len(set(base)) > 40  # indices draw different problems
    assert base != [make_problem(1, "train", i).prompt for i in range(50)]  # so do seeds
    assert base != [make_problem(0, "eval", i).prompt for i in range(50)]  # and streams


def test_problems_do_not_depend_on_the_process() -> None:
    """Same problems in a fresh interpreter with another hash seed (no reliance on hash() or global RNG state)."""
    code = ("from mrt_ray.tasks.embedded import make_problem; "
            "print([make_problem(4, 'train', i).prompt for i in range(20)])")
    env = {"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == repr([make_problem(4, "train", i).prompt for i in range(20)])


# ------------------------------------------------------------------------------------------------ repair = progress


def _forced(thinking: str) -> str:
    """The meta-prover's answer after a thinking prefix: FORCE_TEXT, then the last value the prefix computed."""
    return thinking + FORCE_TEXT + thinking.rstrip().rsplit("=", 1)[1]


def test_repair_first_episode_forces_a_wrong_answer_the_last_a_right_one() -> None:
    rng = random.Random(2)
    for p in _problems():
        if p.meta["num_terms"] < 2:
            continue
        trace = make_trace(p, "repair", rng)
        thinking = trace[: trace.index(FORCE_TEXT)]
        episodes = thinking.split("\n\n")
        assert len(episodes) == 2 and episodes[1].startswith("Wait")
        assert not grade(_forced(episodes[0]), p.answer)
        assert grade(_forced("\n\n".join(episodes)), p.answer)
        assert _forced("\n\n".join(episodes)) == trace


def test_verbose_checks_make_no_progress() -> None:
    rng = random.Random(3)
    for p in _problems():
        trace = make_trace(p, "verbose", rng)
        episodes = trace[: trace.index(FORCE_TEXT)].split("\n\n")
        assert len(episodes) in (2, 3)
        assert all(grade(_forced("\n\n".join(episodes[: j + 1])), p.answer) for j in range(len(episodes)))


# ------------------------------------------------------------------------------------------------ tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _texts() -> list[str]:
    rng = random.Random(4)
    return [p.prompt + make_trace(p, s, rng) for p in _problems(40) for s in STYLES]


def test_tokenizer_round_trips_every_trace_one_token_per_character(tok) -> None:
    unk = tok.convert_tokens_to_ids("<unk>")
    for text in _texts():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text) and unk not in ids
        assert tok.decode(ids) == text


def test_tokenizer_special_tokens(tok) -> None:
    assert [tok.pad_token, tok.eos_token, tok.unk_token] == ["<pad>", "<eos>", "<unk>"]
    assert [tok.pad_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2] == [SPECIALS.index(s) for s in SPECIALS]
    ids = tok(ANSWER_MARK + "7", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == "#### 7"


def test_tokenizer_loads_back_with_auto_tokenizer(tok, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert (loaded.eos_token_id, loaded.pad_token_id, len(loaded)) == (tok.eos_token_id, tok.pad_token_id, len(tok))
    for text in _texts()[:40]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert loaded(text, add_special_tokens=False)["input_ids"] == ids
        assert loaded.decode(ids) == text


def test_tokenizer_reloads_identically_beside_a_qwen2_config(tmp_path):
    """Regression: AutoTokenizer maps a Qwen2 model directory to Qwen2Tokenizer; the reloaded tokenizer must encode
    every trace exactly like the one SFT used (a WordLevel tokenizer once lost its newline tokens here)."""
    from transformers import AutoTokenizer, Qwen2Config

    from mrt_ray.bootstrap import build_tokenizer

    built = build_tokenizer()
    built.save_pretrained(tmp_path)
    Qwen2Config().save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for i in range(10):
        p = make_problem(0, "eval", i)
        for style in STYLES:
            text = p.prompt + make_trace(p, style, random.Random(i))
            ids = built(text, add_special_tokens=False)["input_ids"]
            assert loaded(text, add_special_tokens=False)["input_ids"] == ids
            assert len(ids) == len(text) and loaded.decode(ids) == text
