"""Answer extraction, math-verify grading through the worker pool (threads, timeouts, crashes) and get_grader."""
from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mrt_ray.rewards import extract_answer, get_grader, grading_stats, math_equal, math_equal_batch
from mrt_ray.tasks import embedded

PATHOLOGICAL = "\\boxed{9^{9^{9^{9}}}}"  # math-verify tries to evaluate the tower: hangs without a timeout


def _delta(before: dict[str, int]) -> dict[str, int]:
    after = grading_stats()
    return {k: after[k] - before[k] for k in after}


# ----------------------------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    "text, marker, expected",
    [
        ("so \\boxed{\\frac{1}{2}} done", "", "\\frac{1}{2}"),
        ("first \\boxed{1} then \\boxed{2}", "", "2"),  # the last box
        ("\\boxed{\\frac{a}{b^{2}}}", "", "\\frac{a}{b^{2}}"),  # nested braces
        ("\\boxed{7} and a truncated \\boxed{\\frac{1}{", "", "7"),  # incomplete box skipped
        ("\\fbox{3}", "", "3"),
        ("\\boxed 5$", "", "5"),
        ("Janet earns 9*2=18.\n#### 18", "", "18"),
        ("3+5=8\n</think>\n#### 8\n", "", "8"),
        ("#### 1 then again\n#### 1,234\nextra words", "", "1,234"),
        ("Thus the answer is $\\frac{3}{4}$.", "", "\\frac{3}{4}"),
        ("The final answer is: 12.", "", "12"),
        ("the answer is 2. Wait, the answer is \\(5\\)", "", "5"),
        ("The final answer to the given arithmetic problem is 7.", "", "7"),  # SmolLM2-135M-Instruct's phrasing
        ("The answer for x is 4", "", "4"),
        ("the answer to this. It is 9", "", None),  # "is" beyond the sentence does not count
        ("Final Answer: x = 3\nbecause", "Final Answer:", "x = 3"),
        ("Final Answer: \\boxed{4}", "Final Answer:", "4"),
        ("ANSWER 9 \\boxed{1}", "ANSWER", "1"),  # a box inside the marked span wins
        ("\\boxed{1} but ANSWER 9", "ANSWER", "9"),  # the marker has priority over an earlier box
        ("Final Answer: 1/2", "", None),  # no marker configured, nothing else marked
        ("I think it is 5", "", None),
        ("\\boxed{}", "", None),
        ("####   \n\n", "", None),
    ],
)
def test_extract_answer(text: str, marker: str, expected: str | None) -> None:
    assert extract_answer(text, marker) == expected


# ----------------------------------------------------------------------------------------------- math_equal


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("The answer is 1/2.", "0.5"),
        ("\\boxed{0.5}", "\\frac{1}{2}"),
        ("so \\boxed{\\frac{1}{2}}", "1/2"),
        ("\\boxed{\\dfrac12}", "0.5"),
        ("#### 1,234", "1234"),
        ("She pays \\boxed{\\$18}", "Natalia sold 48/2 = 24 clips.\n#### 18"),  # GSM8K-style gold solution
        ("\\boxed{50\\%}", "0.5"),
        ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
        ("\\boxed{x = 3}", "3"),
        ("3+5=8\n8-2=6\n</think>\n#### 6", "6"),
    ],
)
def test_math_equal_equivalent(pred: str, gold: str) -> None:
    assert math_equal(pred, gold) is True


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("\\boxed{3}", "4"),
        ("The answer is 0.333.", "\\frac{1}{3}"),
        ("#### -6", "6"),
        ("\\boxed{\\frac{1}{2}}", "2"),
    ],
)
def test_math_equal_wrong(pred: str, gold: str) -> None:
    assert math_equal(pred, gold) is False


def test_no_answer_is_false_and_counted() -> None:
    before = grading_stats()
    assert math_equal("I think it is 5", "5") is False
    assert _delta(before)["no_answer"] == 1


def test_marker() -> None:
    assert math_equal("Final Answer: 1/2", "0.5", marker="Final Answer:") is True
    assert math_equal("Final Answer: 1/2", "0.5") is False  # without the marker nothing is marked


def test_bad_input() -> None:
    with pytest.raises(TypeError, match="prediction must be str"):
        math_equal(None, "1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be positive"):
        math_equal("\\boxed{1}", "1", timeout=0)
    with pytest.raises(ValueError, match="2 predictions but 1 gold"):
        math_equal_batch(["1", "2"], ["1"])


def test_pathological_times_out_and_pool_survives() -> None:
    before = grading_stats()
    assert math_equal(PATHOLOGICAL, "1", timeout=1.0) is False
    d = _delta(before)
    assert d["timeouts"] == 1 and d["restarts"] == 1  # our timer fired and the hung worker was replaced
    assert math_equal("\\boxed{2}", "2") is True
    assert math_equal_batch(["\\boxed{1}"] * 6, ["1"] * 6) == [True] * 6


MEMORY_EATER = "\\boxed{(x+1)^{100000}}"  # sympy expands it: ~600 MB of binomial coefficients, growing for minutes


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_memory_eater_is_capped_scores_zero_and_pool_survives(monkeypatch) -> None:
    """An answer whose comparison eats memory runs into the grading worker's cap (MRT_RAY_GRADER_MEMORY_MB, here
    300): it scores False within its timeout, the worker's peak memory stayed under the cap, and the pool grades on.
    Slow on a loaded machine (the expansion needs tens of CPU-seconds to reach the cap), so `slow`."""
    from mrt_ray.rewards import shutdown_grading_pool

    shutdown_grading_pool()  # a fresh pool that reads the settings below
    monkeypatch.setenv("MRT_RAY_GRADER_MEMORY_MB", "300")
    monkeypatch.setenv("MRT_RAY_GRADER_WORKERS", "1")
    try:
        assert math_equal("\\boxed{1}", "1") is True
        [pid] = _worker_pids()
        before = grading_stats()
        assert math_equal(MEMORY_EATER, "1", timeout=600.0) is False
        peak_kib = next(int(ln.split()[1]) for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
                        if ln.startswith("VmHWM:"))
        assert peak_kib <= 300 * 1024, peak_kib
        assert _delta(before)["timeouts"] == 0  # the cap ended it, not the timeout
        assert math_equal("\\boxed{\\frac{2}{4}}", "0.5") is True
    finally:
        shutdown_grading_pool()


def _worker_pids() -> list[int]:
    """Live grading workers of this process (Linux /proc)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"spawn_main" in cmd:  # the pool's workers are spawned children
            pids.append(int(d.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_worker_crash_is_false_and_counted() -> None:
    assert math_equal("\\boxed{1}", "1") is True  # the pool is up
    before = grading_stats()
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(math_equal(PATHOLOGICAL, "1", timeout=60.0)))
    t.start()
    time.sleep(1.0)  # let the pathological comparison start
    for pid in _worker_pids():  # kill them all: the busy one crashes mid-job, the idle ones are replaced on use
        os.kill(pid, signal.SIGKILL)
    t.join()
    assert result == [False]
    d = _delta(before)
    assert d["errors"] == 1 and d["timeouts"] == 0
    assert math_equal("\\boxed{\\frac{2}{4}}", "0.5") is True


# ----------------------------------------------------------------------------------------------- concurrency


def test_from_a_thread() -> None:
    out: list[bool] = []

    def work() -> None:
        out.append(math_equal("\\boxed{\\frac{1}{2}}", "0.5"))
        out.append(math_equal(PATHOLOGICAL, "1", timeout=1.0))  # SIGALRM would fail here; our timeout works

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert out == [True, False]


def test_from_a_thread_pool() -> None:
    preds = ["\\boxed{1/2}", "#### 3", "the answer is 4", "\\boxed{7}"] * 3
    golds = ["0.5", "3", "5", "7"] * 3
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(math_equal, preds, golds))
    assert got == [True, True, False, True] * 3


def test_from_asyncio() -> None:
    """What a threaded/async Ray actor does: grade off the event loop thread."""

    async def main() -> list[bool]:
        return list(await asyncio.gather(
            asyncio.to_thread(math_equal, "\\boxed{0.25}", "\\frac14"),
            asyncio.to_thread(math_equal, "\\boxed{2}", "3"),
        ))

    assert asyncio.run(main()) == [True, False]


def test_batch_matches_single() -> None:
    preds = ["\\boxed{1/2}", "#### 3", "no answer", "The answer is $\\sqrt{4}$.", "\\boxed{10}", PATHOLOGICAL]
    golds = ["0.5", "4", "1", "2", "10", "1"]
    before = grading_stats()
    assert math_equal_batch(preds, golds, timeout=1.0) == [True, False, False, True, True, False]
    d = _delta(before)
    assert d["calls"] == 6 and d["no_answer"] == 1 and d["timeouts"] == 1
    assert math_equal_batch([], []) == []


# ----------------------------------------------------------------------------------------------- get_grader


def test_get_grader() -> None:
    exact = get_grader("exact")
    assert exact("x\n</think>\n#### 7", "7")
    assert exact.many(["#### 7", "#### 8", "7"], ["7"] * 3) == [True, False, False]
    math = get_grader("math")
    assert math("\\boxed{\\frac{6}{3}}", "2") is True
    assert math("\\boxed{3}", "2") is False
    assert math.many(["\\boxed{3}", "#### 2"], ["2", "2"]) == [False, True] and math.many([], []) == []
    assert get_grader("math", marker="ANS:")("ANS: 0.5", "1/2") is True
    with pytest.raises(ValueError, match="task.grader='fuzzy'"):
        get_grader("fuzzy")
    with pytest.raises(ValueError, match="only to task.grader=math"):
        get_grader("exact", marker="ANS:")


def test_math_grader_agrees_with_exact_on_embedded_traces() -> None:
    import random

    rng = random.Random(0)
    problems = [embedded.make_problem(0, "train", i) for i in range(8)]
    traces = [embedded.make_trace(p, embedded.STYLES[i % 4], rng) for i, p in enumerate(problems)]
    wrong = [t.rsplit("#### ", 1)[0] + f"#### {int(p.answer) + 1}" for t, p in zip(traces, problems)]
    preds, golds = traces + wrong, [p.answer for p in problems] * 2
    exact = [embedded.grade(c, g) for c, g in zip(preds, golds)]
    assert exact == [True] * 8 + [False] * 8
    assert math_equal_batch(preds, golds) == exact
