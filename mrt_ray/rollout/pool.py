"""Step 2 of the data path: sample completions on a pool of rollout workers (requests split evenly), and the
sampling of n trajectories per prompt (`submit_rollout` / `collect_rollout`).

A pool only samples and reports: a chunk whose worker died before answering, or that came back from a policy
version other than the one it was submitted for (a worker Ray restarted since the last push serves its base
weights), raises `WorkerLost` naming the worker. Re-arming the worker (pushing the current weights) and re-running
the chunk with the SAME requests and seeds is the controller's job (`mrt_ray.recovery`). Results are placed by chunk
position and a chunk's answer is fetched once, so no sample is lost or counted twice.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

from mrt_ray.rollout.types import CollectedRollout, Completion, Request, SamplingSpec
from mrt_ray.tasks import Problem
from mrt_ray.trajectory import Trajectory


def request_seed(*parts) -> int:
    """A stable 31-bit seed from (run seed, step, prompt index, ...): same inputs, same samples."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "little") >> 1


class WorkerLost(RuntimeError):
    """A worker died during a chunk, or answered with another policy version than the chunk was submitted for."""

    def __init__(self, chunk: Chunk, role: str, cause: str):
        super().__init__(f"{role} worker {chunk.worker} was lost ({cause})")
        self.chunk, self.cause = chunk, cause


@dataclass
class Chunk:
    """One worker's share of a submit: enough to re-run it exactly."""

    worker: int
    requests: list[Request]
    future: Any  # ray.ObjectRef of the worker's generate()
    version: int | None  # the policy version its worker was given when it was submitted (None: not checked)
    reruns: int = 0
    result: tuple | None = None  # (completions per request, stats) once fetched


class RolloutPool:
    def __init__(self, workers: list, role: str = "rollout", get: Callable = ray.get):
        """`role` names the pool in messages; `get` resolves a worker's future (ray.get; tests pass their own)."""
        self.workers, self.role, self._get = workers, role, get

    def submit(self, requests: list[Request], version: int | None = None) -> list[Chunk]:
        """Start generation (requests split evenly over the workers); `version`: the policy version every answer
        must come from (None: unchecked). Returns the pending chunks."""
        k = len(self.workers)
        size = -(-len(requests) // k)
        chunks = [requests[i * size:(i + 1) * size] for i in range(k)]
        return [Chunk(i, c, self.workers[i].generate.remote(c), version) for i, c in enumerate(chunks) if c]

    def rerun(self, chunk: Chunk, version: int | None) -> None:
        """Submit a lost chunk's requests again, on its (restarted) worker, for `version`."""
        chunk.future = self.workers[chunk.worker].generate.remote(chunk.requests)
        chunk.version, chunk.reruns, chunk.result = version, chunk.reruns + 1, None

    def collect(self, chunks: list[Chunk]) -> tuple[list[list[Completion]], dict]:
        """Completions per request, in request order; stats: tokens and the slowest worker's seconds. Raises
        WorkerLost for the first chunk whose worker was lost (chunks already fetched keep their answers)."""
        for chunk in chunks:
            if chunk.result is None:
                chunk.result = self._fetch(chunk)
        out, tokens, seconds = [], 0, 0.0
        for chunk in chunks:
            groups, st = chunk.result
            out.extend(groups)
            tokens += st["tokens"]
            seconds = max(seconds, st["seconds"])
        return out, {"tokens": tokens, "seconds": seconds}

    def _fetch(self, chunk: Chunk) -> tuple:
        try:
            groups, st = self._get(chunk.future)
        except ray.exceptions.RayActorError as e:
            raise WorkerLost(chunk, self.role, f"{type(e).__name__}: the process died") from e
        served = {c.version for g in groups for c in g}
        if chunk.version is not None and not served <= {chunk.version}:
            raise WorkerLost(chunk, self.role, f"it served policy version {sorted(served)} instead of "
                                               f"{chunk.version}: restarted")
        return groups, st

    def generate(self, requests: list[Request]) -> tuple[list[list[Completion]], dict]:
        return self.collect(self.submit(requests))


@dataclass
class PendingRollout:
    """The trajectories of one batch of prompts, being sampled (`chunks`) or already sampled (`collected`: a resumed
    async run's prefetched batch, read from its checkpoint)."""

    problems: list[Problem]
    prompt_ids: list[list[int]]
    chunks: list[Chunk] = field(default_factory=list)
    collected: CollectedRollout | None = None


def submit_rollout(pool, problems: list[Problem], encode, spec: SamplingSpec, seed_parts: tuple) -> PendingRollout:
    """Start sampling `spec.n` trajectories per problem, seeded per prompt, on `pool` (a RolloutPool, or the
    controller's re-arming wrapper); finish with `collect_rollout`."""
    prompt_ids = [encode(p.prompt) for p in problems]
    reqs = [Request(ids, SamplingSpec(**{**spec.__dict__, "seed": request_seed(*seed_parts, i)}))
            for i, ids in enumerate(prompt_ids)]
    return PendingRollout(problems, prompt_ids, pool.submit(reqs))


def collect_rollout(pool, pending: PendingRollout) -> tuple[list[list[Trajectory]], dict]:
    """The trajectories of a pending rollout, one group per problem, and the sampling stats."""
    if pending.collected is None:
        pending.collected = CollectedRollout(*pool.collect(pending.chunks))
    outs, stats = pending.collected.outs, pending.collected.stats
    groups = [[Trajectory(problem=p, prompt_ids=ids, completion=c, group=g) for c in comps]
              for g, (p, ids, comps) in enumerate(zip(pending.problems, pending.prompt_ids, outs))]
    return groups, stats


def sample_groups(pool, problems: list[Problem], encode, spec: SamplingSpec, seed_parts: tuple) -> tuple[
        list[list[Trajectory]], dict]:
    return collect_rollout(pool, submit_rollout(pool, problems, encode, spec, seed_parts))
