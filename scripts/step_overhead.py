"""Where a training run's step time goes, from its metrics.jsonl: the sum of each phase over all steps, and the
pipeline overhead (step wall time / the sum of its phases, and / generate + learn alone), overall and per step.

    .venv/bin/python scripts/step_overhead.py runs/<run> [runs/<run> ...]
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

PHASES = ("generate_seconds", "estimate_seconds", "score_seconds", "advantage_seconds", "learn_seconds_wall",
          "push_seconds")  # advantage_seconds holds reference_seconds (algo.kl_in_reward) and continue_seconds


def summary(run: Path) -> dict:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    rows = [r for r in rows if r.get("step", -1) >= 0 and "step_seconds" in r]
    if not rows:
        raise SystemExit(f"{run}/metrics.jsonl has no training steps")
    total = sum(r["step_seconds"] for r in rows)
    phases = {k: sum(r.get(k, 0.0) for r in rows) for k in PHASES}
    core = phases["generate_seconds"] + phases["estimate_seconds"] + phases["learn_seconds_wall"]
    per_step = sorted(r["step_seconds"] / sum(r.get(k, 0.0) for k in PHASES) for r in rows)
    return {"steps": len(rows), "step_s": total, **phases, "overhead_all_phases": total / sum(phases.values()),
            "overhead_vs_generate_learn": total / core, "per_step_median": statistics.median(per_step),
            "per_step_p90": per_step[int(0.9 * (len(per_step) - 1))]}


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    keys = ["steps", "step_s", *PHASES, "overhead_all_phases", "overhead_vs_generate_learn", "per_step_median",
            "per_step_p90"]
    print("| run | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for arg in sys.argv[1:]:
        s = summary(Path(arg))
        print(f"| {arg} | " + " | ".join(f"{s[k]:.3f}" if isinstance(s[k], float) else str(s[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
