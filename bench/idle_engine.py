"""Does an idle vLLM CPU engine take CPU? A rollout worker (SmolLM2-135M-Instruct on chain_sum by default) generates
one batch, then sits idle while the CPU time of its whole process tree is read from psutil over `--idle` seconds.
In sync mode the learner runs while the engine idles, so any CPU the engine burns then is taken from learning.

    .venv/bin/python bench/idle_engine.py [--threads 1 2] [--idle 20] [key=value ...]

One fresh process per thread count (OMP_NUM_THREADS set before vLLM starts). Prints, per thread count, the idle
window's CPU seconds per wall second (1.0 = one core busy). A benchmark, not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from harness import REPO
from preload import smollm2_worker


def tree_cpu_seconds(proc) -> float:
    """user + system CPU seconds of `proc` and every descendant alive now."""
    import psutil

    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:  # a child that exited meanwhile
            continue
        total += t.user + t.system
    return total


def child(threads: int, idle: float, overrides: list[str]) -> None:
    import psutil

    worker, requests = smollm2_worker(threads, "idle_engine", overrides)
    reqs = requests(0)
    me = psutil.Process()
    t0, c0 = time.perf_counter(), tree_cpu_seconds(me)
    worker.generate(reqs)
    t1, c1 = time.perf_counter(), tree_cpu_seconds(me)
    time.sleep(idle)
    t2, c2 = time.perf_counter(), tree_cpu_seconds(me)
    print("BENCH " + json.dumps({"generate_cores": (c1 - c0) / (t1 - t0), "idle_cores": (c2 - c1) / (t2 - t1),
                                 "processes": 1 + len(me.children(recursive=True))}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of idle engine to measure")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = ap.parse_args()
    if args.child:
        child(args.threads[0], args.idle, args.overrides)
        return
    print("| rollout.threads | CPU cores busy while generating | CPU cores busy while idle | processes |")
    print("|---|---|---|---|")
    for n in args.threads:
        env = {**os.environ, "OMP_NUM_THREADS": str(n), "TOKENIZERS_PARALLELISM": "false"}
        p = subprocess.run([sys.executable, __file__, "--child", "--threads", str(n), "--idle", str(args.idle),
                            *args.overrides], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                           text=True, check=True)
        r = json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("BENCH "))[6:])
        print(f"| {n} | {r['generate_cores']:.2f} | {r['idle_cores']:.3f} | {r['processes']} |", flush=True)


if __name__ == "__main__":
    main()
