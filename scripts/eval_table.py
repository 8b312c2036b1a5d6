"""Print markdown tables from `mrt-ray eval` results: sampled and greedy accuracy with standard errors, token
counts, budget forcing, accuracy and tokens per difficulty, and J by episode when the eval measured it.

    .venv/bin/python scripts/eval_table.py runs/eval-compare              # an eval run's directory
    .venv/bin/python scripts/eval_table.py runs/<grid>/eval/seed0          # a grid's models of one seed
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def pct(x: float, se: float | None = None) -> str:
    return f"{100 * x:.1f}%" + (f" ± {100 * se:.1f}" if se is not None else "")


def main(run: str) -> None:
    models = json.loads((Path(run) / "eval.json").read_text())["models"]
    print("| model | pass@1 | maj@k | mean tokens | p50 / p90 | truncated | greedy pass@1 | greedy tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for name, m in models.items():
        s, g = m["sampled"], m.get("greedy")
        greedy = f"{pct(g['accuracy'], g['accuracy_se'])} | {g['tokens_mean']:.1f}" if g else "- | -"
        print(f"| {name} | {pct(s['accuracy'], s['accuracy_se'])} | {pct(s['maj@k'])} | {s['tokens_mean']:.1f} ± "
              f"{s['tokens_se']:.1f} | {s['tokens_p50']:.0f} / {s['tokens_p90']:.0f} | {pct(s['truncation'])} | "
              f"{greedy} |")
    budgets = [b["budget"] for b in next(iter(models.values()))["budget_forcing"]]
    print("\nBudget forcing: pass@1, mean thinking tokens used, normalised regret at each thinking budget\n")
    print("| model | " + " | ".join(f"budget {b}" for b in budgets) + " |")
    print("|---|" + "---|" * len(budgets))
    for name, m in models.items():
        cells = [f"{pct(b['accuracy'], b['accuracy_se'])}, {b['thinking_tokens_mean']:.1f}, {b['regret']:.3f}"
                 for b in m["budget_forcing"]]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nBy difficulty: pass@1 and mean tokens\n")
    print("| model | difficulty | pass@1 | mean tokens |")
    print("|---|---|---|---|")
    for name, m in models.items():
        for b in m.get("by_difficulty", []):
            print(f"| {name} | {b['difficulty']} | {pct(b['accuracy'], b['accuracy_se'])} | {b['tokens_mean']:.1f} ± "
                  f"{b['tokens_se']:.1f} |")
    curves = {name: m["episodes"] for name, m in models.items() if m.get("episodes", {}).get("curve")}
    if curves:
        print("\nJ (forced-answer accuracy) after each episode, with mean thinking tokens at that boundary\n")
        print("| model | " + " | ".join(f"J(c{e})" for e in range(-1, 3)) + " | episodes per trace |")
        print("|---|---|---|---|---|---|")
        for name, ep in curves.items():
            curve = {p["episode"]: p for p in ep["curve"]}
            cells = [f"{curve[e]['j']:.3f} @ {curve[e]['thinking_tokens_mean']:.0f}" if e in curve else "-"
                     for e in range(-1, 3)]
            print(f"| {name} | " + " | ".join(cells) + f" | {ep['episodes_mean']:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
