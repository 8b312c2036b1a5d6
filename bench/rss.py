"""Memory of a training run's processes, step by step (issue 18): the resident set size (RSS) of every actor (learner
ranks, rollout workers, MRT estimator workers) and of the driver, sampled after every training step.

    .venv/bin/python bench/rss.py [--out FILE.json] [key=value ...]

The overrides are the CLI's (`train.steps=120 algo=mrt ...`); without `model.path` the embedded base policy is used
(bootstrapped on first use, cached under runs/base/). Prints a markdown table per process: RSS after the first step
after warm-up, at the end, the peak, and the growth per 100 steps (least-squares slope over the steps after warm-up).
Writes every sample to --out. A measurement, not a test: tests/test_memory.py bounds an estimator worker's growth on
the tiny model.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import psutil
import ray
from harness import actor_pids

from mrt_ray.trainer import Trainer

WARMUP = 10  # steps whose growth is not counted: allocator pools, vLLM's and DeepSpeed's first-use buffers


class RSSTrainer(Trainer):
    """A Trainer that records, after every step, {"step", "<role> <index>": RSS MiB, ...} in `self.rss`. Sync mode
    only: between two steps every actor is idle, so asking it for its process id does not wait."""

    rss: list[dict]

    def step(self, step: int, pending: tuple | None = None) -> dict:
        m = super().step(step, pending)
        row = {"step": step}
        for name, pid in actor_pids(self).items():
            try:
                row[name] = psutil.Process(pid).memory_info().rss / 2**20
            except psutil.NoSuchProcess:  # restarted between the two calls: sampled at the next step
                pass
        self.rss = [*getattr(self, "rss", []), row]
        return m


def growth_per_100_steps(rows: list[dict], name: str, warmup: int = WARMUP) -> float:
    """Least-squares slope of `name`'s RSS (MiB) over the steps after `warmup`, times 100."""
    pts = [(r["step"], r[name]) for r in rows if r["step"] >= warmup and name in r]
    if len(pts) < 2:
        return float("nan")
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    var = sum((x - mx) ** 2 for x, _ in pts)
    return 100 * sum((x - mx) * (y - my) for x, y in pts) / var if var else float("nan")


def summary(rows: list[dict], warmup: int = WARMUP) -> dict[str, dict[str, float]]:
    names = sorted({k for r in rows for k in r if k != "step"})
    after = [r for r in rows if r["step"] >= warmup] or rows
    return {n: {"first_mib": next(r[n] for r in after if n in r), "last_mib": rows[-1].get(n, float("nan")),
                "peak_mib": max(r[n] for r in rows if n in r), "growth_mib_per_100_steps": growth_per_100_steps(
                    rows, n, warmup)} for n in names}


def main() -> None:
    from mrt_ray.config import load_config
    from mrt_ray.validation import validate

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="", help="write every sample and the summary here (JSON)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(None, args.overrides)
    validate(cfg)
    trainer = RSSTrainer(cfg)
    try:
        trainer.run()
    finally:
        ray.shutdown()
    table = summary(trainer.rss)
    print(f"| process | RSS MiB at step {WARMUP} | at the end | peak | growth MiB / 100 steps |")
    print("|---|---|---|---|---|")
    for name, s in table.items():
        print(f"| {name} | {s['first_mib']:.0f} | {s['last_mib']:.0f} | {s['peak_mib']:.0f} | "
              f"{s['growth_mib_per_100_steps']:+.1f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"overrides": args.overrides, "rows": trainer.rss, "summary": table},
                                             indent=1))


if __name__ == "__main__":
    main()
