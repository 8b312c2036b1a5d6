"""The report's figures, each a PNG returned as a data: URI (matplotlib's Agg canvas; pyplot's global state is not
touched). One colour per group of runs; a group of several seeds is drawn as its mean with a shaded 95% confidence
interval (t over seeds), a single run as its raw values (faint) under a trailing mean. Every function returns None
when its runs logged nothing it draws."""
from __future__ import annotations

import base64
import io
import math

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mrt_ray.report.runs import Eval, Group, group_series

STAGES = [("generate_seconds", "generate"), ("estimate_seconds", "estimate (MRT)"), ("score_seconds", "score"),
          ("continue_seconds", "continuations (MRT)"), ("learn_seconds_wall", "learn"), ("push_seconds", "push")]


def colours(n: int) -> list:
    return [colormaps["tab10"](i % 10) for i in range(n)]


def _figure(ncols: int, nrows: int = 1, width: float = 4.6, height: float = 3.4) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width * ncols, height * nrows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


def png(fig: Figure) -> str:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _window(groups: list[Group]) -> int:
    """Trailing-mean window for training curves: about 1/20 of the longest run."""
    n = max((len(r.series("step_seconds")[0]) for g in groups for r in g.runs), default=0)
    return max(1, n // 20)


def _curve(ax: Axes, groups: list[Group], key: str, title: str, ylabel: str, evals: bool = False,
           each: bool = False) -> bool:
    """One metric, one line per group (`each`: one line per run, in its group's colour); False when no run logged
    it."""
    drawn, window = False, 1 if evals else _window(groups)
    for g, c in zip(groups, colours(len(groups))):
        x, mean, half = group_series(g, key, evals, window)
        if len(x) == 0:
            continue
        drawn = True
        label = g.label + (f" (n={len(g.runs)})" if len(g.runs) > 1 else "")
        if each:
            for i, r in enumerate(g.runs):
                ax.plot(*r.series(key), color=c, linewidth=0.9, label=label if i == 0 else None)
            continue
        if evals:
            if len(g.runs) == 1:  # one run: the evaluation's own standard error over prompts
                half = np.nan_to_num(g.runs[0].series(f"{key}_se", True)[1]) if g.runs[0].has(f"{key}_se") else None
                half = half if half is not None and len(half) == len(x) else None
            ax.errorbar(x, mean, yerr=half, marker="o", markersize=4, capsize=3, color=c, label=label)
            continue
        if len(g.runs) == 1 and window > 1:
            ax.plot(*g.runs[0].series(key), color=c, alpha=0.25, linewidth=0.8)
        ax.plot(x, mean, color=c, label=label)
        if len(g.runs) > 1:
            ax.fill_between(x, mean - half, mean + half, color=c, alpha=0.2, linewidth=0)
    ax.set(title=title, xlabel="training step", ylabel=ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)
    return drawn


def learning_curves(groups: list[Group]) -> str | None:
    """Training reward, accuracy and completion tokens; held-out sampled accuracy, tokens and greedy accuracy."""
    w = _window(groups)
    smooth = f" ({w}-step mean)" if w > 1 else ""
    panels = [("reward", "training reward" + smooth, "reward", False),
              ("accuracy", "training accuracy" + smooth, "accuracy", False),
              ("tokens_mean", "completion tokens" + smooth, "mean tokens", False),
              ("eval/sampled_accuracy", "held-out sampled accuracy", "accuracy", True),
              ("eval/sampled_tokens_mean", "held-out sampled tokens", "mean tokens", True),
              ("eval/greedy_accuracy", "held-out greedy accuracy", "accuracy", True)]
    fig, axes = _figure(3, 2)
    drawn = [_curve(ax, groups, *p) for ax, p in zip(axes, panels)]
    if not any(drawn):
        return None
    for ax, d in zip(axes, drawn):
        if not d:
            ax.set_axis_off()
    axes[drawn.index(True)].legend(fontsize="small")
    return png(fig)


def step_times(groups: list[Group]) -> str | None:
    """Where a step's time goes (mean seconds per stage, per group) and the step time over training."""
    stages = [(k, name) for k, name in STAGES if any(r.has(k) for g in groups for r in g.runs)]
    if not stages:
        return None
    fig, (bars, line) = _figure(2, width=6.2, height=1.6 + 0.5 * max(len(groups), 4))
    labels = [g.label for g in groups]
    left = np.zeros(len(groups))
    stage_colour = dict(zip((k for k, _ in STAGES), colours(len(STAGES))))  # the same colour in every report
    for key, name in stages:
        c = stage_colour[key]
        means = np.array([np.nanmean([np.mean(r.series(key)[1]) if r.has(key) else 0.0 for r in g.runs])
                          for g in groups])
        bars.barh(labels, means, left=left, color=c, label=name)
        left += means
    total = [np.nanmean([np.mean(r.series("step_seconds")[1]) if r.has("step_seconds") else np.nan for r in g.runs])
             for g in groups]
    bars.scatter(total, labels, marker="|", s=300, color="black", label="whole step", zorder=3)
    bars.set(title="mean seconds per step, by stage", xlabel="seconds")
    bars.invert_yaxis()
    bars.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=4)
    _curve(line, groups, "step_seconds", f"step time ({_window(groups)}-step mean)", "seconds")
    line.legend(fontsize="small")
    return png(fig)


def push_checks(groups: list[Group]) -> str | None:
    """The weight push per step: its seconds, the probe's log-prob gap after it, and the learner-rollout log-prob
    difference of the trained tokens."""
    panels = [("push_seconds", "weight push time", "seconds"),
              ("push_probe_diff", "push probe: max |log-prob gap|", "nats (log scale)"),
              ("logprob_diff", "learner vs rollout log-probs", "mean |difference| per token (log scale)")]
    if not any(r.has(k) for k, _, _ in panels for g in groups for r in g.runs):
        return None
    fig, axes = _figure(3)
    for ax, (key, title, ylabel) in zip(axes, panels):  # every run's line: a check, read run by run
        if _curve(ax, groups, key, title, ylabel, each=True) and "log scale" in ylabel:
            ax.set_yscale("symlog", linthresh=1e-9)  # symlog: an exact 0 (identical log-probs) stays on the plot
    axes[0].legend(fontsize="small")
    return png(fig)


def _nanmean(values) -> float:
    """The mean of the finite entries; NaN (without numpy's empty-slice warning) when there are none."""
    finite = [x for x in values if not math.isnan(x)]
    return sum(finite) / len(finite) if finite else math.nan


def _by_episode(g: Group, prefix: str, first: int, part: slice) -> list[float]:
    """Mean of <prefix><i> for i = first, first+1, ... over the steps in `part` of each run, then over runs."""
    out = []
    for i in range(first, first + 12):
        vals = [m for r in g.runs if len(v := r.series(f"{prefix}{i}")[1])
                for m in [_nanmean(v[part])] if not math.isnan(m)]
        if not vals:
            break
        out.append(float(np.mean(vals)))
    return out


def progress_curves(groups: list[Group]) -> str | None:
    """MRT: mean progress of episode j and J(c_j) by episode, over the first and the last third of training."""
    mrt = [(g, c) for g, c in zip(groups, colours(len(groups))) if any(r.has("j_c-1") for r in g.runs)]
    if not mrt:
        return None
    fig, (prog, jc, share) = _figure(3)
    for g, c in mrt:
        n = len(g.runs[0].series("j_c-1")[0])
        for part, style, when in ((slice(0, max(1, n // 3)), "--", "first third"),
                                  (slice(n - max(1, n // 3), n), "-", "last third")):
            p = _by_episode(g, "progress_ep", 0, part)
            prog.plot(range(len(p)), p, style, marker="o", markersize=4, color=c, label=f"{g.label}, {when}")
            j = _by_episode(g, "j_c", -1, part)
            jc.plot(range(-1, len(j) - 1), j, style, marker="o", markersize=4, color=c, label=f"{g.label}, {when}")
    prog.axhline(0, color="grey", linewidth=0.8)
    prog.set(title="progress by episode", xlabel="episode j", ylabel="mean J(c_j) - J(c_j-1)")
    jc.set(title="J after each episode", xlabel="episode j (-1: the prompt alone)", ylabel="J (forced-answer accuracy)")
    for ax in (prog, jc):
        ax.xaxis.get_major_locator().set_params(integer=True)
    prog.legend(fontsize="x-small")
    _curve(share, [g for g, _ in mrt], "progress_nonpositive_share", "episodes without progress",
           "share with progress <= 0")
    share.legend(fontsize="small")
    return png(fig)


def budget_forcing(evals: list[Eval]) -> str | None:
    """Forced-answer accuracy and normalised regret against the thinking budget, and J by episode when estimated;
    one line per model of each eval.json."""
    models = [(f"{e.name}: {m}" if len(evals) > 1 else m, r) for e in evals for m, r in e.report["models"].items()
              if r.get("budget_forcing")]
    if not models:
        return None
    episodes = [(name, r["episodes"]["curve"]) for name, r in models if r.get("episodes", {}).get("curve")]
    fig, axes = _figure(3 if episodes else 2)
    colour = dict(zip((name for name, _ in models), colours(len(models))))
    for name, r in models:
        c = colour[name]
        rows = sorted(r["budget_forcing"], key=lambda b: b["budget"])
        b = [x["budget"] for x in rows]
        axes[0].errorbar(b, [x["accuracy"] for x in rows], yerr=[x.get("accuracy_se") or 0 for x in rows],
                         marker="o", markersize=4, capsize=3, color=c, label=name)
        axes[1].plot(b, [x["regret"] for x in rows], marker="o", markersize=4, color=c, label=name)
    axes[0].set(title="budget forcing", xlabel="thinking tokens (budget)", ylabel="forced-answer accuracy")
    axes[1].set(title="normalised regret (lower is better)", xlabel="budget C0 (thinking tokens)", ylabel="regret")
    for name, curve in episodes:
        axes[2].plot([p["episode"] for p in curve], [p["j"] for p in curve], marker="o", markersize=4,
                     color=colour[name], label=name)
    if episodes:
        axes[2].set(title="J by episode", xlabel="episode j (-1: the prompt alone)",
                    ylabel="J (forced-answer accuracy)")
        axes[2].xaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize="small")
    return png(fig)
