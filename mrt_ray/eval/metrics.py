"""Evaluation metrics: pass@1, maj@k, token statistics, truncation, token efficiency, voting at equal tokens.

Majority vote rule (used by `maj_at_k` and `majority_at_equal_tokens`): votes are the extracted answers with
surrounding whitespace stripped, compared as exact strings (normalise equivalent forms before calling); a missing
answer (None or empty) casts no vote; the answer with the most votes wins, and a tie goes to the tied answer that
occurs first in the sample order. A prompt with no vote at all counts as wrong.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mrt_ray.eval.regret import accuracy_curve

Grader = Callable[[str, str], bool]  # (voted answer, gold answer) -> correct


def pass_at_1(correct: Sequence[Sequence[bool]]) -> tuple[float, float]:
    """Mean over prompts of each prompt's fraction of correct samples; stderr of that mean over prompts.

    The stderr is std(per-prompt means, ddof=1) / sqrt(num_prompts); it is NaN for a single prompt (no spread).
    """
    if not correct:
        raise ValueError("pass_at_1 needs at least one prompt; got none")
    means = []
    for i, row in enumerate(correct):
        if not row:
            raise ValueError(f"pass_at_1: prompt {i} has no samples")
        means.append(sum(bool(c) for c in row) / len(row))
    arr = np.asarray(means, dtype=np.float64)  # [num_prompts]
    stderr = float(arr.std(ddof=1) / math.sqrt(arr.size)) if arr.size > 1 else math.nan
    return float(arr.mean()), stderr


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean of `values` and its standard error, std(ddof=1) / sqrt(n); the stderr is 0 for a single value."""
    if not values:
        raise ValueError("mean_se needs at least one value; got none")
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1) / math.sqrt(arr.size)) if arr.size > 1 else 0.0


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The majority answer under the module's vote rule; None if no sample has an answer."""
    votes = [a.strip() for a in answers if a is not None and a.strip()]
    if not votes:
        return None
    counts = Counter(votes)
    top = max(counts.values())
    return next(a for a in votes if counts[a] == top)  # first occurrence among the tied


def _check_golds(num_prompts: int, golds: Sequence[str], what: str) -> None:
    if len(golds) != num_prompts:
        raise ValueError(f"{what}: {num_prompts} prompts but {len(golds)} gold answers")
    if num_prompts == 0:
        raise ValueError(f"{what} needs at least one prompt; got none")


def maj_at_k(answers: Sequence[Sequence[str | None]], golds: Sequence[str], k: int, grader: Grader) -> float:
    """Fraction of prompts whose majority vote over the first k extracted answers is graded correct."""
    _check_golds(len(answers), golds, "maj_at_k")
    if k < 1:
        raise ValueError(f"maj_at_k: k = {k} must be >= 1")
    hits = 0
    for i, (row, gold) in enumerate(zip(answers, golds)):
        if len(row) < k:
            raise ValueError(f"maj_at_k: prompt {i} has {len(row)} samples, fewer than k = {k}")
        voted = majority_vote(row[:k])
        hits += voted is not None and bool(grader(voted, gold))
    return hits / len(answers)


def token_stats(lengths: Sequence[float]) -> dict[str, float]:
    """Mean, median (p50) and 90th percentile (linear interpolation) of completion lengths."""
    if not lengths:
        raise ValueError("token_stats needs at least one length; got none")
    arr = np.asarray(lengths, dtype=np.float64)
    if (arr < 0).any():
        raise ValueError(f"token_stats: negative length at index {int(np.argmax(arr < 0))}")
    return {"mean": float(arr.mean()), "p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90))}


def truncation_rate(finished: Sequence[bool]) -> float:
    """Fraction of completions that did not finish (hit the length limit before EOS)."""
    if not finished:
        raise ValueError("truncation_rate needs at least one completion; got none")
    return sum(not f for f in finished) / len(finished)


def tokens_to_reach(tokens: Sequence[float], accuracy: Sequence[float], target: float) -> float | None:
    """Fewest thinking tokens at which the piecewise-linear J (see `regret`) reaches `target`; None if never."""
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"tokens_to_reach: target = {target} must lie in [0, 1]")
    xs, ys = accuracy_curve(tokens, accuracy)
    if ys[0] >= target:
        return xs[0]
    for x0, y0, x1, y1 in zip(xs, ys, xs[1:], ys[1:]):
        if y1 >= target:  # y0 < target here, so the segment rises through the target
            return x0 + (target - y0) * (x1 - x0) / (y1 - y0)
    return None


def accuracy_per_1k_tokens(acc: float, mean_tokens: float) -> float:
    """Accuracy points earned per 1000 completion tokens: 1000 * acc / mean_tokens."""
    if not mean_tokens > 0:
        raise ValueError(f"accuracy_per_1k_tokens: mean_tokens = {mean_tokens} must be > 0")
    return 1000.0 * acc / mean_tokens


@dataclass(frozen=True)
class EqualTokenVote:
    accuracy: float  # fraction of prompts whose vote over m short traces is correct
    m: int  # votes per prompt
    mean_total_tokens: float  # mean over prompts of the summed thinking tokens of the m voting samples


def majority_at_equal_tokens(samples: Sequence[Sequence[tuple[str | None, float]]], golds: Sequence[str],
                             budget_short: int, budget_long: int, grader: Grader) -> EqualTokenVote:
    """Accuracy of a majority vote over short forced traces that together cost no more than one long trace.

    `samples[i]` holds, for prompt i, (extracted answer, thinking tokens spent) of answers forced at `budget_short`.
    Rule: m = floor(budget_long / budget_short), so the nominal cost m * budget_short never exceeds budget_long; the
    vote uses the first m samples of each prompt (the sample order must not depend on correctness). The tokens the
    m samples actually spent (a trace may end before the short budget) are reported as `mean_total_tokens`.
    """
    _check_golds(len(samples), golds, "majority_at_equal_tokens")
    if not 0 < budget_short <= budget_long:
        raise ValueError(f"majority_at_equal_tokens: need 0 < budget_short ({budget_short}) "
                         f"<= budget_long ({budget_long})")
    m = budget_long // budget_short
    hits, spent = 0, 0.0
    for i, (row, gold) in enumerate(zip(samples, golds)):
        if len(row) < m:
            raise ValueError(f"majority_at_equal_tokens: prompt {i} has {len(row)} samples, the vote needs m = {m} "
                             f"(floor({budget_long} / {budget_short}))")
        voted = majority_vote([answer for answer, _ in row[:m]])
        hits += voted is not None and bool(grader(voted, gold))
        spent += sum(float(t) for _, t in row[:m])
    return EqualTokenVote(accuracy=hits / len(samples), m=m, mean_total_tokens=spent / len(samples))
