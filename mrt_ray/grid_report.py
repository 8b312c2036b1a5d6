"""The seed statistics of `mrt-ray grid`: per method, the mean over seeds with a 95% t interval, and paired
differences against the baseline (and against each seed's base policy) on the same seeds and eval problems.

Inputs: per seed, the eval results of "base" and of each method evaluated so far (`mrt_ray.grid`); a seed counts once
its base and baseline are evaluated, and each method is summarised over the seeds it has. Outputs in the grid dir:
grid.json (every per-seed value and every estimate), grid.md (the tables) and the plots: paired_vs_baseline.png (each
method's change from the baseline on the same seeds, in % tokens and points of pass@1, paired, CI bars on both axes:
the seeds' base policies differ widely, so the paired plots are the readable ones), paired_vs_base.png (the same
against each seed's base policy, in tokens), pareto_ci.png (held-out accuracy against mean completion tokens,
CI bars on both axes), tokens_by_difficulty.png and regret_vs_budget.png; with eval.targets, the budget-adherence
table over seeds and used_vs_target.png.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from mrt_ray.config import Config
from mrt_ray.eval import plots
from mrt_ray.eval.adherence import over_seeds
from mrt_ray.eval.metrics import tokens_to_reach
from mrt_ray.stats import Estimate, mean_ci, paired_difference


def per_seed(evals: dict[int, dict], label: str, baseline: str) -> dict[int, dict]:
    """The numbers of one model in every seed: accuracy, tokens, regret and forced accuracy per budget, tokens to
    reach the baseline's final forced accuracy, and the per-difficulty rows."""
    out = {}
    for seed, ev in evals.items():
        if label not in ev["models"]:
            continue
        r, b = ev["models"][label], ev["models"][baseline]
        budgets = [row["budget"] for row in r["budget_forcing"]]
        forced = [row["accuracy"] for row in r["budget_forcing"]]
        target = b["budget_forcing"][-1]["accuracy"]  # the baseline's forced accuracy at the largest budget
        out[seed] = {
            "accuracy": r["sampled"]["accuracy"], "tokens": r["sampled"]["tokens_mean"],
            "greedy": r.get("greedy", {}).get("accuracy"), "maj": r["sampled"].get("maj@k"),
            "regret": dict(zip(budgets, (row["regret"] for row in r["budget_forcing"]))),
            "forced": dict(zip(budgets, forced)),
            "tokens_to_baseline_final": tokens_to_reach(budgets, forced, target),
            "by_difficulty": {str(row["difficulty"]): row for row in r.get("by_difficulty", [])},
        }
    return out


def _est(values: list[float]) -> Estimate | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return mean_ci(vals) if vals else None


def _pct(e: Estimate | None, fmt: str = ".1f") -> str:
    return "-" if e is None else e.text(fmt, 100)


def _num(e: Estimate | None, fmt: str = ".1f") -> str:
    return "-" if e is None else e.text(fmt)


def _bucket_tokens(seeds: dict[int, dict], d: str) -> dict[int, float]:
    return {s: v["by_difficulty"][d]["tokens_mean"] for s, v in seeds.items() if d in v["by_difficulty"]}


def aggregate(evals: dict[int, dict], labels: list[str], baseline: str) -> dict:
    data = {m: per_seed(evals, m, baseline) for m in ["base", *labels]}
    budgets = sorted(next(iter(data["base"].values()))["regret"])
    summary = {}
    for m, seeds in data.items():
        def pick(key: str, seeds: dict = seeds) -> dict:
            return {s: v[key] for s, v in seeds.items()}

        acc, tok = pick("accuracy"), pick("tokens")
        row = {"accuracy": _est(list(acc.values())), "tokens": _est(list(tok.values())),
               "greedy": _est(list(pick("greedy").values())), "maj": _est(list(pick("maj").values())),
               "regret": {b: _est([v["regret"][b] for v in seeds.values()]) for b in budgets},
               "gain_over_base": paired_difference(acc, {s: v["accuracy"] for s, v in data["base"].items()}),
               "tokens_vs_base": paired_difference(tok, {s: v["tokens"] for s, v in data["base"].items()}),
               "tokens_to_baseline_final": _est(list(pick("tokens_to_baseline_final").values())),
               "reached": sum(v is not None for v in pick("tokens_to_baseline_final").values()), "seeds": sorted(seeds)}
        if m != baseline:
            bl = data[baseline]
            row["vs_baseline"] = {
                "accuracy": paired_difference(acc, {s: v["accuracy"] for s, v in bl.items()}),
                "tokens_rel": paired_difference({s: tok[s] / bl[s]["tokens"] - 1 for s in tok},
                                                dict.fromkeys(tok, 0.0)),
                "regret": {b: paired_difference({s: v["regret"][b] for s, v in seeds.items()},
                                                {s: v["regret"][b] for s, v in bl.items()}) for b in budgets},
                "efficiency": _est([bl[s]["tokens_to_baseline_final"] / seeds[s]["tokens_to_baseline_final"]
                                    for s in seeds if seeds[s]["tokens_to_baseline_final"]
                                    and bl[s]["tokens_to_baseline_final"]]),
            }
        diffs = sorted({d for v in seeds.values() for d in v["by_difficulty"]},
                       key=lambda d: (float(d) if d.replace(".", "").isdigit() else math.inf, d))
        row["by_difficulty"] = {d: {k: _est([v["by_difficulty"][d].get(k) for v in seeds.values()
                                             if d in v["by_difficulty"]])
                                    for k in ("tokens_mean", "accuracy", "share_after_first_correct", "flip_rate")}
                                for d in diffs}
        if m != baseline:  # where the tokens go: the paired token difference against the baseline per difficulty
            row["vs_baseline"]["tokens_by_difficulty"] = {
                d: paired_difference(mine, theirs) for d in diffs
                for mine, theirs in [(_bucket_tokens(seeds, d), _bucket_tokens(data[baseline], d))]
                if set(mine) & set(theirs)}
        summary[m] = row
    return {"budgets": budgets, "per_seed": data, "summary": summary}


def markdown(agg: dict, labels: list[str], baseline: str, seeds: list[int]) -> str:
    s, budgets = agg["summary"], agg["budgets"]
    top = budgets[-1]
    lines = [f"# Method x seed grid ({len(seeds)} seeds: {seeds})", "",
             "Mean ± 95% CI over seeds (Student's t); differences are paired on the same seeds and eval problems.", "",
             f"| model | seeds | pass@1 % | gain over base (pts) | greedy % | mean tokens | tokens vs {baseline} | "
             f"regret@{top} |", "|---|---|---|---|---|---|---|---|"]
    for m in ["base", *labels]:
        r = s[m]
        vs = r.get("vs_baseline", {}).get("tokens_rel")
        lines.append(f"| {m} | {','.join(map(str, r['seeds']))} | {_pct(r['accuracy'])} | "
                     f"{_pct(r['gain_over_base'], '+.1f') if m != 'base' else '-'} | "
                     f"{_pct(r['greedy'])} | {_num(r['tokens'])} | {_pct(vs, '+.1f') + ' %' if vs else '-'} | "
                     f"{_num(r['regret'][top], '.3f')} |")
    lines += ["", f"Paired differences against {baseline} (method − {baseline}): pass@1 in points, regret at each "
              "budget (negative: lower regret)", "",
              "| model | Δ pass@1 | " + " | ".join(f"Δ regret@{b}" for b in budgets) + " |",
              "|---|---|" + "---|" * len(budgets)]
    for m in labels:
        if m == baseline:
            continue
        v = s[m]["vs_baseline"]
        lines.append(f"| {m} | {_pct(v['accuracy'], '+.1f')} | "
                     + " | ".join(_num(v["regret"][b], "+.3f") for b in budgets) + " |")
    lines += ["", f"Token efficiency: thinking tokens (budget forcing) to reach {baseline}'s final forced accuracy, "
              f"and {baseline}'s tokens / the method's (paired; seeds where both reach it)", "",
              "| model | tokens to reach | seeds reaching | efficiency vs " + baseline + " |", "|---|---|---|---|"]
    for m in ["base", *labels]:
        eff = s[m].get("vs_baseline", {}).get("efficiency")
        lines.append(f"| {m} | {_num(s[m]['tokens_to_baseline_final'])} | {s[m]['reached']}/{len(s[m]['seeds'])} | "
                     f"{_num(eff, '.2f') if eff else '-'} |")
    diffs = list(s["base"]["by_difficulty"])
    if diffs:
        lines += ["", "Mean completion tokens by difficulty", "", "| model | " + " | ".join(diffs) + " |",
                  "|---|" + "---|" * len(diffs)]
        for m in ["base", *labels]:
            lines.append(f"| {m} | " + " | ".join(_num(s[m]["by_difficulty"].get(d, {}).get("tokens_mean"))
                                                  for d in diffs) + " |")
        lines += ["", f"Δ mean completion tokens against {baseline} by difficulty (paired by seed)", "",
                  "| model | " + " | ".join(diffs) + " |", "|---|" + "---|" * len(diffs)]
        for m in ["base", *labels]:
            if m != baseline:
                by = s[m]["vs_baseline"]["tokens_by_difficulty"]
                lines.append(f"| {m} | " + " | ".join(_num(by.get(d), "+.1f") for d in diffs) + " |")
        lines += ["", "pass@1 % by difficulty", "", "| model | " + " | ".join(diffs) + " |",
                  "|---|" + "---|" * len(diffs)]
        for m in ["base", *labels]:
            lines.append(f"| {m} | " + " | ".join(_pct(s[m]["by_difficulty"].get(d, {}).get("accuracy"))
                                                  for d in diffs) + " |")
    if adh := agg.get("adherence"):
        lines += ["", "Budget adherence (eval.targets: the target in the prompt): tokens used, mean |used − target| "
                  "and pass@1 at each target, mean ± 95% CI over seeds", "",
                  "| model | target | seeds | tokens used | mean abs error | share over target | pass@1 % |",
                  "|---|---|---|---|---|---|---|"]
        for m, rows in adh.items():
            lines += [f"| {m} | {t} | {r['used_mean'].n} | {_num(r['used_mean'])} | {_num(r['abs_error_mean'])} | "
                      f"{_pct(r['over_share'], '.0f')} | {_pct(r['accuracy'])} |" for t, r in rows.items()]
        lines += ["", "![used against target](used_vs_target.png)"]
    lines += ["", f"![change from {baseline}](paired_vs_baseline.png) ![change from the base](paired_vs_base.png) "
              "![accuracy vs tokens](pareto_ci.png) "
              "![tokens by difficulty](tokens_by_difficulty.png) ![regret](regret_vs_budget.png)", ""]
    return "\n".join(lines)


def _jsonable(obj):
    if isinstance(obj, Estimate):
        return {"mean": obj.mean, "ci95": None if math.isnan(obj.half_width) else obj.half_width, "n": obj.n}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _ci(e: Estimate | None) -> float:
    return 0.0 if e is None or math.isnan(e.half_width) else e.half_width


def write_report(cfg: Config, root: Path, labels: list[str], evals: dict[int, dict]) -> dict:
    """grid.md, grid.json and the plots over the seeds whose base and baseline are evaluated, for the methods that
    have at least one of them; nothing (an empty dict) before the first such seed."""
    baseline = cfg.grid.baseline
    evals = {s: ev for s, ev in evals.items() if {"base", baseline} <= set(ev["models"])}
    labels = [m for m in labels if any(m in ev["models"] for ev in evals.values())]
    if not evals:
        return {}
    agg = aggregate(evals, labels, baseline)
    s = agg["summary"]
    models = ["base", *labels]
    agg["adherence"] = over_seeds(evals, models)
    pareto = plots.plot_pareto([(m, s[m]["tokens"].mean, s[m]["accuracy"].mean, _ci(s[m]["accuracy"]),
                                 _ci(s[m]["tokens"])) for m in models], root / "pareto_ci.png")
    series = {m: [(d, r["tokens_mean"].mean, _ci(r["tokens_mean"])) for d, r in s[m]["by_difficulty"].items()
                  if r["tokens_mean"] is not None] for m in models}
    series = {m: v for m, v in series.items() if v}
    paired = plots.plot_pareto(
        [(m, s[m]["tokens_vs_base"].mean, 100 * s[m]["gain_over_base"].mean, 100 * _ci(s[m]["gain_over_base"]),
          _ci(s[m]["tokens_vs_base"])) for m in labels], root / "paired_vs_base.png",
        ("Change from each seed's base policy (paired, 95% CI)", "Δ mean completion tokens", "Δ pass@1 (points)"))
    figs = {"pareto": str(pareto), "paired_vs_base": str(paired)}
    if vs := [(m, s[m]["vs_baseline"]) for m in labels if m != baseline]:
        figs["paired_vs_baseline"] = str(plots.plot_pareto(
            [(m, 100 * v["tokens_rel"].mean, 100 * v["accuracy"].mean, 100 * _ci(v["accuracy"]),
              100 * _ci(v["tokens_rel"])) for m, v in vs], root / "paired_vs_baseline.png",
            (f"Change from {baseline} on the same seeds (paired, 95% CI)",
             f"Δ mean completion tokens vs {baseline} (%)", "Δ pass@1 (points)")))
    if series:
        figs["tokens_by_difficulty"] = str(plots.plot_by_difficulty(
            series, root / "tokens_by_difficulty.png", "mean completion tokens", "Completion tokens by difficulty"))
    figs["regret_vs_budget"] = str(plots.plot_regret_vs_budget(
        {m: [(b, s[m]["regret"][b].mean) for b in agg["budgets"]] for m in models}, root / "regret_vs_budget.png"))
    if adh := agg["adherence"]:
        figs["used_vs_target"] = str(plots.plot_used_vs_target(
            {m: [(t, r["used_mean"].mean, _ci(r["used_mean"])) for t, r in rows.items()] for m, rows in adh.items()},
            root / "used_vs_target.png"))
    (root / "grid.md").write_text(markdown(agg, labels, baseline, sorted(evals)))
    (root / "grid.json").write_text(json.dumps(_jsonable({**agg, "plots": figs}), indent=2))
    return {"grid_md": str(root / "grid.md"), "grid_json": str(root / "grid.json"), "plots": figs}
