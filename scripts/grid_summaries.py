"""Seed statistics of a `mrt-ray grid` directory from its training runs alone, before (or without) the grid's eval.

    .venv/bin/python scripts/grid_summaries.py runs/<grid dir> [--baseline grpo]

Every finished member (<grid>/<method>/seed<s>/summary.json) gives its final held-out numbers (the trainer's own
evaluation: eval.size problems, eval.n_samples samples, greedy); the first row of its metrics.jsonl gives the base
policy's on the same problems. Prints markdown tables: per method the mean +- 95% CI over seeds of sampled accuracy,
greedy accuracy and mean completion tokens (the base policy as a row of its own), then paired differences against
the baseline method and against the base policy, on the same seeds. Budget forcing, regret and the per-difficulty
tables need the grid's eval (`mrt-ray grid` writes grid.md when it finishes).
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grid", type=Path)
    ap.add_argument("--baseline", default="grpo")
    args = ap.parse_args()
    runs = load(args.grid)
    if not runs:
        raise SystemExit(f"{args.grid}: no finished member (no */seed*/summary.json)")
    print(tables(runs, args.baseline))


if __name__ == "__main__":
    main()
