"""Print a markdown comparison of finished runs, straight from their run directories (summary.json, metrics.jsonl):
    .venv/bin/python scripts/results_table.py runs/grpo runs/lp02 runs/mrt
Held-out numbers are before (step -1) and after training; step times are medians over the run."""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def load(run: Path) -> tuple[dict, dict, list[dict]]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    before = next(r for r in rows if r["step"] == -1)
    steps = [r for r in rows if r["step"] >= 0 and "step_seconds" in r]
    return before, json.loads((run / "summary.json").read_text()), steps


def cell(d: dict, mode: str, key: str) -> str:
    v, se = d.get(f"eval/{mode}_{key}"), d.get(f"eval/{mode}_{key}_se")
    if v is None:
        return "-"
    scale = 100 if key == "accuracy" else 1
    return f"{v * scale:.1f} ± {se * scale:.1f}" if se is not None else f"{v * scale:.1f}"


def main(runs: list[str]) -> None:
    print("| run | algo | steps | sampled acc % (before → after) | greedy acc % (before → after) "
          "| sampled tokens (before → after) | greedy tokens (after) | median step s | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        run = Path(r)
        before, after, steps = load(run)
        cfg_text = (run / "config.yaml").read_text()
        algo = cfg_text.split("\nalgo:\n  name: ", 1)[1].split("\n", 1)[0] if "\nalgo:\n  name: " in cfg_text else "?"
        med = statistics.median(s["step_seconds"] for s in steps)
        print(f"| {run.name} | {algo} | {len(steps)} | {cell(before, 'sampled', 'accuracy')} → "
              f"{cell(after, 'sampled', 'accuracy')} | {cell(before, 'greedy', 'accuracy')} → "
              f"{cell(after, 'greedy', 'accuracy')} | {cell(before, 'sampled', 'tokens_mean')} → "
              f"{cell(after, 'sampled', 'tokens_mean')} | {cell(after, 'greedy', 'tokens_mean')} | {med:.2f} | "
              f"{after['train_seconds']:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
