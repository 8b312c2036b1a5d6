"""What runs inside a math-verify grading process (a pebble ProcessPool worker, spawned, see `grading`).

`init` dies with the parent (Linux PR_SET_PDEATHSIG, also mid-comparison when a huge integer power holds the GIL),
leaves Ctrl-C to the parent, imports and warms up math-verify (and the reasoning-gym scorers it is given); `equal`
compares two extracted answers (with math-verify, or a reasoning-gym generator's scorer). math-verify's own SIGALRM
timeouts are off: the pool enforces a timeout per task by killing the worker. Its address space is capped at
MRT_RAY_GRADER_MEMORY_MB (default 2048; 0: no cap): an answer whose comparison needs more (e.g. expanding
`(x+1)^{100000}`) fails with MemoryError, counted as an error, instead of eating the host's memory until the timeout.
"""
from __future__ import annotations

import logging
import os
import signal
import sys

from mrt_ray.utils import limit_memory

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_TARGETS = None


def init(ppid: int, scorers: tuple[str, ...] = ()) -> None:
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != ppid:  # the parent died before prctl took effect
        os._exit(0)
    limit_memory(os.environ.get("MRT_RAY_GRADER_MEMORY_MB", "2048"), "MRT_RAY_GRADER_MEMORY_MB")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns that its own timeout is off: intended
    equal("1", "1")  # the first call is slow (sympy and regex set-up): pay it now
    for dataset in scorers:  # reasoning-gym generators' scorers (its import takes seconds)
        equal("1", "1", dataset)


def equal(gold: str, pred: str, dataset: str = "") -> bool:
    """math-verify's verdict on two extracted answers (each boxed, so LaTeX and plain expressions parse alike); with
    `dataset`, that reasoning-gym generator's own scorer's (`tasks.gym.score`)."""
    global _TARGETS
    if dataset:
        from mrt_ray.tasks.gym import score

        return score(dataset, gold, pred)
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    if _TARGETS is None:
        _TARGETS = (LatexExtractionConfig(), ExprExtractionConfig())
    g = parse(f"\\boxed{{{gold}}}", extraction_config=_TARGETS, parsing_timeout=None, raise_on_error=True)
    p = parse(f"\\boxed{{{pred}}}", extraction_config=_TARGETS, parsing_timeout=None, raise_on_error=True)
    return bool(verify(g, p, timeout_seconds=None, raise_on_error=True))
