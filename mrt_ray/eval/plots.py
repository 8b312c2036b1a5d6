"""Evaluation plots as PNG files (matplotlib Agg canvas; pyplot and its global backend are not touched).

Every function draws several models on one axes, creates the parent folder and returns the written path.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _new_axes(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Figure, ax: Axes, path: str | Path, legend: bool = True) -> Path:
    if legend:
        ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _check(results: Mapping | Sequence, what: str) -> None:
    if not results:
        raise ValueError(f"{what}: nothing to plot")
    if isinstance(results, Mapping):
        for name, series in results.items():
            if not series:
                raise ValueError(f"{what}: model {name!r} has no points")


def _lines_with_errors(ax: Axes, results: Mapping[str, Sequence[tuple[float, float, float]]]) -> None:
    """One line per model through its (x, y, stderr of y) points, sorted by x, with error bars."""
    for name, series in results.items():
        x, y, err = zip(*sorted(series))
        ax.errorbar(x, y, yerr=err, marker="o", markersize=4, capsize=3, label=name)


def plot_accuracy_vs_tokens(results: Mapping[str, Sequence[tuple[float, float, float]]], path: str | Path,
                            title: str = "Accuracy vs thinking tokens", xlabel: str = "thinking tokens (budget)"
                            ) -> Path:
    """Accuracy (with stderr bars) against tokens, one line per model: by default forced-answer accuracy against the
    thinking-token budget; budget adherence passes its own title and label (accuracy at each budget in the prompt)."""
    _check(results, "plot_accuracy_vs_tokens")
    fig, ax = _new_axes(title, xlabel, "accuracy")
    _lines_with_errors(ax, results)
    ax.set_ylim(-0.02, 1.02)
    return _save(fig, ax, path)


def plot_regret_vs_budget(results: Mapping[str, Sequence[tuple[float, float]]], path: str | Path) -> Path:
    """Normalised cumulative regret against the budget C0, one line per model (lower is better)."""
    _check(results, "plot_regret_vs_budget")
    fig, ax = _new_axes("Normalised regret vs budget (lower is better)", "budget C0 (thinking tokens)", "regret")
    for name, series in results.items():
        budgets, regret = zip(*sorted(series))
        ax.plot(budgets, regret, marker="o", markersize=4, label=name)
    ax.set_ylim(-0.02, 1.02)
    return _save(fig, ax, path)


def plot_j_by_episode(results: Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """J (forced-answer accuracy) after each episode 0, 1, ..., one line per model."""
    _check(results, "plot_j_by_episode")
    fig, ax = _new_axes("Forced-answer accuracy by episode", "episode j (answer forced after episodes 0..j)",
                        "J (forced-answer accuracy)")
    for name, series in results.items():
        ax.plot(range(len(series)), series, marker="o", markersize=4, label=name)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylim(-0.02, 1.02)
    return _save(fig, ax, path)


def plot_pareto(points: Sequence[tuple[str, float, float, float, float]], path: str | Path,
                labels: tuple[str, str, str] = ("Accuracy vs completion tokens", "mean completion tokens",
                                                "accuracy")) -> Path:
    """Accuracy against mean completion tokens, one labelled point per (label, tokens, acc, acc_se, tokens_se);
    `labels`: title, x and y axis (e.g. for paired changes)."""
    _check(points, "plot_pareto")
    fig, ax = _new_axes(*labels)
    for label, tokens, acc, acc_se, tokens_se in points:
        ax.errorbar([tokens], [acc], xerr=[tokens_se], yerr=[acc_se], marker="o", markersize=5, capsize=3)
        ax.annotate(label, (tokens, acc), textcoords="offset points", xytext=(5, 5), fontsize="small")
    ax.margins(x=0.15, y=0.15)
    return _save(fig, ax, path, legend=False)


def plot_by_difficulty(results: Mapping[str, Sequence[tuple[object, float, float]]], path: str | Path,
                       ylabel: str, title: str) -> Path:
    """A per-difficulty quantity (with stderr bars) against the difficulty buckets, one line per model.
    `results[model]`: (difficulty, value, se) in bucket order; labels may be numbers or text (MATH's levels)."""
    _check(results, "plot_by_difficulty")
    fig, ax = _new_axes(title, "difficulty", ylabel)
    labels: list[str] = []
    for series in results.values():
        labels += [str(d) for d, _, _ in series if str(d) not in labels]
    pos = {d: i for i, d in enumerate(labels)}
    for name, series in results.items():
        xs = [pos[str(d)] for d, _, _ in series]
        ax.errorbar(xs, [v for _, v, _ in series], yerr=[e for _, _, e in series], marker="o", markersize=4,
                    capsize=3, label=name)
    ax.set_xticks(range(len(labels)), labels)
    return _save(fig, ax, path)


def plot_used_vs_target(results: Mapping[str, Sequence[tuple[float, float, float]]], path: str | Path) -> Path:
    """Mean completion tokens used (with stderr bars) against the token budget in the prompt, one line per model, and
    the diagonal used = target (perfect adherence)."""
    _check(results, "plot_used_vs_target")
    fig, ax = _new_axes("Budget adherence", "target tokens (budget in the prompt)", "completion tokens used")
    top = max(max(t for t, _, _ in s) for s in results.values())
    ax.plot([0, top], [0, top], linestyle="--", color="gray", linewidth=1, label="used = target")
    _lines_with_errors(ax, results)
    return _save(fig, ax, path)

