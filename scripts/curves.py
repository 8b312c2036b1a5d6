"""Learning curves of finished runs against training wall time, from their run directories (metrics.jsonl):
    .venv/bin/python scripts/curves.py runs/sync1 runs/async1 --out docs/img/async_vs_sync.png
Left: held-out sampled accuracy (± standard error) at every held-out eval (train.eval_every, plus before and after
training). Right: training accuracy, mean over 10-step windows. The x-axis is the sum of step_seconds up to that
step (the training itself, held-out evals excluded, which both modes pay alike). Prints a markdown table of the
held-out points."""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

WINDOW = 10


def curves(run: Path) -> tuple[list[tuple], list[tuple]]:
    """(held-out [(seconds, step, acc, se, tokens)], training [(seconds, acc)] per 10-step window)."""
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    steps = sorted((r for r in rows if r["step"] >= 0 and "step_seconds" in r), key=lambda r: r["step"])
    clock = dict(zip((r["step"] for r in steps), itertools.accumulate(r["step_seconds"] for r in steps)))
    last = max(clock) if clock else 0
    held = [(0.0 if r["step"] < 0 else clock[min(r["step"], last)], r["step"], r["eval/sampled_accuracy"],
             r["eval/sampled_accuracy_se"], r["eval/sampled_tokens_mean"])
            for r in rows if "eval/sampled_accuracy" in r]
    train = [(clock[w[-1]["step"]], sum(r["accuracy"] for r in w) / len(w))
             for w in (steps[i:i + WINDOW] for i in range(0, len(steps), WINDOW))]
    return sorted(held), train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", required=True, help="PNG path")
    args = ap.parse_args()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    print("| run | step | training seconds | held-out sampled acc % | sampled tokens |")
    print("|---|---|---|---|---|")
    for r in args.runs:
        held, train = curves(Path(r))
        name = Path(r).name
        left.errorbar([h[0] for h in held], [h[2] for h in held], yerr=[h[3] for h in held], marker="o",
                      capsize=3, label=name)
        right.plot([t[0] for t in train], [t[1] for t in train], marker=".", label=name)
        for s, step, acc, se, tok in held:
            print(f"| {name} | {step} | {s:.0f} | {100 * acc:.1f} ± {100 * se:.1f} | {tok:.1f} |")
    left.set(xlabel="training seconds (sum of step_seconds)", ylabel="held-out sampled accuracy",
             title="held-out accuracy")
    right.set(xlabel="training seconds (sum of step_seconds)", ylabel=f"training accuracy ({WINDOW}-step mean)",
              title="training accuracy")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
