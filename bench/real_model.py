"""Memory and step time of a real pretrained model on the real stack (issue 14): SmolLM2-135M-Instruct (`model=smollm2`)
trained with GRPO, per variant of model.dtype x threads per actor (rollout.threads = learner.threads). For each
variant a fresh session (rollout worker, learners) runs warm-up steps, then timed steps; it prints the per-step
medians of generate / learn / push seconds and the peak resident memory (VmHWM) of every actor process.

    .venv/bin/python bench/real_model.py [--steps 3] [--warmup 1] [--dtypes float32,bfloat16] [--threads 1,2] \
        [key=value ...]

Trailing key=value pairs override the config like the CLI (the workload below is the default). A benchmark, not a
test: nothing is asserted about time.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from harness import MrtSession, actor_pids, bench_config, markdown_table, phase_summary

# The task preset of issue 14 and a small step: 8 prompts x 4 samples, <= 128 new tokens, 1 learner rank.
WORKLOAD = (
    "model=smollm2", "task=chain_sum", "train.prompts_per_step=8", "rollout.n_samples=4",
    "rollout.max_new_tokens=128", "learner.num_ranks=1", "learner.zero_stage=0", "learner.micro_batch_size=8",
    "rollout.kv_cache_gib=1", "wandb.mode=disabled", "wandb.log_samples_every=0", "train.save_every=0",
    "train.eval_every=0", "ray.num_cpus=4",
)


def peak_rss_gib(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process on this machine."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kB -> GiB
    return float("nan")


def run_variant(dtype: str, threads: int, steps: int, warmup: int, overrides: list[str]) -> dict:
    cfg = bench_config(f"smollm2-{dtype}-t{threads}", [*WORKLOAD, f"model.dtype={dtype}", f"rollout.threads={threads}",
                                                      f"learner.threads={threads}", *overrides])
    t0 = time.perf_counter()
    session = MrtSession(cfg)
    try:
        start = time.perf_counter() - t0
        session.steps(warmup)
        rows = session.steps(steps)
        rss = {name: peak_rss_gib(pid) for name, pid in actor_pids(session.trainer).items() if name != "driver"}
    finally:
        session.close()
    return {"dtype": dtype, "threads": threads, "start_s": start, "rss": rss, **phase_summary(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (first-call costs)")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="model.dtype values")
    ap.add_argument("--threads", default="1,2", help="threads per actor (rollout and learner)")
    ap.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results = [run_variant(d, int(n), args.steps, args.warmup, args.overrides)
               for d in args.dtypes.split(",") for n in args.threads.split(",")]
    names = sorted({k for r in results for k in r["rss"]})
    rows = [[r["dtype"], r["threads"], r["step_seconds"], r["generate_seconds"], r["learn_seconds_wall"],
             r["push_seconds"], r["tokens_mean"], r["generate_tokens_per_s"], r["start_s"],
             *[r["rss"].get(n, float("nan")) for n in names]] for r in results]
    print(f"per-step medians over {args.steps} steps after {args.warmup} warm-up; load average at the end "
          f"{os.getloadavg()[0]:.1f}\n")
    print(markdown_table(["dtype", "threads", "step s", "generate s", "learn s", "push s", "tokens mean",
                          "generate tok/s", "actors up s", *[f"peak RSS {n} GiB" for n in names]], rows))


if __name__ == "__main__":
    main()
