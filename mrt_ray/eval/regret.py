"""Cumulative regret of an accuracy-vs-thinking-tokens curve (MRT evaluation).

J(t) is the accuracy of the answer forced after t thinking tokens. From measured points (t_i, J_i) the curve is
piecewise linear: it starts at (0, 0), passes through the measured points sorted by tokens (several measurements at
the same token count are averaged), and is held constant after the last point. A measured point at t = 0 replaces
the (0, 0) anchor (answering with no thinking at all is a real measurement).

normalised regret at budget C0 = 1 - (1/C0) * integral_0^C0 J(t) dt   (comparator J* = 1; lower is better)
"""
from __future__ import annotations

import math
from collections.abc import Sequence

Knots = tuple[list[float], list[float]]  # (token counts ascending, starting at 0; accuracies)


def accuracy_curve(tokens: Sequence[float], accuracy: Sequence[float]) -> Knots:
    """Validated knots of the piecewise-linear J: anchored at (0, 0), sorted, duplicates averaged."""
    if len(tokens) != len(accuracy):
        raise ValueError(f"tokens ({len(tokens)}) and accuracy ({len(accuracy)}) differ in length")
    if not tokens:
        raise ValueError("accuracy curve needs at least one (tokens, accuracy) point; got none")
    sums: dict[float, list[float]] = {}
    for i, (t, a) in enumerate(zip(tokens, accuracy)):
        t, a = float(t), float(a)
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"tokens[{i}] = {t}: token counts must be finite and >= 0")
        if not math.isfinite(a) or not 0.0 <= a <= 1.0:
            raise ValueError(f"accuracy[{i}] = {a}: accuracy must lie in [0, 1]")
        total = sums.setdefault(t, [0.0, 0.0])
        total[0] += a
        total[1] += 1.0
    sums.setdefault(0.0, [0.0, 1.0])
    xs = sorted(sums)
    ys = [sums[x][0] / sums[x][1] for x in xs]
    return xs, ys


def _area(knots: Knots, budget: float) -> float:
    """Integral of J over [0, budget] (exact for the piecewise-linear curve)."""
    xs, ys = knots
    area = 0.0
    for x0, y0, x1, y1 in zip(xs, ys, xs[1:], ys[1:]):
        if x1 >= budget:  # the segment crosses the budget: cut it there by interpolation
            y_cut = y0 + (y1 - y0) * (budget - x0) / (x1 - x0)
            return area + 0.5 * (y0 + y_cut) * (budget - x0)
        area += 0.5 * (y0 + y1) * (x1 - x0)
    return area + ys[-1] * (budget - xs[-1])  # held constant past the last point


def _check_budget(budget: float) -> float:
    budget = float(budget)
    if not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"budget = {budget}: the regret budget C0 must be a finite number > 0")
    return budget


def normalized_regret(tokens: Sequence[float], accuracy: Sequence[float], budget: float) -> float:
    """1 - (1/C0) * integral_0^C0 J(t) dt for the curve through the measured (tokens, accuracy) points."""
    budget = _check_budget(budget)
    return 1.0 - _area(accuracy_curve(tokens, accuracy), budget) / budget


def regret_curve(tokens: Sequence[float], accuracy: Sequence[float], budgets: Sequence[float]) -> list[float]:
    """Normalised regret at each budget in `budgets` (same order)."""
    knots = accuracy_curve(tokens, accuracy)
    return [1.0 - _area(knots, b) / b for b in map(_check_budget, budgets)]
