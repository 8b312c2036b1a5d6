"""A math-verify grading worker: `python -m mrt_ray.rewards.grading_worker FD PPID`, started by `grading._Worker`.

It talks over the `multiprocessing.connection.Connection` on file descriptor FD: it sends ("ready", None) once
math-verify is imported and warmed up, then answers each (gold, prediction) pair of extracted answers with
("ok", bool) or ("error", message). math-verify's own SIGALRM timeouts are off: the parent enforces the timeout by
killing this process. Its address space is capped at MRT_RAY_GRADER_MEMORY_MB (default 2048): an answer whose
comparison needs more (e.g. expanding `(x+1)^{100000}`) fails with MemoryError, reported as an error, instead of
eating the host's memory until the timeout. It exits when the parent closes the connection, and on Linux is SIGKILLed when the parent's
spawning thread dies (PR_SET_PDEATHSIG: also mid-comparison, when a huge integer power holds the GIL).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from multiprocessing.connection import Connection

from mrt_ray.utils import limit_memory

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(ppid: int) -> None:
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != ppid:  # the parent died before prctl took effect
        os._exit(0)


def main(fd: int, ppid: int) -> None:
    _die_with_parent(ppid)
    limit_memory(os.environ.get("MRT_RAY_GRADER_MEMORY_MB", "2048"), "MRT_RAY_GRADER_MEMORY_MB")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills us at exit
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    # math-verify warns once that its timeout is disabled: intended, the parent enforces it
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    targets = (LatexExtractionConfig(), ExprExtractionConfig())

    def equal(gold: str, pred: str) -> bool:
        # the extracted answers are boxed so math-verify parses LaTeX and plain expressions alike
        g = parse(f"\\boxed{{{gold}}}", extraction_config=targets, parsing_timeout=None, raise_on_error=True)
        p = parse(f"\\boxed{{{pred}}}", extraction_config=targets, parsing_timeout=None, raise_on_error=True)
        return bool(verify(g, p, timeout_seconds=None, raise_on_error=True))

    conn = Connection(fd)
    equal("1", "1")  # the first call is slow (sympy and regex set-up): pay it before reporting ready
    conn.send(("ready", None))
    while True:
        try:
            gold, pred = conn.recv()
        except EOFError:
            return
        try:
            reply = ("ok", equal(gold, pred))
        except BaseException as e:  # noqa: BLE001 - any grader failure is reported and counted by the parent
            reply = ("error", f"{type(e).__name__}: {e}"[:500])
        conn.send(reply)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
