"""Token budgets carried in the prompt (L1/LCPO, Aggarwal & Welleck 2025, arXiv 2503.04697).

A budget is drawn per prompt from `algo.budget` as a pure function of (seed, stream, index), so a resumed run sees the
budgets an uninterrupted run would. The prompt says it in words: real data appends `algo.budget.cue` ("Think for N
tokens.") or, for a maximum, `algo.budget.max_cue` ("Think for maximum N tokens.") to the question, as L1's data
script does; the embedded task writes the short cue of `mrt_ray.tasks.embedded` before its thinking tag.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from mrt_ray.config import BudgetConfig

KINDS = ("exact", "max")


@dataclass(frozen=True)
class Budget:
    tokens: int  # completion tokens the prompt asks for
    kind: str = "exact"  # exact: use about `tokens` (L1-Exact); max: use at most `tokens` (L1-Max)

    def __post_init__(self):
        if self.tokens < 1:
            raise ValueError(f"a token budget must be >= 1, got {self.tokens}")
        if self.kind not in KINDS:
            raise ValueError(f"budget kind {self.kind!r} is not one of {list(KINDS)}")


def draw_budget(bc: BudgetConfig, seed: int, stream: str, index: int) -> Budget | None:
    """Budget of prompt `index` of `stream`: tokens uniform on the integers [min_tokens, max_tokens] (L1's
    U(n_min, n_max)), a maximum with probability `max_share`; None when budgets are off (max_tokens = 0)."""
    if bc.max_tokens == 0:
        return None
    rng = random.Random(f"{seed}/budget/{stream}/{index}")
    tokens = rng.randint(bc.min_tokens, bc.max_tokens)
    return Budget(tokens, "max" if rng.random() < bc.max_share else "exact")


def cue_text(budget: Budget, exact_cue: str, max_cue: str) -> str:
    """The cue for `budget`: its kind's template with `{n}` replaced by the token count."""
    return (exact_cue if budget.kind == "exact" else max_cue).replace("{n}", str(budget.tokens))


def budget_stats(groups: Sequence[Sequence]) -> dict[str, float]:
    """Per-step adherence of trajectory groups whose prompts carry a budget (problem.meta["budget"]): the mean target,
    the mean |used - target| over all samples, and the share of samples over their budget. Empty when none does."""
    pairs = [(t.length, t.problem.meta["budget"].tokens) for g in groups for t in g
             if t.problem.meta.get("budget") is not None]
    if not pairs:
        return {}
    return {"budget_target_mean": sum(b for _, b in pairs) / len(pairs),
            "budget_abs_error": sum(abs(n - b) for n, b in pairs) / len(pairs),
            "budget_over_share": sum(n > b for n, b in pairs) / len(pairs)}
