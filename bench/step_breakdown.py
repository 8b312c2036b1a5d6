"""Phase breakdown of an mrt-ray training step on the real stack (Ray + vLLM + DeepSpeed), and the weight-push
bandwidth next to a raw gloo broadcast of the same bytes measured in the same invocation (issue 3).

    .venv/bin/python bench/step_breakdown.py [--steps 6] [--warmup 1] [--reps 10] [key=value ...]

Default layout (1 vLLM rollout worker, DeepSpeed ZeRO-2 learner ranks and threads derived from the resources, local
Ray) on the embedded base model
(bootstrapped on first use, cached under runs/base/); trailing key=value pairs override the config like the CLI.
Prints markdown tables. A benchmark, not a test: nothing is asserted about time.
"""
from __future__ import annotations

import argparse
import os

from harness import PHASES, MrtSession, bench_config, markdown_table, median, overheads, phase_summary, spread
from raw_broadcast import bucket_sizes, raw_broadcast_seconds


def breakdown_tables(summary: dict, rows: list[dict]) -> str:
    """Phase table (per-step medians) and the pipeline overhead."""
    step = summary["step_seconds"]
    phase_rows = [[name, summary[p], summary[p] / step] for p, name in PHASES.items() if p in summary]
    total = sum(summary[p] for p in PHASES if p in summary)
    phase_rows += [["sum of phases", total, total / step], ["step (wall)", step, 1.0]]
    lines = [markdown_table(["phase", "median s", "share of step"], phase_rows), "",
             f"pipeline overhead (step wall / sum of phases, per step): {spread(overheads(rows))}",
             f"learn inside the learner actors (max over ranks): {summary.get('learn_seconds', float('nan')):.3g} s; "
             f"learn as the controller waits for it: {summary['learn_seconds_wall']:.3g} s",
             f"completion tokens (mean per sample): {summary['tokens_mean']:.3g}; "
             f"truncated at max_new_tokens: {summary['truncation']:.2f}; "
             f"generate {summary['generate_tokens_per_s']:.0f} tok/s"]
    return "\n".join(lines)


def push_table(rows: list[dict], nbytes: int, raw: list[float]) -> str:
    """Push bandwidth (sender loop and end-to-end RPC) against the raw broadcast of the same bytes."""
    raw_s = median(raw)
    send_s = median([r["push_broadcast_seconds"] for r in rows])
    e2e_s = median([r["push_seconds"] for r in rows])
    gb = nbytes / 1e9
    table = [
        ["raw gloo broadcast (2 spawned processes)", raw_s, gb / raw_s, 1.0],
        ["mrt-ray push: learner rank 0's send loop (push_broadcast_seconds)", send_s, gb / send_s, raw_s / send_s],
        ["mrt-ray push: end to end (push_seconds: RPCs, send, receive, reload)", e2e_s, gb / e2e_s, raw_s / e2e_s],
    ]
    return (f"state dict: {nbytes / 2**20:.2f} MiB\n\n"
            + markdown_table(["transfer", "median s", "GB/s", "fraction of raw bandwidth"], table))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (first-call costs)")
    ap.add_argument("--reps", type=int, default=10, help="raw broadcast repetitions")
    ap.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg = bench_config("step-breakdown", ["wandb.mode=disabled", "wandb.log_samples_every=0", *args.overrides])
    session = MrtSession(cfg)
    try:
        session.steps(args.warmup)
        rows = session.steps(args.steps)
        sync = session.trainer.sync
        raw = raw_broadcast_seconds(bucket_sizes(sync), reps=args.reps, threads=max(cfg.learner.threads, 1))
    finally:
        session.close()
    c = session.trainer.cfg
    print(f"\n## mrt-ray step breakdown ({args.steps} steps after {args.warmup} warm-up; "
          f"{c.train.prompts_per_step} prompts x {c.rollout.n_samples} samples, max {c.rollout.max_new_tokens} "
          f"new tokens; {c.rollout.num_workers} rollout worker(s), {c.learner.num_ranks} learners ZeRO-"
          f"{c.learner.zero_stage}; model {session.trainer.model_path})\n")
    print(f"actors up + first verified push: {session.start_seconds:.1f} s; metrics: {session.metrics_path}\n")
    print(breakdown_tables(phase_summary(rows), rows))
    print("\n## weight push vs raw gloo broadcast (same bytes, same invocation)\n")
    print(push_table(rows, sync.bytes, raw))
    print(f"\n1-minute load average at the end (2 cores: > 2 is contention): {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
