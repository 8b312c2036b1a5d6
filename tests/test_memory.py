"""Memory of a long run's busiest actor, the MRT estimator worker (issue 18): its RSS must not grow with the number of
requests it has served. The workload is an estimator round's: many distinct prefixes, short seeded forced answers.
Measured in a child process, so that the engine's memory is the only thing that changes. bench/rss.py reports the
RSS of every actor over a whole run (docs/reliability.md)."""
from __future__ import annotations

import multiprocessing as mp
import random

import pytest

pytestmark = [pytest.mark.stack, pytest.mark.slow]  # a soak test (~100 s): `pytest tests` runs it, CI does not
ROUNDS, WARMUP = 40, 25  # RSS rises for ~15 rounds as the engine first touches its pools, then must stay flat


def _rounds(cfg, model: str, out) -> None:
    import psutil

    from mrt_ray.rollout.types import Request, SamplingSpec
    from mrt_ray.rollout.worker import RolloutWorker

    worker, rng, proc = RolloutWorker(cfg, model), random.Random(0), psutil.Process()
    rss = []
    for _ in range(ROUNDS):
        reqs = [Request([rng.randint(5, 40) for _ in range(rng.randint(40, 200))],
                        SamplingSpec(n=4, max_tokens=8, seed=rng.randint(0, 2**31))) for _ in range(160)]
        worker.generate(reqs)
        rss.append(proc.memory_info().rss / 2**20)
    out.put(rss)


def test_estimator_worker_rss_stays_flat_over_40_rounds(small_cfg, tiny_model):
    cfg = small_cfg("rollout.backend=vllm", "rollout.kv_cache_gib=0.05")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_rounds, args=(cfg, tiny_model, out))
    p.start()
    try:
        rss = out.get(timeout=600)
    finally:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    growth = rss[-1] - rss[WARMUP - 1]
    print(f"worker RSS {rss[WARMUP - 1]:.0f} MiB after {WARMUP} rounds, {rss[-1]:.0f} MiB after {ROUNDS}; "
          f"peak {max(rss):.0f}")
    # without release_freed_memory() it grew 184 MiB over rounds 25-40 (glibc kept what vLLM freed); with it, 2 MiB
    assert growth <= 32, f"RSS grew {growth:.0f} MiB over rounds {WARMUP}-{ROUNDS}: {[round(x) for x in rss]}"
