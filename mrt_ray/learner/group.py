"""The learner group: N Learner actors forming one DeepSpeed world, fed equal shards of the step's trajectories.

On GPU every rank runs with TORCH_NCCL_ASYNC_ERROR_HANDLING=2 (unless the driver's environment sets it): an NCCL
collective that times out (a dead peer: another rank, or an inference worker in the weight group) aborts its
communicator and raises in Python. torch's default (3) ends the whole process instead, so one dead rollout worker
would take learner rank 0, and with it the DeepSpeed world, down with no error of its own.
"""
from __future__ import annotations

import math
import os

import ray

from mrt_ray.actors import Placement
from mrt_ray.algos.losses import StepNorm
from mrt_ray.config import Config
from mrt_ray.learner.actor import Learner
from mrt_ray.trajectory import Trajectory
from mrt_ray.utils import LOOPBACK


def learner_env(cfg: Config) -> dict[str, str]:
    """Environment of every learner rank: the CPU accelerator for DeepSpeed, or NCCL errors that raise (above)."""
    if not cfg.learner.num_gpus:
        return {"DS_ACCELERATOR": "cpu"}
    return {"TORCH_NCCL_ASYNC_ERROR_HANDLING": os.environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")}


class LearnerGroup:
    def __init__(self, cfg: Config, placement: Placement, model_path: str, local: bool):
        self.cfg = cfg
        n = cfg.learner.num_ranks
        self.actors = [
            placement.actor(Learner, "learner", r, cfg, model_path, r, n, threads=max(cfg.learner.threads, 1),
                            env=learner_env(cfg))
            for r in range(n)
        ]
        # the rendezvous: loopback for a local run, else the address of rank 0's node; rank 0 binds its port first
        self.host = LOOPBACK if local else placement.node_ip("learner", 0)
        port = self._gather([self.actors[0].listen.remote(self.host, "learners")], "listen",
                            cfg.learner.startup_timeout_s)[0]
        # a failed start (model load, DeepSpeed engine) surfaces with the rank before training begins
        self._gather([a.start.remote(self.host, port) for a in self.actors], "start (learner.startup_timeout_s)",
                     cfg.learner.startup_timeout_s)

    def call(self, method: str, *args) -> list:
        """Run `method` on every rank and wait; a dead rank is an error naming it."""
        return self._gather([getattr(a, method).remote(*args) for a in self.actors], method,
                            self.cfg.learner.collective_timeout_s * 2)

    def _gather(self, futures: list, method: str, timeout: float | None) -> list:
        """Every rank's result (`timeout` per rank; None: wait). On failure, name the rank that died: its peers fail
        too (their collectives lose the connection), so a dead actor is reported before any rank's secondary error."""
        out, errors = [], {}
        for rank, f in enumerate(futures):
            try:
                out.append(ray.get(f, timeout=timeout))
            except (ray.exceptions.RayError, RuntimeError) as e:
                errors[rank] = e
        if errors:
            dead = [r for r, e in errors.items() if isinstance(e, ray.exceptions.RayActorError)]
            rank = dead[0] if dead else min(errors)
            err = errors[rank]
            raise RuntimeError(f"learner rank {rank} {'died' if dead else 'failed'} during {method}: {err}. "
                               f"The run can be resumed from its last checkpoint with resume=<run dir>.") from err
        return out

    @staticmethod
    def _payload(shard: list[Trajectory]) -> dict:
        return {
            "input_ids": [t.prompt_ids + t.completion.ids for t in shard],
            "prompt_lens": [len(t.prompt_ids) for t in shard],
            "advantages": [t.advantages or [0.0] * t.length for t in shard],
            "rollout_logprobs": [t.completion.logprobs for t in shard],
        }

    def ref_logprobs(self, trajs: list[Trajectory]) -> None:
        """Fills every trajectory's `ref_logprobs` from the learners' frozen reference policy (algo.kl_in_reward)."""
        n = len(self.actors)
        shards = [trajs[r::n] for r in range(n)]
        n_micro = max(1, math.ceil(max(len(s) for s in shards) / self.cfg.learner.micro_batch_size))
        outs = self._gather([a.ref_logprobs.remote(self._payload(s), n_micro) for a, s in zip(self.actors, shards)],
                            "ref_logprobs", timeout=None)
        for shard, lps in zip(shards, outs):
            for t, lp in zip(shard, lps):
                t.ref_logprobs = lp

    def train(self, trajs: list[Trajectory]) -> dict:
        """One optimizer step over all trajectories. Returns token-weighted means of the ranks' statistics."""
        n = len(self.actors)
        shards = [trajs[r::n] for r in range(n)]  # round robin: sizes differ by at most one
        n_micro = max(1, math.ceil(max(len(s) for s in shards) / self.cfg.learner.micro_batch_size))
        # the whole step's counts: every rank's micro-batches aggregate against them, so shards may be unequal
        norm = StepNorm(tokens=float(sum(t.length for t in trajs)), seqs=float(sum(t.length > 0 for t in trajs)),
                        max_tokens=self.cfg.rollout.max_new_tokens)
        payload = [self._payload(s) for s in shards]
        stats = self._gather([a.train_step.remote(p, n_micro, norm) for a, p in zip(self.actors, payload)],
                             "train_step", timeout=None)  # a long step is fine: its collectives time out
        if stats[0].get("skipped"):
            return {"skipped": 1.0, "learn_seconds": stats[0]["learn_seconds"]}
        tokens = sum(s["tokens"] for s in stats)
        out = {k: sum(s[k] * s["tokens"] for s in stats) / max(tokens, 1) for k in stats[0]
               if k not in ("tokens", "logprob_diff_sum", "grad_norm", "lr", "learn_seconds", "skipped")}
        out.update(grad_norm=stats[0]["grad_norm"], lr=stats[0]["lr"], skipped=0.0,
                   learn_seconds=max(s["learn_seconds"] for s in stats),
                   logprob_diff=sum(s["logprob_diff_sum"] for s in stats) / max(tokens, 1))
        return out
