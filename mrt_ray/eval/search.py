"""Linearised-search evaluation of backtracking-search traces (`task.traces=backtrack`, `mrt_ray/tasks/backtrack.py`).

One sampled trace is a search: attempts separated by backtrack lines, each ending with its own answer ("so X"). Two
ways to read its answer (Qu et al. 2025, the backtracking-search models):
  final - the answer after the close tag (the trace's own; graded as every sample is);
  maj   - a majority vote over the answers of the trace's attempts: every attempt's answer votes once.
`search_stats` reports both, maj over the first K attempts for K = 1, 2, ... (K = 1: the first attempt alone), and
what the search did: attempts per trace, the share that backtrack, the share whose final answer fixes a wrong first
attempt and the share that turns a right first attempt wrong.

Vote rule: an attempt without an answer (cut short) casts no vote; answers are compared as exact strings (the
embedded task's integers); a tie between the top answers counts as the expected score of a uniform tie-break
(1 / number of tied answers if the gold answer is among them), as the MRT reference's maj@k scores a two-way tie 0.5.
A trace with no vote scores 0.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

Grader = Callable[[str, str], bool]  # (voted answer, gold answer) -> correct


def vote_score(votes: Sequence[str | None], gold: str, grader: Grader) -> float:
    """Expected correctness of the majority answer of `votes` under the module's vote rule."""
    counts = Counter(v.strip() for v in votes if v is not None and v.strip())
    if not counts:
        return 0.0
    top = max(counts.values())
    tied = [a for a, c in counts.items() if c == top]
    return sum(bool(grader(a, gold)) for a in tied) / len(tied)


def search_stats(attempts: Sequence[Sequence[str | None]], finals: Sequence[bool], golds: Sequence[str],
                 grader: Grader) -> dict:
    """attempts[t]: the attempt answers of trace t in order; finals[t]: whether its final answer is right; golds[t]:
    its gold answer. Means are over traces (every prompt has the same number of samples, so this is also the mean of
    the per-prompt means)."""
    if not (len(attempts) == len(finals) == len(golds)):
        raise ValueError(f"search_stats: {len(attempts)} attempt lists, {len(finals)} finals, {len(golds)} golds")
    if not attempts:
        raise ValueError("search_stats needs at least one trace; got none")
    n_att = [len(a) for a in attempts]
    first = [bool(a) and a[0] is not None and bool(grader(a[0].strip(), g)) for a, g in zip(attempts, golds)]
    k_max = max(n_att)
    maj_at = [float(np.mean([vote_score(a[:k], g, grader) for a, g in zip(attempts, golds)]))
              for k in range(1, k_max + 1)]  # a trace with fewer than k attempts votes with all it has
    return {
        "traces": len(attempts),
        "final_accuracy": float(np.mean(finals)),
        "maj_accuracy": maj_at[-1] if maj_at else 0.0,  # every attempt votes
        "maj_at_attempts": [{"k": k + 1, "accuracy": acc, "traces_with_k": sum(n > k for n in n_att)}
                            for k, acc in enumerate(maj_at)],
        "first_attempt_accuracy": float(np.mean(first)),
        "attempts_mean": float(np.mean(n_att)),
        "backtrack_share": float(np.mean([n > 1 for n in n_att])),
        "fixed_share": float(np.mean([f and not a for f, a in zip(finals, first)])),  # wrong first, right final
        "broken_share": float(np.mean([a and not f for f, a in zip(finals, first)])),  # right first, wrong final
    }


def sampled_search_stats(groups, correct: Sequence[Sequence[bool]], grader: Grader, think_open: str,
                         think_close: str) -> dict:
    """`search_stats` of the sampled traces `groups` [prompt][sample] (Trajectory) graded `correct` [prompt][sample]."""
    from mrt_ray.tasks.backtrack import attempt_answers

    traces = [t for g in groups for t in g]
    return search_stats([attempt_answers(t.completion.text, think_open, think_close) for t in traces],
                        [bool(c) for row in correct for c in row], [t.problem.answer for t in traces], grader)
