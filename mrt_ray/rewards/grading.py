"""Answer grading with math-verify, batched, safe in any process, thread, Ray task or threaded/async actor.

math-verify's timeouts use SIGALRM, which fails outside the main thread, and a pathological answer
(`\\boxed{9^{9^{9^{9}}}}`) can run forever. So math-verify runs only in a pebble `ProcessPool` owned by this module
(created lazily, one per process, spawned workers: no fork of a threaded parent): each comparison is a task with its
own timeout; a task that overruns, or whose worker dies, scores False and pebble replaces the worker. Answers are
extracted in the caller (`extract.extract_answer`), so the pool sees only the two answer strings.

`Grader` (from `get_grader`) is what the data path uses: `grader(text, gold)` for one answer and
`grader.many(texts, golds)` for a whole step's answers at once (the hot path: scoring, the estimator, evaluation).

Pool size: `MRT_RAY_GRADER_WORKERS` (default min(4, max(2, cpu_count))), read when the pool is first used. Memory:
each worker's address space is capped at `MRT_RAY_GRADER_MEMORY_MB` (default 2048; 0: no cap). Counters
of this process: `grading_stats()`.
"""
from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout

from pebble import ProcessExpired, ProcessPool

from mrt_ray.rewards import grading_worker
from mrt_ray.rewards.extract import extract_answer

log = logging.getLogger("mrt_ray")

_POOL: ProcessPool | None = None
_POOL_PID = -1
_LOCK = threading.Lock()
_STATS = {"calls": 0, "no_answer": 0, "timeouts": 0, "errors": 0, "restarts": 0}
_SCORERS: set[str] = set()  # reasoning-gym generators whose scorers the pool's workers load at start


def _count(key: str, n: int = 1) -> None:
    with _LOCK:
        _STATS[key] += n


def pool_size() -> int:
    raw = os.environ.get("MRT_RAY_GRADER_WORKERS", "")
    if not raw:
        return min(4, max(2, os.cpu_count() or 1))
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"MRT_RAY_GRADER_WORKERS={raw!r} must be a positive integer")
    return int(raw)


def _pool() -> ProcessPool:
    global _POOL, _POOL_PID
    with _LOCK:
        if _POOL is None or os.getpid() != _POOL_PID:  # after a fork the parent's pool is not ours
            _POOL = ProcessPool(max_workers=pool_size(), context=multiprocessing.get_context("spawn"),
                                initializer=grading_worker.init, initargs=(os.getpid(), tuple(sorted(_SCORERS))))
            _POOL_PID = os.getpid()
        return _POOL


def _schedule(gold: str, pred: str, timeout: float, dataset: str):
    """Schedule one comparison; a pool that broke (e.g. its workers were killed from outside, which pebble reports
    as an error of the whole pool) is replaced once."""
    global _POOL
    for attempt in range(2):
        pool = _pool()
        try:
            return pool.schedule(grading_worker.equal, args=(gold, pred, dataset), timeout=timeout)
        except RuntimeError:
            if attempt:
                raise
            with _LOCK:
                if _POOL is pool:
                    _POOL = None
            pool.stop()
            _count("restarts")
            log.warning("the grading pool broke; starting a new one")


def load_scorer(dataset: str) -> None:
    """Make the pool's workers load `dataset`'s scorer when they start (importing reasoning-gym takes seconds, more
    than a comparison's timeout); a pool started without it is replaced."""
    with _LOCK:
        new = dataset not in _SCORERS
        _SCORERS.add(dataset)
    if new:
        shutdown_grading_pool()


def shutdown_grading_pool() -> None:
    """Stop this process's grading workers (also run at exit); the next grading call starts a new pool."""
    global _POOL
    with _LOCK:
        pool, _POOL = _POOL, None
    if pool is not None and os.getpid() == _POOL_PID:
        pool.stop()
        pool.join(timeout=10)


atexit.register(shutdown_grading_pool)


def grading_stats() -> dict[str, int]:
    """Counters of this process: calls, no_answer (nothing extracted), timeouts, errors (grader exception or worker
    death), restarts (workers replaced after a timeout or a death)."""
    with _LOCK:
        return dict(_STATS)


def _check(preds: Sequence[str], golds: Sequence[str], timeout: float, marker: str) -> None:
    if len(preds) != len(golds):
        raise ValueError(f"math_equal_batch: {len(preds)} predictions but {len(golds)} gold answers")
    for name, values in (("prediction", preds), ("gold", golds), ("marker", [marker])):
        bad = next((v for v in values if not isinstance(v, str)), "")
        if not isinstance(bad, str):
            raise TypeError(f"math_equal: {name} must be str, got {type(bad).__name__}")
    if not timeout > 0:
        raise ValueError(f"math_equal: timeout must be positive, got {timeout}")


def math_equal_batch(preds: Sequence[str], golds: Sequence[str], timeout: float = 5.0,
                     marker: str = "", dataset: str = "") -> list[bool]:
    """For each pair, whether the final answer of the prediction is mathematically equal to the gold answer.

    The answer is extracted from the prediction (`marker`, when given, takes priority); the gold is extracted the
    same way, or used whole when it marks no answer (a bare "1/2"). All comparisons run in parallel on the pool, each
    with `timeout` seconds once started; no answer, a timeout, a grader error or a worker death gives False.
    `dataset` (a reasoning-gym generator): the generator's own scorer judges instead of math-verify, with the gold
    used whole.
    """
    _check(preds, golds, timeout, marker)
    _count("calls", len(preds))
    out = [False] * len(preds)
    jobs = []
    for i, (pred, gold) in enumerate(zip(preds, golds)):
        pa = extract_answer(pred, marker)
        ga = gold.strip() if dataset else extract_answer(gold, marker) or gold.strip()
        if pa is None or not ga:
            _count("no_answer")
        else:
            jobs.append((i, ga, pa))
    if not jobs:
        return out
    futures = [(i, g, p, _schedule(g, p, timeout, dataset)) for i, g, p in jobs]
    for i, g, p, fut in futures:
        try:
            out[i] = bool(fut.result())
        except FutureTimeout:
            _count("timeouts")
            _count("restarts")
            log.warning("grading timed out after %gs: gold=%.100r pred=%.100r", timeout, g, p)
        except ProcessExpired as e:
            _count("errors")
            _count("restarts")
            log.warning("grading worker died (exit code %s): gold=%.100r pred=%.100r", e.exitcode, g, p)
        except Exception as e:  # noqa: BLE001 - any grader failure scores 0 and is counted
            _count("errors")
            log.warning("grader error %s: gold=%.100r pred=%.100r", f"{type(e).__name__}: {e}"[:200], g, p)
    return out


def math_equal(prediction: str, gold: str, timeout: float = 5.0, marker: str = "") -> bool:
    """`math_equal_batch` for one pair."""
    return math_equal_batch([prediction], [gold], timeout, marker)[0]


class Grader:
    """The task's grader: `grader(text, gold)` for one answer, `grader.many(texts, golds)` for many at once."""

    def __init__(self, one: Callable[[str, str], bool], many: Callable[[Sequence[str], Sequence[str]], list[bool]]):
        self._one, self._many = one, many

    def __call__(self, text: str, gold: str) -> bool:
        return self._one(text, gold)

    def many(self, texts: Sequence[str], golds: Sequence[str]) -> list[bool]:
        return self._many(texts, golds) if texts else []


def get_grader(name: str, marker: str = "", timeout: float = 5.0, dataset: str = "") -> Grader:
    """The grader for config key `task.grader`: "exact" (the embedded task's integer grader), "math", or
    "reasoning_gym" (the scorer of the reasoning-gym generator `dataset`, `task.dataset`)."""
    if name == "exact":
        if marker:
            raise ValueError("an answer marker applies only to task.grader=math; the exact grader reads '#### '")
        from mrt_ray.tasks.embedded import grade

        return Grader(grade, lambda texts, golds: [grade(t, g) for t, g in zip(texts, golds)])
    if name in ("math", "reasoning_gym"):
        scorer = dataset if name == "reasoning_gym" else ""
        if name == "reasoning_gym":
            if not dataset:
                raise ValueError("task.grader=reasoning_gym needs task.dataset (the generator whose scorer grades)")
            load_scorer(dataset)
        return Grader(lambda t, g: math_equal_batch([t], [g], timeout, marker, scorer)[0],
                      lambda texts, golds: math_equal_batch(texts, golds, timeout, marker, scorer))
    raise ValueError(f"task.grader={name!r} is not a grader; choose one of ['exact', 'math', 'reasoning_gym']")
