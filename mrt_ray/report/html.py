"""`mrt-ray report RUN [RUN ...]`: one self-contained HTML page (plots embedded as PNG data URIs, inline CSS, no
script, nothing fetched) for one run or a comparison: tables of the final numbers (means with 95% confidence
intervals over the seeds of one config), learning curves, step times and push checks, MRT progress and J by
episode, budget forcing and regret from eval.json, and the trace viewer (samples.jsonl)."""
from __future__ import annotations

import html
import os
from datetime import datetime
from pathlib import Path

from mrt_ray.report import plots
from mrt_ray.report.runs import Eval, Group, Run, group_runs, load, mean_ci
from mrt_ray.report.traces import legend_html, scale, trace_html

CSS = """
body{font:15px/1.45 sans-serif;color:#222;max-width:1420px;margin:20px auto;padding:0 16px}
h1{font-size:24px;margin-bottom:4px} h2{font-size:19px;margin-top:28px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0;font-size:14px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0} td:first-child,th:first-child{text-align:left}
figure{margin:10px 0} figure img{max-width:100%;border:1px solid #ddd} figcaption{color:#555;font-size:13px}
.meta{color:#555;font-size:13px} nav a{margin-right:12px} code{background:#f3f3f3;padding:0 3px}
"""
MAX_TRACE_RUNS, MAX_TRACES = 6, 8  # the trace viewer shows the last logged step of up to 6 runs, 8 traces each


def _pct(x: float | None, half: float | None = None) -> str:
    if x is None or x != x:
        return "-"
    return f"{100 * x:.1f}%" + (f" ± {100 * half:.1f}" if half else "")


def _num(x: float | None, half: float | None = None, fmt: str = ".1f") -> str:
    if x is None or x != x:
        return "-"
    return f"{x:{fmt}}" + (f" ± {half:{fmt}}" if half else "")


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _before(r: Run, key: str) -> float | None:
    return next((row[key] for row in r.rows if row.get("step") == -1 and isinstance(row.get(key), (int, float))),
                None)


def groups_table(groups: list[Group]) -> str:
    """One row per configuration: final held-out numbers as mean ± 95% CI over its seeds."""
    rows = []
    for g in groups:
        def stat(fn, key, runs=g.runs):
            return mean_ci([fn(r, key) for r in runs])
        acc0, acc, tok, greedy = (stat(_before, "eval/sampled_accuracy"), stat(Run.final, "eval/sampled_accuracy"),
                                  stat(Run.final, "eval/sampled_tokens_mean"), stat(Run.final, "eval/greedy_accuracy"))
        secs = mean_ci([r.summary.get("train_seconds") for r in g.runs])
        steps = sorted({len(r.series("step_seconds")[0]) for r in g.runs})
        rows.append([g.label, str(len(g.runs)), "/".join(map(str, steps)), _pct(*acc0), _pct(*acc), _num(*tok),
                     _pct(*greedy), _num(*secs, fmt=".0f")])
    return _table(["configuration", "runs", "steps", "held-out acc. before", "held-out acc. after",
                   "tokens after", "greedy acc. after", "train seconds"], rows)


def runs_table(groups: list[Group]) -> str:
    rows = [[r.name, g.label, str(r.config.get("seed", "-")), str(r.config.get("algo.name", "-")),
             str(len(r.series("step_seconds")[0])),
             _pct(r.final("eval/sampled_accuracy"), r.final("eval/sampled_accuracy_se")),
             _num(r.final("eval/sampled_tokens_mean")), _num(r.summary.get("train_seconds"), fmt=".0f")]
            for g in groups for r in g.runs]
    return _table(["run", "configuration", "seed", "algo", "steps", "held-out acc. (± s.e.)", "tokens",
                   "train seconds"], rows)


def evals_table(evals: list[Eval]) -> str:
    rows = []
    for e in evals:
        for m, r in e.report["models"].items():
            s, bf = r.get("sampled", {}), sorted(r.get("budget_forcing", []), key=lambda b: b["budget"])
            top = bf[-1] if bf else {}
            rows.append([f"{e.name}: {m}", _pct(s.get("accuracy"), s.get("accuracy_se")), _pct(s.get("maj@k")),
                         _num(s.get("tokens_mean")), _num(top.get("regret"), fmt=".3f"),
                         str(top.get("budget", "-")), str(r.get("tokens_to_target") or "-")])
    return _table(["eval: model", "pass@1 (± s.e.)", "maj@k", "tokens", "regret at the largest budget", "budget",
                   "tokens to target"], rows)


def _figure(src: str | None, alt: str, caption: str) -> str:
    if src is None:
        return ""
    return (f'<figure><img src="{src}" alt="{html.escape(alt)}"><figcaption>{html.escape(caption)}</figcaption>'
            f"</figure>")


def traces_section(runs: list[Run]) -> str:
    shown = [r for r in runs if r.samples][:MAX_TRACE_RUNS]
    if not shown:
        return ""
    latest = {r.name: [s for s in r.samples if s["step"] == r.samples[-1]["step"]][:MAX_TRACES] for r in shown}
    vmax = scale([s for recs in latest.values() for s in recs])
    parts = [legend_html(vmax)]
    for r in shown:
        recs = latest[r.name]
        parts.append(f"<h3>{html.escape(r.name)}: step {recs[0]['step']} ({len(recs)} traces)</h3>")
        parts += [trace_html(s, vmax) for s in recs]
    return "".join(parts)


def render(runs: list[Run], evals: list[Eval], paths: list[Path]) -> str:
    groups = group_runs(runs) if runs else []
    seeds = any(len(g.runs) > 1 for g in groups)
    ci = ("Lines: mean over the seeds of a configuration, shaded: its 95% confidence interval (Student's t); "
          if seeds else "")
    sections = []
    if groups:
        sections.append(("Summary", groups_table(groups) + (runs_table(groups) if len(runs) > 1 else "") +
                         '<p class="meta">Held-out accuracy after training: ' +
                         ("mean ± 95% confidence interval over seeds (t distribution)." if seeds else
                          "± its standard error over prompts.") + "</p>"))
        sections.append(("Learning curves", _figure(
            plots.learning_curves(groups), "learning curves",
            ci + "top: training batches (faint: every step of a single run); bottom: held-out evaluations, each "
            "at the number of updates before it (error bars: standard error over prompts for a single run). "
            "metrics.jsonl: reward, accuracy, "
            "tokens_mean, eval/sampled_accuracy, eval/sampled_tokens_mean, eval/greedy_accuracy.")))
        sections.append(("Step time and weight push", _figure(
            plots.step_times(groups), "step time breakdown",
            "Left: mean seconds per step spent in each stage (generate_seconds, estimate_seconds, score_seconds, "
            "continue_seconds, learn_seconds_wall, push_seconds); the black tick is the whole step (step_seconds).")
            + _figure(plots.push_checks(groups), "push checks",
                      "Every push is verified: push_seconds, push_probe_diff (largest log-prob gap between the "
                      "learner and a worker on the probe sequence after the push) and logprob_diff (mean |learner - "
                      "rollout| log-prob of the trained tokens).")))
        sections.append(("Progress by episode (MRT)", _figure(
            plots.progress_curves(groups), "progress and J by episode",
            "Mean progress J(c_j) - J(c_j-1) of episode j (progress_ep*), J after each episode (j_c*), dashed: the "
            "first third of training, solid: the last third; right: the share of episodes without progress.")))
    if evals:
        sections.append(("Budget forcing and regret", evals_table(evals) + _figure(
            plots.budget_forcing(evals), "budget forcing",
            "eval.json of mrt-ray eval: accuracy of one greedy answer forced after B thinking tokens (± standard "
            "error), the normalised cumulative regret of that curve, and J by episode when estimated.")))
    if runs:
        sections.append(("Traces", traces_section(runs) or '<p class="meta">No samples.jsonl: the trainer writes '
                         "sampled traces every wandb.log_samples_every steps.</p>"))
    sections = [(t, body) for t, body in sections if body]
    nav = "".join(f'<a href="#s{i}">{html.escape(t)}</a>' for i, (t, _) in enumerate(sections))
    body = "".join(f'<h2 id="s{i}">{html.escape(t)}</h2>{b}' for i, (t, b) in enumerate(sections))
    title = "mrt-ray report: " + ", ".join(p.name for p in paths)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f'<p class="meta">{len(runs)} runs, {len(evals)} evaluations; written {datetime.now():%Y-%m-%d %H:%M} '
            f"by <code>mrt-ray report {html.escape(' '.join(map(str, paths)))}</code></p><nav>{nav}</nav>{body}"
            f"</body></html>")


def default_out(paths: list[Path]) -> Path:
    """<RUN>/report.html for one directory; else report-<time>.html in the directory that holds them all."""
    dirs = [p.parent if p.is_file() else p for p in paths]
    if len(dirs) == 1:
        return dirs[0] / "report.html"
    return Path(os.path.commonpath([d.resolve() for d in dirs])) / f"report-{datetime.now():%Y%m%d-%H%M%S}.html"


def write_report(paths: list[Path], out: Path | None = None) -> Path:
    runs, evals = load(paths)
    out = out or default_out(paths)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(runs, evals, paths))
    return out
