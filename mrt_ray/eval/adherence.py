"""Budget adherence (`mrt-ray eval` with eval.targets): how closely a model keeps to a token budget put in its
prompt (L1/LCPO's "Think for N tokens."), and how accurate it is at each budget. Pure aggregation; the sampling is
`EvalRunner.budget_adherence`'s."""
from __future__ import annotations

import math
from collections.abc import Sequence

from mrt_ray.eval.metrics import mean_se, pass_at_1
from mrt_ray.stats import mean_ci


def adherence_row(target: int, correct: Sequence[Sequence[bool]], used: Sequence[Sequence[int]]) -> dict:
    """One target's row from its samples, [prompt][sample]: pass@1 and its stderr over prompts, the mean completion
    tokens used and its stderr over prompts, the mean |used - target| over all samples, the share of samples over
    the target, and the relative error mean(|used - target|) / target."""
    if len(correct) != len(used) or any(len(c) != len(u) for c, u in zip(correct, used)):
        raise ValueError("adherence_row: correct flags and token counts differ in shape")
    acc, se = pass_at_1(correct)
    mean, used_se = mean_se([sum(u) / len(u) for u in used])
    flat = [n for u in used for n in u]
    abs_err = sum(abs(n - target) for n in flat) / len(flat)
    return {"target": target, "accuracy": acc, "accuracy_se": 0.0 if math.isnan(se) else se, "used_mean": mean,
            "used_se": used_se, "abs_error_mean": abs_err, "rel_error_mean": abs_err / target,
            "over_share": sum(n > target for n in flat) / len(flat)}


def over_seeds(evals: dict[int, dict], models: list[str]) -> dict[str, dict[int, dict]]:
    """Per model with adherence rows, per target: the mean over seeds (95% t interval) of the tokens used, the mean
    |used - target|, the share over the target and pass@1 (`evals`: seed -> {"models": {model: eval results}})."""
    out: dict[str, dict[int, dict]] = {}
    for m in models:
        rows = [r for ev in evals.values() for r in ev["models"].get(m, {}).get("budget_adherence") or []]
        for t in sorted({r["target"] for r in rows}):
            at = [r for r in rows if r["target"] == t]
            out.setdefault(m, {})[t] = {k: mean_ci([r[k] for r in at])
                                        for k in ("used_mean", "abs_error_mean", "over_share", "accuracy")}
    return out
