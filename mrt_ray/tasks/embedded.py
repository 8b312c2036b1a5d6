"""The embedded reasoning task: chain arithmetic with R1-shaped traces.

A problem is a chain of single-digit additions and subtractions (`min_terms`..`max_terms` terms). The prompt ends by
opening the thinking region; a trace is one or more *episodes* (paragraphs separated by a blank line, later episodes
starting with "Wait"), then the closing tag and the answer after "#### ":

    3+5-2=?                    <- prompt
    <think>
    3+5=8
    8-2=6                      <- episode 0 (stepwise)
                               <- blank line
    Wait, let me check.
    3+5=8
    8-2=6                      <- episode 1 (a redundant re-check: no progress)
    </think>
    #### 6

Forcing an answer after any prefix appends FORCE_TEXT ("\n</think>\n#### "), exactly the text that ends every
training trace, so the meta-prover is in-distribution. Trace styles:
  concise  - two operations per line, one episode
  stepwise - one operation per line, one episode
  confirm  - a solution (one or two operations per line), then 1-3 episodes that CONFIRM it: each restates the
             expression and the value already found ("Wait, check: 3+5-2=6"). They hold no progress and copy rather
             than recompute, so they rarely turn a right answer wrong: the redundant thinking of R1-style models,
             which outcome-reward RL has no reason to remove. Easier problems get more of them.
  verbose  - stepwise, then 1-2 re-check episodes that RECOMPUTE the chain (the first testbed's redundancy; a
             recomputation sampled at temperature 1 can turn a right answer wrong, so GRPO alone removes it)
  repair   - a concise attempt (two operations per line, the error-prone format) with one wrong step, then a "Wait"
             episode that redoes the chain step by step (one operation per line) and gets it right. Weight 0 by
             default: outcome RL rewards the whole trace, the deliberate slip included, and amplified slips until
             the policy's arithmetic broke (docs/results.md); natural slips are repaired by `recheck`
  recheck  - a concise attempt, then "Wait, let me redo it step by step." and the stepwise chain (the base policy
             learns to copy the attempt's value into the redo: no progress)
  estimate - a rough estimate ("3+5-2 is about 5", off by one half the time), then "Wait, let me compute it
             exactly." and the stepwise chain: the later episode holds real progress (the forced answer after the
             estimate is right about half the time, after the computation as often as the arithmetic is right), and
             no equation in the data is wrong, so outcome RL has no slip to amplify (the hard problems' default)
Difficulty is the number of terms, recorded per problem (`meta["difficulty"]`); the bootstrap's style mix depends on
it (`bootstrap.style_weights_easy` at task.min_terms, `style_weights_hard` at task.max_terms, linear in between).
"""
from __future__ import annotations

import hashlib
import random

from mrt_ray.tasks import Problem

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
ANSWER_MARK = "#### "
FORCE_TEXT = f"\n{THINK_CLOSE}\n{ANSWER_MARK}"
STYLES = ("concise", "stepwise", "confirm", "verbose", "repair", "recheck", "estimate")
CHECK_LINES = ("Wait, let me check.", "Wait, check again.")
CONFIRM_LINES = ("Wait, check: {expr}={ans}", "But wait, {expr}={ans}", "Wait, again: {expr}={ans}")
REPAIR_LINE = "Wait, that step looks wrong."
RECHECK_LINE = "Wait, let me redo it step by step."
EXACT_LINE = "Wait, let me compute it exactly."
BUDGET_CUE, BUDGET_MAX_CUE = " [{n}]", " [<{n}]"  # L1 budget cues: "3+5-2=? [48]" / "3+5-2=? [<48]" before <think>


def _rng(seed: int, stream: str, index: int) -> random.Random:
    digest = hashlib.sha256(f"{seed}/{stream}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def make_problem(seed: int, stream: str, index: int, min_terms: int = 2, max_terms: int = 8,
                 max_operand: int = 9, max_value: int = 29) -> Problem:
    """Problem `index` of `stream` ("train" or "eval"); a pure function of its arguments. The running value stays
    in [0, max_value] (an operation that would leave it is flipped), so every step is a small table lookup."""
    rng = _rng(seed, stream, index)
    n = rng.randint(min_terms, max_terms)
    terms = [rng.randint(0, max_operand) for _ in range(n)]
    ops, value = [], terms[0]
    for t in terms[1:]:
        op = rng.choice("+-")
        if (op == "+" and value + t > max_value) or (op == "-" and value - t < 0):
            op = "-" if op == "+" else "+"
        value = value + t if op == "+" else value - t
        ops.append(op)
    expr = str(terms[0]) + "".join(f"{o}{t}" for o, t in zip(ops, terms[1:]))
    return Problem(
        id=f"{stream}-{index}",
        prompt=f"{expr}=?\n{THINK_OPEN}\n",
        answer=str(value),
        meta={"terms": terms, "ops": ops, "num_terms": n, "expr": expr, "difficulty": n,
              "difficulty_frac": (n - min_terms) / max(1, max_terms - min_terms)},
    )


def _steps(terms: list[int], ops: list[str], per_line: int, wrong_at: int = -1) -> tuple[list[str], int]:
    """Lines computing the chain `per_line` operations at a time; a wrong result at line `wrong_at`."""
    lines, acc, i = [], terms[0], 0
    while i < len(ops):
        chunk = list(zip(ops[i:i + per_line], terms[i + 1:i + 1 + per_line]))
        lhs = str(acc) + "".join(f"{o}{t}" for o, t in chunk)
        for o, t in chunk:
            acc = acc + t if o == "+" else acc - t
        if len(lines) == wrong_at:
            acc += 1 if (acc + i) % 2 or acc == 0 else -1  # an off-by-one slip, carried forward
        lines.append(f"{lhs}={acc}")
        i += per_line
    if not lines:  # a single term
        lines.append(f"{terms[0]}={terms[0]}")
    return lines, acc


def make_trace(problem: Problem, style: str, rng: random.Random) -> str:
    """A completion for `problem` in `style` (thinking, closing tag, answer); it ends with the correct answer."""
    terms, ops = problem.meta["terms"], problem.meta["ops"]
    if style == "concise":
        lines, ans = _steps(terms, ops, per_line=2)
        episodes = ["\n".join(lines)]
    elif style == "stepwise":
        lines, ans = _steps(terms, ops, per_line=1)
        episodes = ["\n".join(lines)]
    elif style == "confirm":
        lines, ans = _steps(terms, ops, per_line=rng.choice((1, 2)))
        checks = [CONFIRM_LINES[k % len(CONFIRM_LINES)] for k in range(confirmations(problem, rng))]
        episodes = ["\n".join(lines)] + [c.format(expr=problem.meta["expr"], ans=ans) for c in checks]
    elif style == "verbose":
        lines, ans = _steps(terms, ops, per_line=1)
        n_checks = 2 if len(terms) <= 4 else 1
        episodes = ["\n".join(lines)] + [f"{CHECK_LINES[k]}\n" + "\n".join(lines) for k in range(n_checks)]
    elif style == "repair":
        bad, _ = _steps(terms, ops, per_line=2, wrong_at=rng.randrange(max(1, (len(ops) + 1) // 2)))
        lines, ans = _steps(terms, ops, per_line=1)
        episodes = ["\n".join(bad), f"{REPAIR_LINE}\n" + "\n".join(lines)]
    elif style == "estimate":
        value = int(problem.answer)
        guess = value + rng.choice((0, 0, 1, -1)) if value > 0 else value + rng.choice((0, 1))
        lines, ans = _steps(terms, ops, per_line=1)
        episodes = [f"{problem.meta['expr']} is about {guess}", f"{EXACT_LINE}\n" + "\n".join(lines)]
    elif style == "recheck":
        first, _ = _steps(terms, ops, per_line=2)
        lines, ans = _steps(terms, ops, per_line=1)
        episodes = ["\n".join(first), f"{RECHECK_LINE}\n" + "\n".join(lines)]
    else:
        raise ValueError(f"unknown trace style {style!r}; choose one of {STYLES}")
    assert str(ans) == problem.answer
    return "\n\n".join(episodes) + FORCE_TEXT + problem.answer


def confirmations(problem: Problem, rng: random.Random) -> int:
    """Confirming episodes after a solution: 3 on the easiest problems, 1 on the hardest, interpolated (randomly
    rounded) in between."""
    base = 3.0 - 2.0 * problem.meta.get("difficulty_frac", 0.0)
    return int(base + rng.random())


def style_weights(easy: dict[str, float], hard: dict[str, float], frac: float) -> dict[str, float]:
    """The trace-style mix of a problem at relative difficulty `frac` in [0, 1]: linear from `easy` to `hard`."""
    unknown = (set(easy) | set(hard)) - set(STYLES)
    if unknown:
        raise ValueError(f"bootstrap.style_weights_*: unknown styles {sorted(unknown)}; choose from {list(STYLES)}")
    return {s: (1 - frac) * easy.get(s, 0.0) + frac * hard.get(s, 0.0) for s in STYLES}


def grade(completion: str, answer: str) -> bool:
    """Exact grader: the integer after the last '#### ' equals the gold answer."""
    pos = completion.rfind(ANSWER_MARK.strip())
    if pos < 0:
        return False
    tail = completion[pos + len(ANSWER_MARK.strip()):].strip().split()
    if not tail:
        return False
    try:
        return int(tail[0]) == int(answer)
    except ValueError:
        return False


def cued_prompt(prompt: str, cue: str) -> str:
    """`prompt` with a budget cue after the question, before the opening thinking tag."""
    head, tag, tail = prompt.rpartition(f"\n{THINK_OPEN}")
    return f"{head}{cue}{tag}{tail}"


def task_problem(tc, seed: int, stream: str, index: int) -> Problem:
    """`make_problem` with the shape taken from a TaskConfig."""
    return make_problem(seed, stream, index, tc.min_terms, tc.max_terms, tc.max_operand, tc.max_value)
