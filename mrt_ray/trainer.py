"""The one controller. Each training step walks the data path in order:

    prompts -> rollout -> segment -> estimate -> reward -> advantage -> learn -> push weights

(segment and estimate run for methods that use the estimator pool: MRT, MRT-STaR). What a step trains on is the
method's (`mrt_ray.methods`). The controller owns the run directory (config.yaml, metrics.jsonl, checkpoints/,
summary.json), the actors, and recovery: a lost rollout or estimator worker is re-armed (`mrt_ray.recovery`).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from mrt_ray import checkpoint, console
from mrt_ray.actors import Placement, init_ray, stop
from mrt_ray.config import Config, from_yaml_file, to_yaml
from mrt_ray.eval.heldout import evaluate
from mrt_ray.eval.metrics import token_stats
from mrt_ray.learner.group import LearnerGroup
from mrt_ray.methods import METHODS, StepContext
from mrt_ray.models import load_tokenizer, resolve_model
from mrt_ray.recovery import Rearming
from mrt_ray.report.traces import trace_records
from mrt_ray.rewards import get_grader
from mrt_ray.rewards.score import score
from mrt_ray.rewards.shaping import generation_limit
from mrt_ray.rollout.pool import PendingRollout, RolloutPool, collect_rollout, submit_rollout
from mrt_ray.rollout.types import SamplingSpec
from mrt_ray.rollout.worker import RolloutWorker
from mrt_ray.schedule import at_step, scheduled_metrics
from mrt_ray.tasks.budget import budget_stats
from mrt_ray.tasks.source import PromptSource
from mrt_ray.tracking import Tracker
from mrt_ray.trajectory import Trajectory
from mrt_ray.utils import new_run_dir, timed
from mrt_ray.weight_sync.push import WeightSync


@dataclass
class StepResult:
    metrics: dict
    next_pending: PendingRollout | None  # async mode: the next step's rollout, already submitted


class Trainer:
    def __init__(self, cfg: Config):
        self.resume_from = None
        if cfg.resume:
            run_dir = Path(cfg.resume)
            if not (run_dir / "config.yaml").is_file():
                raise FileNotFoundError(f"resume={cfg.resume}: no config.yaml there (not an mrt-ray run directory)")
            cfg = from_yaml_file(run_dir / "config.yaml")
            self.resume_from = checkpoint.latest(run_dir)
        else:
            run_dir = new_run_dir(cfg.run.dir, cfg.run.name, "metrics.jsonl",
                                  "continue it with resume=<that dir> or choose another run.dir")
            cfg.run.dir = str(run_dir)
            (run_dir / "config.yaml").write_text(to_yaml(cfg))
        self.cfg, self.dir = cfg, run_dir
        self.method = METHODS.lookup(cfg.algo.name)
        console.attach(run_dir)  # quiet console: the libraries' output to <run>/logs/
        self.model_path = resolve_model(cfg)
        self.tok = load_tokenizer(self.model_path, cfg.model)
        self.source = PromptSource(cfg, self.tok)
        self.grader = get_grader(cfg.task.grader, cfg.task.answer_marker, cfg.task.grader_timeout, cfg.task.dataset)
        self.version = 0  # the policy version: weight pushes so far
        self.bad_steps = 0  # non-finite steps skipped so far (learner.max_bad_steps)
        self.next_pending: PendingRollout | None = None  # async mode: the next step's rollout, in flight
        self.tracker: Tracker | None = None

    # ------------------------------------------------------------------ set-up
    def start_actors(self) -> None:
        cfg = self.cfg
        init_ray(cfg)
        local = not (cfg.ray.address or os.environ.get("RAY_ADDRESS"))
        uses_estimator = self.method.needs_estimator(cfg)
        self.placement = Placement(cfg, with_estimators=uses_estimator)  # resolves learner.num_ranks=0
        (self.dir / "config.yaml").write_text(to_yaml(cfg))  # the layout as run: a resume keeps its ranks
        self.learners = LearnerGroup(cfg, self.placement, self.model_path, local)

        def workers(role: str, n: int, seed_base: int) -> list:
            return [self.placement.actor(RolloutWorker, role, i, cfg, self.model_path, seed_base + i,
                                         threads=cfg.rollout.threads, max_restarts=cfg.rollout.max_restarts)
                    for i in range(n)]

        self.workers = workers("rollout", cfg.rollout.num_workers, 0)
        self.estimator_workers = workers("estimator", cfg.progress.num_workers, 100) if uses_estimator else []
        probe_ids = self.source.encode(self.source.eval[0].prompt + "0123456789 Wait, let me check.")
        tol = 1e-3  # the probe's floor: low-precision noise is measured per worker on the base weights (WeightSync)
        self.sync = WeightSync(self.learners, self.workers + self.estimator_workers, self.placement, probe_ids,
                               cfg.learner.collective_timeout_s, tol, cfg.rollout.startup_timeout_s)
        self.pool = Rearming(RolloutPool(self.workers, "rollout"), self.sync)
        self.estimator = None
        if uses_estimator:
            from mrt_ray.progress.pool import EstimatorPool

            self.estimator_pool = Rearming(RolloutPool(self.estimator_workers, "estimator"), self.sync)
            self.estimator = EstimatorPool(cfg, self.source, self.grader, self.estimator_pool.generate)

    @property
    def actors(self) -> list:
        return self.learners.actors + self.workers + self.estimator_workers

    # ------------------------------------------------------------------ one step
    def submit_rollout(self, step: int) -> PendingRollout:
        """Steps 1-2 (prompts, rollout) started on the workers with the weights they hold now."""
        cfg = at_step(self.cfg, step)  # scheduled reward parameters (algo.schedule) as of this step
        rc = cfg.rollout
        spec = SamplingSpec(n=rc.n_samples, temperature=rc.temperature, top_p=rc.top_p,
                            max_tokens=generation_limit(cfg))
        return submit_rollout(self.pool, self.source.batch(step), self.source.encode, spec, (cfg.seed, "train", step))

    def step(self, step: int, pending: PendingRollout | None = None) -> StepResult:
        """One training step. `pending`: its rollout, already submitted (async mode); None: submit it now.
        In async mode the NEXT step's rollout is submitted before learning, so generation overlaps the update and
        its samples are one policy version behind (corrected by the truncated importance weight)."""
        cfg = at_step(self.cfg, step)  # scheduled reward parameters (algo.schedule) as of this step
        m = scheduled_metrics(cfg)
        next_pending = None
        with timed(m, "step_seconds"):
            with timed(m, "generate_seconds"):  # 1-2. prompts, rollout
                groups, gen = collect_rollout(self.pool, pending or self.submit_rollout(step))
            m["generate_worker_seconds"] = gen["seconds"]
            m["generate_tokens_per_s"] = gen["tokens"] / max(gen["seconds"], 1e-9)
            m["staleness_max"] = max(self.version - tr.completion.version for g in groups for tr in g)
            if cfg.train.async_rollout and step + 1 < cfg.train.steps:
                next_pending = self.submit_rollout(step + 1)
            if self.estimator is not None:  # 3-4. segment + estimate
                with timed(m, "estimate_seconds"):
                    m.update(self.estimator.estimate(groups, step))
            with timed(m, "score_seconds"):  # 5. reward
                m.update(score(groups, cfg, self.grader), **budget_stats(groups))
            lengths = [tr.length for g in groups for tr in g]
            stats = token_stats(lengths)
            m.update(tokens_mean=stats["mean"], tokens_p50=stats["p50"], tokens_p90=stats["p90"],
                     truncation=sum(not tr.completion.finished for g in groups for tr in g) / len(lengths))
            with timed(m, "advantage_seconds"):  # 6. advantage (with the reference pass or MRT's continuations)
                batch = self.build_batch(groups, step, m)
            with timed(m, "learn_seconds_wall"):
                if batch:
                    m.update(self.learners.train(batch))  # 7. learn
            if m.get("skipped"):
                self.bad_steps += 1  # counted here and checkpointed, so a resumed run keeps counting
                m["bad_steps"] = self.bad_steps
                if self.bad_steps >= cfg.learner.max_bad_steps:
                    raise RuntimeError(f"{self.bad_steps} steps had a non-finite loss (learner.max_bad_steps="
                                       f"{cfg.learner.max_bad_steps}); stopping. Lower learner.lr or check the data.")
            elif batch:
                self.version += 1
                m.update(self.sync.push(self.version))  # 8. push weights
        m["policy_version"] = self.version
        if cfg.wandb.log_samples_every and step % cfg.wandb.log_samples_every == 0:
            self._log_samples(groups, step)
        return StepResult(m, next_pending)

    def build_batch(self, groups: list[list[Trajectory]], step: int, m: dict) -> list[Trajectory]:
        """Step 6: the method's training batch, with per-token advantages (`mrt_ray.methods`)."""
        ctx = StepContext(groups=groups, cfg=self.cfg, step=step, metrics=m, reference=self.learners.ref_logprobs,
                          generate=self.pool.generate, grader=self.grader,
                          decode=lambda ids: self.tok.decode(ids, skip_special_tokens=True),
                          force_ids=self.source.encode(self.source.force_text), force_text=self.source.force_text)
        return self.method.build(ctx)

    def _log_samples(self, groups, step: int) -> None:
        decode = lambda ids: self.tok.decode(ids, skip_special_tokens=True)  # noqa: E731
        self.tracker.samples(step, trace_records([tr for g in groups[:4] for tr in g[:2]], step, decode))

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        """Train (or continue, with `resume=`) to train.steps. The actors and their placement group are released at
        the end, also on error, so the Ray session can host the next run."""
        resumed = (self.dir / "metrics.jsonl").exists()  # new_run_dir refuses such a dir for a fresh run
        self.start_actors()
        try:
            return self._run(resumed)
        finally:
            stop(self.actors)
            self.placement.remove()

    def _run(self, resumed: bool) -> dict:
        cfg = self.cfg
        start, wandb_id = 0, ""
        if self.resume_from is not None:
            state = checkpoint.load(self.resume_from, self.learners)
            start, self.version, wandb_id = state["step"] + 1, state["version"], state.get("wandb_id", "")
            self.bad_steps = state.get("bad_steps", 0)
        self.tracker = Tracker(cfg, self.dir, cfg.train.steps, start, wandb_id)
        if resumed:  # rows past the checkpoint are rewritten; no checkpoint yet: all (the first eval runs again)
            self.tracker.truncate(start - 1 if start else -2)
        self.sync.push(self.version)  # every worker serves the learner's weights (verified) before step `start`
        t0 = time.perf_counter()
        if start == 0:
            self.tracker.log(-1, evaluate(self.pool, self.source, cfg, self.grader, "eval"), advance=False)
        self.next_pending = self._prefetched(start)
        for step in range(start, cfg.train.steps):
            result = self.step(step, self.next_pending)
            self.next_pending, metrics = result.next_pending, result.metrics
            metrics.update(worker_restarts=self.sync.restarts,
                           rollout_reruns=self.pool.reruns + (self.estimator_pool.reruns if self.estimator else 0))
            if cfg.train.eval_every and (step + 1) % cfg.train.eval_every == 0 and step + 1 < cfg.train.steps:
                metrics.update(evaluate(self.pool, self.source, cfg, self.grader, "eval"))
            metrics["elapsed_seconds"] = time.perf_counter() - t0  # wall clock since this process began training
            self.tracker.log(step, metrics)
            if cfg.train.save_every and (step + 1) % cfg.train.save_every == 0 and step + 1 < cfg.train.steps:
                self._save(step)
        final = evaluate(self.pool, self.source, cfg, self.grader, "eval")
        self.tracker.log(cfg.train.steps, final, advance=False)
        ckpt = self._save(cfg.train.steps - 1)
        summary = {"steps": cfg.train.steps, "train_seconds": time.perf_counter() - t0, "checkpoint": str(ckpt / "hf"),
                   "model": self.model_path, "data_skipped": self.source.skipped, **final}
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.tracker.close()
        return summary

    def _prefetched(self, start: int) -> PendingRollout | None:
        """A resumed async run's first batch: the one the interrupted run had prefetched, saved with the checkpoint."""
        saved = checkpoint.load_prefetched(self.resume_from) if self.resume_from is not None else None
        if saved is None:
            return None
        problems = self.source.batch(start)
        return PendingRollout(problems, [self.source.encode(p.prompt) for p in problems], collected=saved)

    def _save(self, step: int) -> Path:
        prefetched = None
        if self.next_pending is not None:  # async: step+1's batch, sampled with weights this checkpoint lacks
            collect_rollout(self.pool, self.next_pending)  # fills next_pending.collected (once)
            prefetched = self.next_pending.collected
        path = checkpoint.save(self.dir, step, self.learners,
                               {"version": self.version, "wandb_id": self.tracker.wandb_id,
                                "bad_steps": self.bad_steps}, prefetched)
        checkpoint.prune(self.dir)
        return path


def train(cfg: Config) -> dict:
    import ray

    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        if trainer.tracker is not None:
            trainer.tracker.bar.close()
        ray.shutdown()
