"""The mrt-ray side of the benchmarks: a Trainer with its actors up, stepped on demand, and the summaries the bench
scripts print (phase medians, pipeline overhead, markdown tables).

Steps are logged by the run's own Tracker to `<run dir>/metrics.jsonl`, and every figure is read back from there.
"""
from __future__ import annotations

import json
import math
import statistics
import time
from datetime import datetime
from pathlib import Path

from mrt_ray.config import Config, load_config
from mrt_ray.rollout.pool import collect_rollout

REPO = Path(__file__).resolve().parent.parent

# The workload of issue 9 (the TRL anchor): 16 prompts x 8 samples, <= 64 new tokens, temperature 1.0, fp32, no
# reference model (kl 0), no gradient checkpointing. No eval, checkpoint or W&B inside the timed steps.
WORKLOAD = (
    "train.prompts_per_step=16", "rollout.n_samples=8", "rollout.max_new_tokens=64", "rollout.temperature=1.0",
    "rollout.top_p=1.0", "model.dtype=float32", "algo.kl_coef=0.0", "learner.gradient_checkpointing=false",
    "wandb.mode=disabled", "wandb.log_samples_every=0", "train.save_every=0", "train.eval_every=0",
)

# Phases of one step, in data-path order (metrics.jsonl keys) and what they cover. estimate_seconds: MRT only.
# What a step spends outside them (its "overhead"): prompts, token statistics, advantages, the push's log-prob probe.
PHASES = {
    "generate_seconds": "generate (submit, sample, collect)",
    "estimate_seconds": "estimate (MRT: segment, forced answers)",
    "score_seconds": "score (grade, rewards)",
    "learn_seconds_wall": "learn (shard RPC, forward, backward, step)",
    "push_seconds": "push (RPCs, broadcast, checksums, reload)",
}


def bench_config(label: str, overrides: list[str] | tuple[str, ...]) -> Config:
    """Config for a bench run: the embedded base model cached under <repo>/runs/base (found from any working
    directory), a fresh run dir runs/bench/<label>-<time>, then `overrides` (later wins)."""
    run_dir = REPO / "runs" / "bench" / f"{label}-{datetime.now():%Y%m%d-%H%M%S-%f}"
    # train.steps only bounds the async prefetch here (a session steps on demand): never the limit
    return load_config(None, [f"bootstrap.cache_dir={REPO / 'runs' / 'base'}", f"run.dir={run_dir}",
                              "train.steps=1000000", *overrides])


class MrtSession:
    """A Trainer whose actors (rollout workers, learners, estimators for MRT) stay up between `steps()` calls, so
    the caller can interleave other work (TRL's steps, a raw broadcast) while they sit idle."""

    def __init__(self, cfg: Config):
        from mrt_ray.tracking import Tracker
        from mrt_ray.trainer import Trainer

        t0 = time.perf_counter()
        self.trainer = Trainer(cfg)
        self.trainer.start_actors()
        # what Trainer.run() sets up before its first step (it also evaluates and checkpoints: not timed here)
        self.trainer.version, self.trainer.next_pending = 0, None
        self.trainer.tracker = Tracker(self.trainer.cfg, self.trainer.dir, total_steps=0)
        self.trainer.sync.push(0)
        self.start_seconds = time.perf_counter() - t0
        self.next_step = 0

    @property
    def metrics_path(self) -> Path:
        return self.trainer.dir / "metrics.jsonl"

    def steps(self, k: int) -> list[dict]:
        """Run k training steps; returns their rows as logged in metrics.jsonl."""
        first = self.next_step
        for _ in range(k):
            result = self.trainer.step(self.next_step, self.trainer.next_pending)  # async mode: prefetched rollout
            self.trainer.next_pending = result.next_pending
            self.trainer.tracker.log(self.next_step, result.metrics)
            self.next_step += 1
        if self.trainer.next_pending is not None:
            # async mode: the prefetched rollout would run while the other system's block is timed; drain and drop
            # it (untimed), so the next block's first step generates in full and the later ones overlap as in a run
            collect_rollout(self.trainer.pool, self.trainer.next_pending)
            self.trainer.next_pending = None
        return [r for r in read_metrics(self.metrics_path) if first <= r["step"] < self.next_step]

    def close(self) -> None:
        """Kill this session's actors and free their placement group (Ray itself stays up for the next session)."""
        from mrt_ray.actors import stop

        t = self.trainer
        stop(t.actors)
        t.placement.remove()
        t.tracker.close()


def actor_pids(trainer) -> dict[str, int]:
    """{"learner 0": pid, ..., "rollout 0": pid, "estimator 0": pid, "driver": pid} of a Trainer with its actors up.
    Asks each worker for its process id: call it between steps (sync mode), when every actor is idle."""
    import os

    import ray

    pids = {f"learner {r}": pid for r, pid in enumerate(trainer.learners.call("pid"))}
    for role, actors in (("rollout", trainer.workers), ("estimator", trainer.estimator_workers)):
        for i, info in enumerate(ray.get([w.ready.remote() for w in actors])):
            pids[f"{role} {i}"] = info["pid"]
    return {**pids, "driver": os.getpid()}


def read_metrics(path: Path) -> list[dict]:
    """Training-step rows of a metrics.jsonl (step >= 0; the -1 row is the initial evaluation)."""
    rows = [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
    return [r for r in rows if r.get("step", -1) >= 0]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def phase_summary(rows: list[dict]) -> dict[str, float]:
    """Per-step medians of the phases and the step; `overhead` = median over steps of step wall / sum of phases."""
    out = {}
    for key in (*PHASES, "step_seconds", "learn_seconds", "push_broadcast_seconds", "generate_tokens_per_s",
                "tokens_mean", "truncation", "accuracy"):
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if vals:
            out[key] = median(vals)
    out["overhead"] = median(overheads(rows))
    out["steps"] = len(rows)
    return out


def overheads(rows: list[dict]) -> list[float]:
    """Per step: step wall time / sum of its phases."""
    return [r["step_seconds"] / sum(r.get(p, 0.0) for p in PHASES) for r in rows]


def spread(xs: list[float]) -> str:
    """'median [min, max] (n)' of a sample."""
    if not xs:
        return "n/a"
    return f"{median(xs):.3g} [{min(xs):.3g}, {max(xs):.3g}] (n={len(xs)})"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; floats with 3 significant digits."""
    def cell(v) -> str:
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
