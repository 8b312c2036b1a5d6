"""Seed statistics of a `mrt-ray grid` directory from its training runs alone, before (or without) the grid's eval.

    .venv/bin/python scripts/grid_summaries.py runs/<grid dir> [--baseline grpo] [--plot FILE.png]

Every finished member (<grid>/<method>/seed<s>/summary.json) gives its final held-out numbers (the trainer's own
evaluation: eval.size problems, eval.n_samples samples, greedy); the first row of its metrics.jsonl gives the base
policy's on the same problems. Prints markdown tables: per method the mean +- 95% CI over seeds of sampled accuracy,
greedy accuracy and mean completion tokens (the base policy as a row of its own), then paired differences against
the baseline method and against the base policy, on the same seeds. Budget forcing, regret and the per-difficulty
tables need the grid's eval (`mrt-ray grid` writes grid.md when it finishes). --plot: each method's change against
the base policy, paired by seed (tokens on x, sampled accuracy on y), with 95% CI bars on both axes.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mrt_ray.stats import Estimate, mean_ci, paired_difference

KEYS = (("sampled accuracy %", "eval/sampled_accuracy", 100.0), ("greedy accuracy %", "eval/greedy_accuracy", 100.0),
        ("completion tokens", "eval/sampled_tokens_mean", 1.0))


def load(root: Path) -> dict[str, dict[int, dict]]:
    """{method: {seed: {key: value}}}, with the base policy as method "base" (from each run's first eval)."""
    out: dict[str, dict[int, dict]] = {}
    for summary in sorted(root.glob("*/seed*/summary.json")):
        method, seed = summary.parent.parent.name, int(summary.parent.name.removeprefix("seed"))
        out.setdefault(method, {})[seed] = json.loads(summary.read_text())
        first = json.loads((summary.parent / "metrics.jsonl").open().readline())
        if first.get("step") == -1:
            out.setdefault("base", {})[seed] = first
    return out


def _cell(e: Estimate, scale: float) -> str:
    return e.text(".1f", scale) + f" (n={e.n})"


def tables(runs: dict[str, dict[int, dict]], baseline: str) -> str:
    methods = ["base"] + sorted(m for m in runs if m != "base")
    lines = ["| method | seeds | " + " | ".join(k for k, _, _ in KEYS) + " |", "|---" * (len(KEYS) + 2) + "|"]
    for m in methods:
        seeds = sorted(runs.get(m, {}))
        cells = [_cell(mean_ci([runs[m][s][key] for s in seeds]), scale) for _, key, scale in KEYS]
        lines.append(f"| {m} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    for ref in (baseline, "base"):
        lines += ["", f"Paired differences against {ref} (same seeds):", "",
                  "| method | seeds | " + " | ".join(f"Δ {k}" for k, _, _ in KEYS) + " |",
                  "|---" * (len(KEYS) + 2) + "|"]
        for m in methods:
            if m == ref or ref not in runs:
                continue
            common = sorted(set(runs[m]) & set(runs[ref]))
            if not common:
                continue
            cells = [_cell(paired_difference({s: runs[m][s][key] for s in common},
                                             {s: runs[ref][s][key] for s in common}), scale) for _, key, scale in KEYS]
            lines.append(f"| {m} | {','.join(map(str, common))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_paired(runs: dict[str, dict[int, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for m in sorted(x for x in runs if x != "base"):
        common = sorted(set(runs[m]) & set(runs["base"]))
        d = {key: paired_difference({s: runs[m][s][key] for s in common}, {s: runs["base"][s][key] for s in common})
             for key in ("eval/sampled_accuracy", "eval/sampled_tokens_mean")}
        tok, acc = d["eval/sampled_tokens_mean"], d["eval/sampled_accuracy"]
        ax.errorbar([tok.mean], [100 * acc.mean], xerr=[tok.half_width], yerr=[100 * acc.half_width], marker="o",
                    capsize=3, label=f"{m} (n={acc.n})")
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.axvline(0, color="gray", linewidth=0.8)
    ax.set(xlabel="Δ mean completion tokens vs the base policy", ylabel="Δ held-out sampled accuracy (points)",
           title="Change from the base policy, paired by seed (95% CI)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grid", type=Path)
    ap.add_argument("--baseline", default="grpo")
    ap.add_argument("--plot", type=Path, help="write the paired-difference plot here (PNG)")
    args = ap.parse_args()
    runs = load(args.grid)
    if not runs:
        raise SystemExit(f"{args.grid}: no finished member (no */seed*/summary.json)")
    print(tables(runs, args.baseline))
    if args.plot:
        plot_paired(runs, args.plot)


if __name__ == "__main__":
    main()
