"""The one controller. Each training step walks the data path in order:

    prompts -> rollout -> segment -> estimate -> reward -> advantage -> learn -> push weights

(segment and estimate run for MRT only). It owns the run directory: config.yaml, metrics.jsonl, checkpoints/,
summary.json.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mrt_ray import checkpoint
from mrt_ray.actors import Placement, init_ray, stop
from mrt_ray.algos.assign import assign_advantages, uniform_groups
from mrt_ray.config import Config, from_yaml_file, to_yaml
from mrt_ray.validation import uses_estimator
from mrt_ray.eval.heldout import evaluate
from mrt_ray.eval.metrics import token_stats
from mrt_ray.learner.group import LearnerGroup
from mrt_ray.models import load_tokenizer, resolve_model
from mrt_ray.weight_sync.push import WeightSync
from mrt_ray.progress.estimate import select_star
from mrt_ray.progress.termination import termination_baseline_batch
from mrt_ray.rewards import get_grader
from mrt_ray.rewards.score import score
from mrt_ray.rewards.shaping import generation_limit
from mrt_ray.schedule import at_step, scheduled_metrics
from mrt_ray.rollout.pool import RolloutPool
from mrt_ray.rollout.types import CollectedRollout, SamplingSpec
from mrt_ray.rollout.worker import RolloutWorker
from mrt_ray.tasks.budget import budget_stats
from mrt_ray.tasks.source import PromptSource
from mrt_ray.tracking import Tracker
from mrt_ray.utils import new_run_dir
from mrt_ray.trajectory import Trajectory


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
        self.model_path = resolve_model(cfg)
        self.tok = load_tokenizer(self.model_path, cfg.model)
        self.source = PromptSource(cfg, self.tok)
        self.grader = get_grader(cfg.task.grader, cfg.task.answer_marker, cfg.task.grader_timeout)
        self.mrt = uses_estimator(cfg)
        self.bad_steps = 0  # non-finite steps skipped so far (learner.max_bad_steps)

    # ------------------------------------------------------------------ set-up
    def start_actors(self) -> None:
        cfg = self.cfg
        init_ray(cfg)
        local = not (cfg.ray.address or os.environ.get("RAY_ADDRESS"))
        self.placement = Placement(cfg, with_estimators=self.mrt)
        self.learners = LearnerGroup(cfg, self.placement, self.model_path, local)
        self.workers = [
            self.placement.actor(RolloutWorker, "rollout", i, cfg, self.model_path, i, threads=cfg.rollout.threads,
                                 max_restarts=cfg.rollout.max_restarts)
            for i in range(cfg.rollout.num_workers)
        ]
        self.pool = RolloutPool(self.workers)
        self.estimator = None
        if self.mrt:
            from mrt_ray.progress.pool import EstimatorPool

            self.estimator = EstimatorPool(cfg, self.placement, self.model_path, self.source, self.grader)
        probe_ids = self.source.encode(self.source.eval[0].prompt + "0123456789 Wait, let me check.")
        tol = 1e-3 if cfg.model.dtype == "float32" else 5e-2
        self.sync = WeightSync(self.learners, self.workers + (self.estimator.workers if self.estimator else []),
                               self.placement, probe_ids, local, cfg.learner.collective_timeout_s, tol)
        self.pool.guard(self.sync, "rollout")  # a restarted worker is re-armed with the current weights and re-run
        if self.estimator is not None:
            self.estimator.pool.guard(self.sync, "estimator")

    # ------------------------------------------------------------------ one step
    def submit_rollout(self, step: int) -> tuple:
        """Steps 1-2 (prompts, rollout) started on the workers with the weights they hold now."""
        cfg = at_step(self.cfg, step)  # scheduled reward parameters (algo.schedule) as of this step
        spec = SamplingSpec(n=cfg.rollout.n_samples, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                            max_tokens=generation_limit(cfg))
        return self.pool.submit_rollout(self.source.batch(step), self.source.encode, spec, (cfg.seed, "train", step))

    def step(self, step: int, pending: tuple | None = None) -> dict:
        """One training step. `pending`: its rollout, already submitted (async mode); None: submit it now.
        In async mode the NEXT step's rollout is submitted before learning, so generation overlaps the update and
        its samples are one policy version behind (corrected by the truncated importance weight)."""
        cfg = at_step(self.cfg, step)  # scheduled reward parameters (algo.schedule) as of this step
        m = scheduled_metrics(cfg)
        t_step = time.perf_counter()
        pending = pending or self.submit_rollout(step)  # 1-2. prompts, rollout
        groups, gen = self.pool.collect_rollout(pending)
        m["generate_seconds"] = time.perf_counter() - t_step
        m["generate_worker_seconds"] = gen["seconds"]
        m["generate_tokens_per_s"] = gen["tokens"] / max(gen["seconds"], 1e-9)
        m["staleness_max"] = max(self.version - tr.completion.version for g in groups for tr in g)
        self.next_pending = None
        if cfg.train.async_rollout and step + 1 < cfg.train.steps:
            self.next_pending = self.submit_rollout(step + 1)
        if self.estimator is not None:  # 3-4. segment + estimate (MRT)
            t = time.perf_counter()
            m.update(self.estimator.estimate(groups, step))
            m["estimate_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        m.update(score(groups, cfg, self.grader), **budget_stats(groups))  # 5. reward
        m["score_seconds"] = time.perf_counter() - t
        trajs = [tr for g in groups for tr in g]
        lengths = [tr.length for tr in trajs]
        stats = token_stats(lengths)
        m.update(tokens_mean=stats["mean"], tokens_p50=stats["p50"], tokens_p90=stats["p90"],
                 truncation=sum(not tr.completion.finished for tr in trajs) / len(trajs))
        batch = self._advantages(groups, step, m)  # 6. advantage
        t = time.perf_counter()
        if batch:
            m.update(self.learners.train(batch))  # 7. learn
        m["learn_seconds_wall"] = time.perf_counter() - t
        if m.get("skipped"):
            self.bad_steps += 1  # counted here and checkpointed, so a resumed run keeps counting
            m["bad_steps"] = self.bad_steps
            if m["bad_steps"] >= cfg.learner.max_bad_steps:
                raise RuntimeError(f"{int(m['bad_steps'])} steps had a non-finite loss (learner.max_bad_steps="
                                   f"{cfg.learner.max_bad_steps}); stopping. Lower learner.lr or check the data.")
        elif batch:
            self.version += 1
            m.update(self.sync.push(self.version))  # 8. push weights
        m["step_seconds"] = time.perf_counter() - t_step
        m["policy_version"] = self.version
        if cfg.wandb.log_samples_every and step % cfg.wandb.log_samples_every == 0:
            self._log_samples(groups, step)
        return m

    def _advantages(self, groups: list[list[Trajectory]], step: int, m: dict) -> list[Trajectory]:
        """The training batch with per-token advantages, by algorithm."""
        cfg = self.cfg
        if cfg.algo.name == "star":  # MRT-STaR: SFT on the correct traces that make the most progress
            flat = [t for g in groups for t in g]
            keep = select_star([{"j": t.j_values, "tokens": t.length} for t in flat], cfg.algo.mrt.star_keep)
            m["star_kept"] = len(keep)
            for i in keep:
                flat[i].advantages = [0.0] * flat[i].length
            return [flat[i] for i in keep]
        if cfg.algo.drop_uniform_groups:
            drop = set(uniform_groups(groups))
            m["dropped_groups"] = len(drop)
            groups = [g for i, g in enumerate(groups) if i not in drop] or groups
        if cfg.algo.kl_in_reward > 0:  # the reference policy's log-probs, for the KL inside the reward
            self.learners.ref_logprobs([t for g in groups for t in g])
        assign_advantages(groups, cfg, progress_bonus=cfg.algo.name == "mrt" and cfg.algo.mrt.variant == "bonus")
        batch = [t for g in groups for t in g]
        if cfg.algo.name == "mrt" and cfg.algo.mrt.variant == "termination_baseline":
            decode = lambda ids: self.tok.decode(ids, skip_special_tokens=True)  # noqa: E731
            t = time.perf_counter()
            extra, stats = termination_baseline_batch(groups, cfg, self.pool, decode, self.grader, step)
            m.update(stats, continue_seconds=time.perf_counter() - t)  # sampling and grading the continuations
            batch += extra
        return batch

    def _log_samples(self, groups, step: int) -> None:
        rows = [[tr.problem.prompt, tr.completion.text, tr.reward, tr.length, json.dumps(tr.episode_spans),
                 json.dumps([round(p, 3) for p in tr.progress])] for g in groups[:4] for tr in g[:2]]
        self.tracker.table("samples", ["prompt", "completion", "reward", "length", "episodes", "progress"], rows, step)

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        """Train (or continue, with `resume=`) to train.steps. The actors and their placement group are released at
        the end, also on error, so the Ray session can host the next run."""
        resumed = (self.dir / "metrics.jsonl").exists()  # new_run_dir refuses such a dir for a fresh run
        self.start_actors()
        try:
            return self._run(resumed)
        finally:
            stop(self.learners.actors + self.workers + (self.estimator.workers if self.estimator is not None else []))
            self.placement.remove()

    def _run(self, resumed: bool) -> dict:
        cfg = self.cfg
        start, self.version, wandb_id = 0, 0, ""
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
            metrics = self.step(step, self.next_pending)
            metrics.update(worker_restarts=self.sync.restarts, rollout_reruns=self.pool.reruns + (
                self.estimator.pool.reruns if self.estimator is not None else 0))
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

    def _prefetched(self, start: int) -> tuple | None:
        """A resumed async run's first batch: the one the interrupted run had prefetched, saved with the checkpoint."""
        saved = checkpoint.load_prefetched(self.resume_from) if self.resume_from is not None else None
        if saved is None:
            return None
        problems = self.source.batch(start)
        return problems, [self.source.encode(p.prompt) for p in problems], saved

    def _save(self, step: int) -> Path:
        prefetched = None
        if self.next_pending is not None:  # async: step+1's batch, sampled with weights this checkpoint lacks
            problems, prompt_ids, futures = self.next_pending
            prefetched = futures if isinstance(futures, CollectedRollout) else CollectedRollout(
                *self.pool.collect(futures))
            self.next_pending = problems, prompt_ids, prefetched
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
        if getattr(trainer, "tracker", None) is not None:
            trainer.tracker.bar.close()
        ray.shutdown()
