"""The embedded task's backtracking-search traces (`task.traces=backtrack`): MRT's parameterisation for Llama-3.x.

Qu et al. 2025 fine-tune Llama-3.x on linearised searches: numbered steps ("Node #"), an attempt that ends in an
answer, an explicit backtrack line ("Backtrack to Line N": keep the steps before Node N and redo from it; "Backtrack to
beginning": start over), then the next attempt. An episode is one attempt. This module writes such searches for the
chain-arithmetic problems of `embedded.make_problem` (the same prompts and eval problems as the r1 traces):

    3+5-2+4-1=?
    <think>
    Node 1: 3+5-2=6
    Node 2: 6+4-1=8           <- a slip (9 is right), carried to the attempt's answer
    so 8                      <- attempt 0 ends with its own answer
    Backtrack to Line 2       <- attempt 1 keeps Node 1 and redoes from Node 2, one operation per step
    Node 2: 6+4=10
    Node 3: 10-1=9
    so 9                      <- the final attempt's answer ...
    </think>
    #### 9                    <- ... is the one given after the close tag

Searches, drawn per problem from a mix that moves linearly with difficulty (`MIX_EASY` at task.min_terms, `MIX_HARD`
at task.max_terms; harder problems get more slips):
  direct    - one right attempt (one or two operations per step), no backtrack
  line      - a concise attempt (two operations per step, the error-prone format) with one slip, "Backtrack to Line N"
              at the slipped step N, and a stepwise redo from Node N
  beginning - the same slip, "Backtrack to beginning" and a stepwise redo from Node 1
  deep      - two concise attempts with slips ("Backtrack to beginning" between them), then "Backtrack to Line N" and
              a stepwise fix of the second: a deeper search
  redundant - a right attempt, "Backtrack to beginning" and a stepwise redo with the same answer: search that makes no
              progress (the over-thinking MRT's progress bonus should remove)
Every search ends with the right answer. Segmentation with `progress.segment.separator=lines` and the marker
"Backtrack to" (conf/task/embedded_backtrack.yaml) makes each attempt one episode; the backtrack line opens the attempt
it starts, as in the reference's prefixes that end before it (`ATTEMPTS`).
"""
from __future__ import annotations

import random
import re

from mrt_ray.config import SegmentConfig
from mrt_ray.episodes import segment
from mrt_ray.tasks import Problem
from mrt_ray.tasks.embedded import FORCE_TEXT, THINK_CLOSE, THINK_OPEN, _rng, _steps, task_problem

BACKTRACK = "Backtrack to"  # the episode marker: both backtrack lines start with it
TO_LINE = "Backtrack to Line {n}"
TO_BEGINNING = "Backtrack to beginning"
ANSWER_LINE = "so {ans}"  # ends every attempt
SEARCHES = ("direct", "line", "beginning", "deep", "redundant")
MIX_EASY = {"direct": 0.45, "line": 0.1, "beginning": 0.1, "deep": 0.0, "redundant": 0.35}
MIX_HARD = {"direct": 0.2, "line": 0.25, "beginning": 0.25, "deep": 0.15, "redundant": 0.15}
FORMAT = 1  # bump when the traces change: it is part of the bootstrap cache key of this family
# the episode rule of these traces: every attempt is one episode, however many (the vote's view of a search)
ATTEMPTS = SegmentConfig(markers=[BACKTRACK], min_gap=0, max_steps=10**6, separator="lines")
_ANSWER = re.compile(r"^so (\S+)$", re.MULTILINE)


def _attempt(terms: list[int], ops: list[str], per_line: int, first_node: int = 1,
             wrong_at: int = -1) -> tuple[list[str], int]:
    """An attempt's lines ("Node k: ..." steps, then "so <answer>") and its answer; a slip at step `wrong_at`."""
    lines, ans = _steps(terms, ops, per_line, wrong_at)
    return [f"Node {first_node + k}: {line}" for k, line in enumerate(lines)] + [ANSWER_LINE.format(ans=ans)], ans


def _redo_from(terms: list[int], ops: list[str], per_line: int, node: int) -> list[str]:
    """A stepwise redo from Node `node` of an attempt written `per_line` operations per step (the steps before it
    are kept: their value is the start)."""
    done = (node - 1) * per_line  # operations covered by the kept steps
    _, start = _steps(terms[:done + 1], ops[:done], per_line)
    lines, _ = _attempt([start] + terms[done + 1:], ops[done:], 1, first_node=node)
    return lines


def search_trace(problem: Problem, rng: random.Random) -> str:
    """A linearised search for `problem` (thinking, closing tag, answer); it ends with the right answer."""
    terms, ops = problem.meta["terms"], problem.meta["ops"]
    frac = problem.meta.get("difficulty_frac", 0.0)
    mix = {s: (1 - frac) * MIX_EASY[s] + frac * MIX_HARD[s] for s in SEARCHES}
    kind = rng.choices(SEARCHES, weights=list(mix.values()))[0]
    concise_steps = max(1, (len(ops) + 1) // 2)
    if kind in ("direct", "redundant"):
        lines, _ = _attempt(terms, ops, per_line=rng.choice((1, 2)))
        if kind == "redundant":
            lines += [TO_BEGINNING] + _attempt(terms, ops, per_line=1)[0]
    elif kind in ("line", "beginning"):
        slip = rng.randrange(concise_steps)
        lines, _ = _attempt(terms, ops, per_line=2, wrong_at=slip)
        if kind == "line":
            lines += [TO_LINE.format(n=slip + 1)] + _redo_from(terms, ops, 2, slip + 1)
        else:
            lines += [TO_BEGINNING] + _attempt(terms, ops, per_line=1)[0]
    else:  # deep
        first, _ = _attempt(terms, ops, per_line=2, wrong_at=rng.randrange(concise_steps))
        slip = rng.randrange(concise_steps)
        second, _ = _attempt(terms, ops, per_line=2, wrong_at=slip)
        lines = first + [TO_BEGINNING] + second + [TO_LINE.format(n=slip + 1)] + _redo_from(terms, ops, 2, slip + 1)
    final = _ANSWER.findall(lines[-1])
    assert final == [problem.answer], (final, problem.answer)
    return "\n".join(lines) + FORCE_TEXT + problem.answer


def search_example(tc, seed: int, index: int) -> tuple[Problem, str]:
    """SFT example `index`: the problem (stream "sft", as the r1 traces) and its search; a pure function of
    (task shape, seed, index)."""
    problem = task_problem(tc, seed, "sft", index)
    return problem, search_trace(problem, _rng(seed, "search", index))


def suffix_start(trace: str) -> int:
    """Offset of the attempt after the last backtrack line (just after that line's newline): what the reference's
    suffix-only SFT trains on; 0 when the trace has no backtrack."""
    at = trace.rfind("\n" + BACKTRACK)
    return 0 if at < 0 else trace.index("\n", at + 1) + 1


def attempt_answers(text: str, think_open: str = THINK_OPEN, think_close: str = THINK_CLOSE) -> list[str | None]:
    """Per attempt (episode of `ATTEMPTS`) of the thinking region of `text`, the answer of its last "so X" line; None
    for an attempt without one (cut short)."""
    out = []
    for ep in segment(text, ATTEMPTS, think_open, think_close):
        found = _ANSWER.findall(ep.text)
        out.append(found[-1] if found else None)
    return out
