"""Per-difficulty evaluation: how a model's accuracy and thinking follow problem difficulty (Arora & Zanette's claim
is that compute should follow difficulty), and how much of its thinking is redundant (the over-thinking that both
papers exist to remove). Pure functions over evaluated traces; no Ray, no model.

A trace is described by a `TraceRecord`: its problem's difficulty (`Problem.meta["difficulty"]`: the embedded task's
number of terms, or a data row's `task.difficulty_key` such as MATH's `level`), whether its own answer was right,
its completion and thinking token counts, and, when the episode stage ran, J after each episode boundary
[J(c_-1), J(c_0), ..., J(c_k)] with the thinking tokens at each boundary [0, cut_0, ..., cut_k].

Per bucket:
- accuracy (pass@1 with its standard error over prompts) and completion tokens (mean, and its SE over prompts);
- share_after_first_correct: of all thinking tokens, the share spent after the first episode whose forced answer is
  already right (J(c_j) >= 0.5), summed over the bucket's traces (a trace never right there contributes 0 tokens
  after and all its tokens to the total);
- flip_rate: of the traces that had a right forced answer after some episode, the share whose own final answer is
  wrong (thinking that turned a right answer wrong);
- progress_by_episode: mean J(c_j) - J(c_{j-1}) of episode j over the traces that have it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from mrt_ray.eval.metrics import pass_at_1
from mrt_ray.progress.estimate import mean_progress_by_episode, progress

RIGHT = 0.5  # J(c_j) at or above this: the forced answer after episode j counts as right


@dataclass
class TraceRecord:
    prompt: int  # index of its prompt (several samples per prompt)
    difficulty: object  # a number or a label; None: unknown
    correct: bool  # its own final answer
    tokens: int  # completion tokens
    thinking: int  # thinking tokens (up to the close tag)
    j: list[float] = field(default_factory=list)  # J(c_-1), J(c_0), ..., J(c_k); empty: no episode stage
    cuts: list[int] = field(default_factory=list)  # thinking tokens at each J point: 0, cut_0, ..., cut_k


def _sort_key(value: object) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    digits = "".join(ch for ch in str(value) if ch.isdigit())
    return (1, float(digits) if digits else math.inf, str(value))  # "Level 2" < "Level 10"


def tokens_after_first_right(r: TraceRecord) -> int:
    """Thinking tokens after the first episode whose forced answer is right; 0 if none is."""
    for jv, cut in zip(r.j[1:], r.cuts[1:]):
        if jv >= RIGHT:
            return max(0, r.thinking - cut)
    return 0


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else 0.0
    return mean, se


def bucket_row(records: Sequence[TraceRecord]) -> dict:
    """The table row of one difficulty bucket (see the module docstring)."""
    by_prompt: dict[int, list[TraceRecord]] = {}
    for r in records:
        by_prompt.setdefault(r.prompt, []).append(r)
    acc, acc_se = pass_at_1([[r.correct for r in rs] for rs in by_prompt.values()])
    tok, tok_se = _mean_se([sum(r.tokens for r in rs) / len(rs) for rs in by_prompt.values()])
    row = {"prompts": len(by_prompt), "traces": len(records), "accuracy": acc,
           "accuracy_se": 0.0 if math.isnan(acc_se) else acc_se, "tokens_mean": tok, "tokens_se": tok_se,
           "thinking_mean": sum(r.thinking for r in records) / len(records)}
    with_j = [r for r in records if r.j]
    if with_j:
        total = sum(r.thinking for r in with_j)
        row["share_after_first_correct"] = sum(map(tokens_after_first_right, with_j)) / total if total else 0.0
        ever_right = [r for r in with_j if any(v >= RIGHT for v in r.j[1:])]
        row["flip_rate"] = (sum(not r.correct for r in ever_right) / len(ever_right)) if ever_right else None
        row["progress_by_episode"] = mean_progress_by_episode([progress(r.j) for r in with_j])
    return row


def by_difficulty(records: Sequence[TraceRecord]) -> list[dict]:
    """One row per difficulty value (ascending; unknown difficulty last as "unknown"), each with its `difficulty`."""
    buckets: dict[object, list[TraceRecord]] = {}
    for r in records:
        buckets.setdefault("unknown" if r.difficulty is None else r.difficulty, []).append(r)
    order = sorted((k for k in buckets if k != "unknown"), key=_sort_key)
    order += ["unknown"] if "unknown" in buckets else []
    return [{"difficulty": k, **bucket_row(buckets[k])} for k in order]
