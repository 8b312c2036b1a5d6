"""Prompt construction for budget forcing (token-id logic only, no model).

For a budget B of thinking tokens and a trace whose natural thinking has L tokens:
  B <= L: cut the thinking after B tokens and force an answer (`cut_thinking` + `force_answer_prompt`);
  B >  L: strip the close tag, append a continuation marker ("\\n\\nWait") and let the model think on
          (`extend_prompt`); the marker counts as thinking, so B - L - len(marker) new tokens are generated.
`think_close_ids` should be the ids of the close tag exactly as the model emits it, with any leading newline that is
part of the forcing text (e.g. the ids of "\\n</think>"), so a cut trace ends on the last thinking character and
the forcing text or marker attaches in distribution.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


def _find(seq: Sequence[int], sub: Sequence[int]) -> int:
    """Start of the first occurrence of `sub` in `seq`, or len(seq) if absent."""
    n = len(sub)
    for i in range(len(seq) - n + 1):
        if list(seq[i:i + n]) == list(sub):
            return i
    return len(seq)


def cut_thinking(completion_ids: Sequence[int], budget: int, think_close_ids: Sequence[int]) -> list[int]:
    """The first `budget` thinking tokens, stopping before the close tag if it starts earlier."""
    if budget < 0:
        raise ValueError(f"cut_thinking: budget = {budget} must be >= 0")
    if not think_close_ids:
        raise ValueError("cut_thinking: think_close_ids is empty; pass the token ids of the close tag")
    end = min(budget, _find(completion_ids, think_close_ids))
    return list(completion_ids[:end])


def force_answer_prompt(prompt_ids: Sequence[int], thinking_ids: Sequence[int], force_ids: Sequence[int]) -> list[int]:
    """prompt + thinking + forced termination (e.g. "\\n</think>\\n#### "): the model continues with its answer."""
    if not force_ids:
        raise ValueError("force_answer_prompt: force_ids is empty; pass the ids of the forcing text")
    return [*prompt_ids, *thinking_ids, *force_ids]


def extend_prompt(prompt_ids: Sequence[int], thinking_ids: Sequence[int], continue_ids: Sequence[int],
                  think_close_ids: Sequence[int]) -> list[int]:
    """prompt + thinking (cut before its close tag, answer dropped) + continuation marker: the model thinks on."""
    if not continue_ids:
        raise ValueError("extend_prompt: continue_ids is empty; pass the ids of the marker (e.g. '\\n\\nWait')")
    return [*prompt_ids, *cut_thinking(thinking_ids, len(thinking_ids), think_close_ids), *continue_ids]


@dataclass(frozen=True)
class BudgetStep:
    budget: int  # thinking tokens allowed
    kind: Literal["cut", "extend"]
    keep: int  # tokens of the natural thinking kept (min(budget, natural length))
    new_tokens: int  # extend: tokens to generate after the marker; cut: 0


@dataclass(frozen=True)
class BudgetPlan:
    """Which budgets are served by cutting the natural thinking and which need an extension, and by how much.

    A budget that exceeds the natural length L by no more than the marker length cannot fit the marker plus one new
    token: it is served by the whole natural thinking (a cut keeping L tokens), so no budget is ever overspent.
    """

    natural_length: int
    marker_len: int
    steps: tuple[BudgetStep, ...]

    @classmethod
    def build(cls, budgets: Sequence[int], natural_length: int, marker_len: int) -> BudgetPlan:
        if natural_length < 0:
            raise ValueError(f"BudgetPlan: natural_length = {natural_length} must be >= 0")
        if marker_len < 1:
            raise ValueError(f"BudgetPlan: marker_len = {marker_len} must be >= 1 (the continuation marker's ids)")
        steps = []
        for i, b in enumerate(budgets):
            if b < 1:
                raise ValueError(f"BudgetPlan: budgets[{i}] = {b} must be >= 1")
            new = b - natural_length - marker_len
            if new >= 1:
                steps.append(BudgetStep(b, "extend", natural_length, new))
            else:
                steps.append(BudgetStep(b, "cut", min(b, natural_length), 0))
        return cls(natural_length, marker_len, tuple(steps))

    @property
    def cuts(self) -> list[int]:
        """Budgets served by cutting (or keeping whole) the natural thinking."""
        return [s.budget for s in self.steps if s.kind == "cut"]

    @property
    def extensions(self) -> list[int]:
        """Budgets that need the model to think past its natural end."""
        return [s.budget for s in self.steps if s.kind == "extend"]

    @property
    def max_new_tokens(self) -> int:
        """Tokens one extension must generate to serve every extended budget (cut the result per budget); 0 if none."""
        return max((s.new_tokens for s in self.steps if s.kind == "extend"), default=0)
