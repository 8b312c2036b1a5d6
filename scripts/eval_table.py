"""Print markdown tables from an `mrt-ray eval` result:  .venv/bin/python scripts/eval_table.py runs/eval-compare"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(run: str) -> None:
    d = json.loads((Path(run) / "eval.json").read_text())
    models = d["models"]
    budgets = [b["budget"] for b in next(iter(models.values()))["budget_forcing"]]
    print("| model | pass@1 % | maj@4 % | greedy % | mean tokens | acc per 1k tokens |")
    print("|---|---|---|---|---|---|")
    for name, m in models.items():
        s, g = m["sampled"], m["greedy"]
        print(f"| {name} | {100 * s['accuracy']:.1f} ± {100 * s['accuracy_se']:.1f} | {100 * s['maj@k']:.1f} | "
              f"{100 * g['accuracy']:.1f} ± {100 * g['accuracy_se']:.1f} | {s['tokens_mean']:.1f} ± "
              f"{s['tokens_se']:.1f} | {s['accuracy_per_1k_tokens']:.2f} |")
    print("\nBudget forcing: accuracy % (normalised regret) at each thinking budget\n")
    print("| model | " + " | ".join(str(b) for b in budgets) + " |")
    print("|---|" + "---|" * len(budgets))
    for name, m in models.items():
        cells = [f"{100 * b['accuracy']:.1f} ({b['regret']:.3f})" for b in m["budget_forcing"]]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nJ (forced-answer accuracy) after each episode, with mean thinking tokens at that boundary\n")
    print("| model | " + " | ".join(f"J(c{e})" for e in range(-1, 3)) + " | episodes per trace |")
    print("|---|---|---|---|---|---|")
    for name, m in models.items():
        curve = {p["episode"]: p for p in m["episodes"]["curve"]}
        cells = [f"{curve[e]['j']:.3f} @ {curve[e]['thinking_tokens_mean']:.0f}" if e in curve else "-"
                 for e in range(-1, 3)]
        print(f"| {name} | " + " | ".join(cells) + f" | {m['episodes']['episodes_mean']:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1])
