"""Answer grading with math-verify, safe in any process, thread, Ray task or threaded/async actor.

math-verify's timeouts use SIGALRM, which fails outside the main thread, and a pathological answer
(`\\boxed{9^{9^{9^{9}}}}`) can run forever. So math-verify runs only in a small pool of worker processes owned by this
module (created lazily, one pool per process): each worker is a fresh interpreter (`python -m
mrt_ray.rewards.grading_worker`, the spawn model: no fork of a threaded parent, no re-import of the caller's `__main__`,
allowed inside daemonic processes too). The caller waits for the reply with its own timeout; on timeout the worker is
killed and replaced and the answer scores False. A grader exception or a dead worker also scores False. Both are
counted: see `grading_stats()`.

Calls block the calling thread (at most `timeout` seconds per answer once a worker is free); an async actor should
grade with `await asyncio.to_thread(math_equal, ...)` to keep its event loop responsive. Each process that grades has
its own pool (~60-80 MB per worker).

Pool size: `MRT_RAY_GRADER_WORKERS` (default min(4, max(2, cpu_count))), read when the pool is first used. Memory:
each worker's address space is capped at `MRT_RAY_GRADER_MEMORY_MB` (default 2048; 0: no cap), read when it starts;
an answer that needs more scores False (MemoryError, counted as an error) and the worker goes on.
"""
from __future__ import annotations

import atexit
import functools
import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import Pipe
from pathlib import Path

from mrt_ray.rewards.extract import extract_answer

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 120.0  # a fresh worker imports sympy + math-verify; generous for a loaded machine
_PKG_ROOT = str(Path(__file__).resolve().parents[2])  # the directory holding `mrt_ray`, for the workers' sys.path


class _Worker:
    """One grading process and the parent's end of its connection."""

    def __init__(self) -> None:
        self.conn, child = Pipe(duplex=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PKG_ROOT, env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mrt_ray.rewards.grading_worker", str(child.fileno()), str(os.getpid())],
            pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, env=env,
        )
        child.close()
        self.ready = False

    def wait_ready(self) -> None:
        """Block until the worker has imported math-verify; RuntimeError if it cannot start."""
        if self.ready:
            return
        try:
            if not self.conn.poll(STARTUP_TIMEOUT_S):
                raise RuntimeError(f"grading worker pid {self.proc.pid} did not start in {STARTUP_TIMEOUT_S:g} s")
            self.conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(
                f"grading worker exited with code {self.proc.wait()} before it was ready (its stderr shows why; "
                f"is math-verify installed in {sys.executable}?)"
            ) from None
        self.ready = True

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.conn.close()


class _Pool:
    """Workers handed out one caller at a time; a dead or hung worker is replaced by a fresh one."""

    def __init__(self, size: int) -> None:
        self.pid = os.getpid()
        self.size = size
        self.idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self.all: set[_Worker] = set()
        self.lock = threading.Lock()
        self.closed = False
        # workers are started from this one long-lived thread: Linux kills them when it dies (PR_SET_PDEATHSIG
        # follows the spawning thread, and callers' threads come and go)
        self.spawner = ThreadPoolExecutor(1, thread_name_prefix="mrt-grader-spawn")
        for _ in range(size):
            self._put_new()

    def _put_new(self) -> None:
        w = self.spawner.submit(_Worker).result()
        with self.lock:
            self.all.add(w)
        self.idle.put(w)

    def _replace(self, w: _Worker) -> None:
        w.kill()
        with self.lock:
            self.all.discard(w)
        _count("restarts")
        if not self.closed:
            self._put_new()

    def grade(self, gold: str, pred: str, timeout: float) -> bool:
        """math-verify's verdict on two extracted answers; False on timeout, grader error or worker death."""
        w = self.idle.get()
        while w.proc.poll() is not None:  # died while idle (killed from outside): replace before use
            self._replace(w)
            w = self.idle.get()
        try:
            w.wait_ready()
        except RuntimeError:
            self._replace(w)
            raise
        try:
            w.conn.send((gold, pred))
            if not w.conn.poll(timeout):
                self._replace(w)
                _count("timeouts")
                log.warning("grading timed out after %gs: gold=%.100r pred=%.100r", timeout, gold, pred)
                return False
            status, value = w.conn.recv()
        except (EOFError, OSError):
            code = w.proc.poll()
            self._replace(w)
            _count("errors")
            log.warning("grading worker died (exit code %s): gold=%.100r pred=%.100r", code, gold, pred)
            return False
        except BaseException:  # e.g. KeyboardInterrupt while waiting: the worker's state is unknown
            self._replace(w)
            raise
        self.idle.put(w)
        if status == "error":
            _count("errors")
            log.warning("grader error %s: gold=%.100r pred=%.100r", value, gold, pred)
            return False
        return bool(value)

    def close(self) -> None:
        self.closed = True
        with self.lock:
            workers, self.all = list(self.all), set()
        for w in workers:
            w.kill()


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()
_STATS = {"calls": 0, "no_answer": 0, "timeouts": 0, "errors": 0, "restarts": 0}
_STATS_LOCK = threading.Lock()


def _count(key: str) -> None:
    with _STATS_LOCK:
        _STATS[key] += 1


def _pool_size() -> int:
    raw = os.environ.get("MRT_RAY_GRADER_WORKERS", "")
    if not raw:
        return min(4, max(2, os.cpu_count() or 1))
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"MRT_RAY_GRADER_WORKERS={raw!r} must be a positive integer")
    return int(raw)


def _pool() -> _Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL.pid != os.getpid():  # after a fork the parent's workers are not ours
            _POOL = _Pool(_pool_size())
        return _POOL


def shutdown_grading_pool() -> None:
    """Kill this process's grading workers (also run at exit); the next grading call starts a new pool."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None and pool.pid == os.getpid():
        pool.close()


atexit.register(shutdown_grading_pool)


def grading_stats() -> dict[str, int]:
    """Counters of this process: calls, no_answer (nothing extracted), timeouts, errors (grader exception or worker
    death), restarts (workers replaced)."""
    with _STATS_LOCK:
        return dict(_STATS)


def math_equal(prediction: str, gold: str, timeout: float = 5.0, marker: str = "") -> bool:
    """True when the final answer of `prediction` is mathematically equal to `gold` (math-verify).

    The answer is extracted from `prediction` (see `extract.extract_answer`; `marker`, when given, takes priority);
    `gold` is extracted the same way, or used whole when it marks no answer (a bare "1/2"). No answer, a timeout
    (`timeout` seconds of grading) or a grader error gives False.
    """
    for name, value in (("prediction", prediction), ("gold", gold), ("marker", marker)):
        if not isinstance(value, str):
            raise TypeError(f"math_equal: {name} must be str, got {type(value).__name__}")
    if not timeout > 0:
        raise ValueError(f"math_equal: timeout must be positive, got {timeout}")
    _count("calls")
    pred_ans = extract_answer(prediction, marker)
    gold_ans = extract_answer(gold, marker) or gold.strip()
    if pred_ans is None or not gold_ans:
        _count("no_answer")
        return False
    return _pool().grade(gold_ans, pred_ans, timeout)


def math_equal_batch(
    preds: Sequence[str], golds: Sequence[str], timeout: float = 5.0, marker: str = ""
) -> list[bool]:
    """`math_equal` over pairs, graded in parallel on the worker pool; results in input order."""
    if len(preds) != len(golds):
        raise ValueError(f"math_equal_batch: {len(preds)} predictions but {len(golds)} gold answers")
    if not preds:
        return []
    threads = min(len(preds), _pool().size)
    with ThreadPoolExecutor(threads, thread_name_prefix="mrt-grade") as ex:
        return list(ex.map(lambda pg: math_equal(pg[0], pg[1], timeout, marker), zip(preds, golds)))


def get_grader(name: str, marker: str = "", timeout: float = 5.0) -> Callable[[str, str], bool]:
    """The grader for config key `task.grader`: "exact" (the embedded task's integer grader) or "math"."""
    if name == "exact":
        if marker:
            raise ValueError("an answer marker applies only to task.grader=math; the exact grader reads '#### '")
        from mrt_ray.tasks.embedded import grade

        return grade
    if name == "math":
        return functools.partial(math_equal, timeout=timeout, marker=marker)
    raise ValueError(f"task.grader={name!r} is not a grader; choose one of ['exact', 'math']")
