"""Step 2 of the data path: sample n completions per prompt on the rollout workers (requests split evenly).

Worker failure: Ray restarts a dead worker process (`rollout.max_restarts`). A chunk whose worker died before
answering, or whose answer came from a policy version other than the one the pool expected (a worker restarted since
the last push serves the base weights), is re-run on the restarted worker with the SAME requests and seeds, after the
pool's WeightSync has re-armed it (rebuilt the weight group and pushed the current version). Results are placed by
chunk position, so no sample is lost or counted twice. A pool without a WeightSync (`guard`) cannot re-arm a worker:
a dead worker is then an error naming it.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import ray

from mrt_ray.actors import wait_ready
from mrt_ray.rollout.types import CollectedRollout, Completion, Request, SamplingSpec
from mrt_ray.tasks import Problem
from mrt_ray.trajectory import Trajectory

if TYPE_CHECKING:
    from mrt_ray.weight_sync.push import WeightSync

log = logging.getLogger(__name__)


def request_seed(*parts) -> int:
    """A stable 31-bit seed from (run seed, step, prompt index, ...): same inputs, same samples."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "little") >> 1


@dataclass
class Chunk:
    """One worker's share of a submit: enough to re-run it exactly."""

    worker: int
    requests: list[Request]
    future: ray.ObjectRef
    version: int | None  # the policy version its worker was given when it was submitted (None: not checked)
    reruns: int = 0


class RolloutPool:
    def __init__(self, workers: list):
        self.workers = workers
        self.sync: WeightSync | None = None
        self.role = "rollout"
        self.reruns = 0  # chunks re-run after a worker was lost

    def guard(self, sync: WeightSync, role: str = "rollout") -> None:
        """Re-arm restarted workers through `sync` (re-join the weight group, receive the current version) and check
        that every answer comes from the version `sync` last pushed. `role` names the pool in messages."""
        self.sync, self.role = sync, role

    def submit(self, requests: list[Request]) -> list[Chunk]:
        """Start generation (requests split evenly over the workers); returns the pending chunks."""
        k = len(self.workers)
        size = -(-len(requests) // k)
        chunks = [requests[i * size:(i + 1) * size] for i in range(k)]
        return [self._start(i, c) for i, c in enumerate(chunks) if c]

    def _start(self, i: int, requests: list[Request], reruns: int = 0) -> Chunk:
        version = self.sync.version if self.sync is not None else None
        return Chunk(i, requests, self.workers[i].generate.remote(requests), version, reruns)

    def collect(self, pending: list[Chunk]) -> tuple[list[list[Completion]], dict]:
        """Completions per request, in request order. Stats: tokens and the slowest worker's seconds."""
        out, tokens, seconds = [], 0, 0.0
        for chunk in pending:
            groups, st = self._result(chunk)
            out.extend(groups)
            tokens += st["tokens"]
            seconds = max(seconds, st["seconds"])
        return out, {"tokens": tokens, "seconds": seconds}

    def _result(self, chunk: Chunk) -> tuple[list[list[Completion]], dict]:
        """One chunk's answer; a lost worker's chunk is re-run (bounded by Ray's restarts of that worker)."""
        name = f"{self.role} worker {chunk.worker}"
        while True:
            try:
                groups, st = ray.get(chunk.future)
            except ray.exceptions.RayActorError as e:
                cause = f"{type(e).__name__}: the process died"
            else:
                served = {c.version for g in groups for c in g}
                if chunk.version is None or served <= {chunk.version}:
                    return groups, st
                if chunk.reruns:  # re-armed and still wrong: not a restart, a bug
                    raise RuntimeError(f"{name} served policy versions {sorted(served)} after being re-armed with "
                                       f"version {chunk.version}")
                cause = f"it served policy version {sorted(served)} instead of {chunk.version} (restarted)"
            if self.sync is None or self.sync.version is None:
                raise RuntimeError(f"{name} was lost ({cause}) and this pool has no pushed weights to re-arm a "
                                   f"restarted worker with")
            info = wait_ready(self.workers[chunk.worker], name, self.sync.timeout_s)
            log.warning("%s lost (%s); restarted as pid %s; pushing policy version %s and re-running its %d requests",
                        name, cause, info["pid"], self.sync.version, len(chunk.requests))
            self.sync.push(self.sync.version)  # finds the new process, rebuilds the weight group, verifies
            self.reruns += 1
            chunk = self._start(chunk.worker, chunk.requests, chunk.reruns + 1)

    def generate(self, requests: list[Request]) -> tuple[list[list[Completion]], dict]:
        return self.collect(self.submit(requests))

    def submit_rollout(self, problems: list[Problem], encode, spec: SamplingSpec, seed_parts: tuple) -> tuple:
        """Start sampling n trajectories per problem (`spec.n`), seeded per prompt; finish with `collect_rollout`."""
        prompt_ids = [encode(p.prompt) for p in problems]
        reqs = [Request(ids, SamplingSpec(**{**spec.__dict__, "seed": request_seed(*seed_parts, i)}), key=p.id)
                for i, (p, ids) in enumerate(zip(problems, prompt_ids))]
        return problems, prompt_ids, self.submit(reqs)

    def collect_rollout(self, pending: tuple) -> tuple[list[list[Trajectory]], dict]:
        """`pending`: what `submit_rollout` returned, or a `CollectedRollout` (already sampled: a resumed async run's
        prefetched batch, read from its checkpoint)."""
        problems, prompt_ids, futures = pending
        outs, stats = (futures.outs, futures.stats) if isinstance(futures, CollectedRollout) else self.collect(futures)
        groups = [[Trajectory(problem=p, prompt_ids=ids, completion=c, group=g) for c in comps]
                  for g, (p, ids, comps) in enumerate(zip(problems, prompt_ids, outs))]
        return groups, stats

    def rollout(self, problems: list[Problem], encode, spec: SamplingSpec, seed_parts: tuple) -> tuple[
            list[list[Trajectory]], dict]:
        return self.collect_rollout(self.submit_rollout(problems, encode, spec, seed_parts))
