"""What an eval writes besides eval.json: its plots (PNG, every model on each) and its W&B tables and images."""
from __future__ import annotations

import math
from pathlib import Path

from mrt_ray.eval import plots
from mrt_ray.tracking import Tracker


def json_clean(obj):
    """NaN/inf -> null, so eval.json is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    return obj



def plot_results(results: dict, d: Path) -> dict[str, Path]:
    """Every plot of an eval (each model a line or point) into directory `d`: name -> file."""
    out = {
        "accuracy_vs_tokens": plots.plot_accuracy_vs_tokens(
            {m: [(b["budget"], b["accuracy"], b["accuracy_se"]) for b in r["budget_forcing"]]
             for m, r in results.items()}, d / "accuracy_vs_tokens.png"),
        "regret_vs_budget": plots.plot_regret_vs_budget(
            {m: [(b["budget"], b["regret"]) for b in r["budget_forcing"]] for m, r in results.items()},
            d / "regret_vs_budget.png"),
        "pareto": plots.plot_pareto(
            [(m, r["sampled"]["tokens_mean"], r["sampled"]["accuracy"], r["sampled"]["accuracy_se"],
              r["sampled"]["tokens_se"]) for m, r in results.items()], d / "accuracy_vs_completion_tokens.png"),
    }
    for key, ylabel, title in (("tokens_mean", "mean completion tokens", "Completion tokens by difficulty"),
                               ("accuracy", "accuracy (pass@1)", "Accuracy by difficulty")):
        series = {m: [(row["difficulty"], row[key], row[key.replace("_mean", "") + "_se"]) for row in
                      r["by_difficulty"]] for m, r in results.items() if r.get("by_difficulty")}
        if series:
            out[f"{key.split('_')[0]}_by_difficulty"] = plots.plot_by_difficulty(
                series, d / f"{key.split('_')[0]}_by_difficulty.png", ylabel, title)
    ext = {m: [(row["thinking_tokens_mean"], row["accuracy"], row["accuracy_se"])
               for row in r["extrapolation"]["rows"]] for m, r in results.items() if r.get("extrapolation")}
    if ext:
        out["extrapolation"] = plots.plot_accuracy_vs_tokens(ext, d / "extrapolation.png")
    j = {m: [row["j"] for row in r["episodes"]["curve"] if row["episode"] >= 0]
         for m, r in results.items() if "episodes" in r}
    j = {m: series for m, series in j.items() if series}
    if j:
        out["j_by_episode"] = plots.plot_j_by_episode(j, d / "j_by_episode.png")
    adh = {m: r["budget_adherence"] for m, r in results.items() if r.get("budget_adherence")}
    if adh:
        out["used_vs_target"] = plots.plot_used_vs_target(
            {m: [(a["target"], a["used_mean"], a["used_se"]) for a in rows] for m, rows in adh.items()},
            d / "used_vs_target.png")
        out["accuracy_vs_target"] = plots.plot_accuracy_vs_tokens(
            {m: [(a["target"], a["accuracy"], a["accuracy_se"]) for a in rows] for m, rows in adh.items()},
            d / "accuracy_vs_target.png", "Accuracy at each budget", "target tokens (budget in the prompt)")
    return out

def log_tables(t: Tracker, results: dict, figures: dict[str, Path], top: int) -> None:
    """The eval's tables and plots through the run's tracker (W&B; `top`: the largest budget, for regret@top)."""
    summary = [[m, r["sampled"]["accuracy"], r["sampled"]["accuracy_se"], r["sampled"]["maj@k"],
                r.get("greedy", {}).get("accuracy"), r["sampled"]["tokens_mean"], r["sampled"]["tokens_p90"],
                r["sampled"]["truncation"], r["sampled"]["accuracy_per_1k_tokens"],
                next(b["regret"] for b in r["budget_forcing"] if b["budget"] == top), r["tokens_to_target"]]
               for m, r in results.items()]
    t.table("eval/summary", ["model", "pass@1", "pass@1_se", "maj@k", "greedy_accuracy", "tokens_mean",
                             "tokens_p90", "truncation", "accuracy_per_1k_tokens", f"regret@{top}",
                             "tokens_to_target"], summary, step=0)
    t.table("eval/budget_forcing", ["model", "budget", "accuracy", "accuracy_se", "thinking_tokens_mean",
                                    "extended_share", "regret"],
            [[m, *b.values()] for m, r in results.items() for b in r["budget_forcing"]], step=0)
    t.table("eval/by_difficulty", ["model", "difficulty", "prompts", "accuracy", "accuracy_se", "tokens_mean",
                                   "tokens_se", "share_after_first_correct", "flip_rate"],
            [[m, row["difficulty"], row["prompts"], row["accuracy"], row["accuracy_se"], row["tokens_mean"],
              row["tokens_se"], row.get("share_after_first_correct"), row.get("flip_rate")]
             for m, r in results.items() for row in r.get("by_difficulty", [])], step=0)
    t.table("eval/episodes", ["model", "episode", "j", "thinking_tokens_mean", "traces"],
            [[m, *row.values()] for m, r in results.items() for row in r.get("episodes", {}).get("curve", [])],
            step=0)
    t.table("eval/budget_adherence", ["model", "target", "accuracy", "accuracy_se", "used_mean", "used_se",
                                      "abs_error_mean", "rel_error_mean", "over_share"],
            [[m, *row.values()] for m, r in results.items() for row in r.get("budget_adherence", [])], step=0)
    for name, path in figures.items():
        t.image(f"eval/{name}", path, step=0)
