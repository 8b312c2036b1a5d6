"""Grading throughput: gradings/s of `math_equal_batch` (and of sequential `math_equal`) on ~500 mixed answers.

    python bench/grading_throughput.py [--n 500] [--workers K]

The pool is started and warmed up before timing. The mix covers boxed LaTeX, `####` (GSM8K / embedded task),
"the answer is", right and wrong answers, and a few with no answer (no worker round trip).
"""
from __future__ import annotations

import argparse
import os
import random
import time


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str, bool]]:
    """n (prediction, gold, expected verdict) triples, deterministic for a seed."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(2, 12)
        right = rng.random() < 0.6
        kind = i % 6
        if kind == 0:  # fraction vs decimal
            num = a if right else a + 1
            pred = f"Reasoning...\nSo the result is \\boxed{{\\frac{{{num}}}{{{b}}}}}."
            pairs.append((pred, str(round(a / b, 12)), right))
        elif kind == 1:  # GSM8K / embedded task
            ans = a * b if right else a * b + 1
            pairs.append((f"{a}*{b}={ans}\n</think>\n#### {ans:,}", f"{a} times {b}\n#### {a * b}", right))
        elif kind == 2:  # "the answer is"
            ans = a + b if right else a - b
            pairs.append((f"Adding them, the answer is ${ans}$.", str(a + b), right))
        elif kind == 3:  # symbolic
            k = b * b if right else b * b + 1
            pairs.append((f"\\boxed{{{a}\\sqrt{{{k}}}}}", f"{a * b}", right))
        elif kind == 4:  # percent / decimal
            pct = a if right else a + 1
            pairs.append((f"\\boxed{{{pct}\\%}}", str(a / 100), right))
        else:  # no final answer in the completion
            pairs.append((f"I computed {a} and {b} but ran out of tokens", str(a), False))
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="answers per batch")
    ap.add_argument("--workers", type=int, default=0, help="grading processes (default: the pool's default)")
    args = ap.parse_args()
    if args.workers:
        os.environ["MRT_RAY_GRADER_WORKERS"] = str(args.workers)
    from mrt_ray.rewards import grading_stats, math_equal, math_equal_batch

    t0 = time.perf_counter()
    warm = make_pairs(8, seed=0)
    math_equal_batch([p for p, _, _ in warm], [g for _, g, _ in warm])  # start and warm up the pool
    print(f"pool start + warm-up: {time.perf_counter() - t0:.2f} s")
    # fresh answers for each measurement: math-verify caches parses inside a worker
    for label, seed in (("math_equal_batch", 1), ("math_equal sequential", 2)):
        preds, golds, expected = (list(x) for x in zip(*make_pairs(args.n, seed)))
        t0 = time.perf_counter()
        if label == "math_equal_batch":
            got = math_equal_batch(preds, golds)
        else:
            got = [math_equal(p, g) for p, g in zip(preds, golds)]
        dt = time.perf_counter() - t0
        wrong = [i for i, (a, e) in enumerate(zip(got, expected)) if a != e]
        print(f"{label}: {args.n / dt:.0f} gradings/s ({dt:.2f} s; {sum(got)} correct, "
              f"{len(wrong)} verdicts differ from the construction {wrong[:5]})")
    print(f"stats {grading_stats()}")


if __name__ == "__main__":
    main()
