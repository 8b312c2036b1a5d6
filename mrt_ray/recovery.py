"""The controller's side of worker failure: a pool that re-arms lost workers.

A `RolloutPool` raises `WorkerLost` when a worker's process died mid-chunk (Ray restarts it, up to
rollout.max_restarts) or answered from a stale policy version. `Rearming` wraps such a pool for the controller:
it waits for the restarted process, pushes the current policy version to it through the WeightSync (which finds
the new process, rebuilds the weight group and verifies the push), and re-runs the chunk with the same requests and
seeds. The pool and the WeightSync never hold each other; this module holds both.
"""
from __future__ import annotations

import logging

from mrt_ray.actors import wait_ready
from mrt_ray.rollout.pool import Chunk, RolloutPool, WorkerLost
from mrt_ray.rollout.types import Completion, Request

log = logging.getLogger("mrt_ray")


class Rearming:
    def __init__(self, pool: RolloutPool, sync):
        """`sync`: the WeightSync whose `version` every answer must come from and whose `push` re-arms a worker."""
        self.pool, self.sync = pool, sync
        self.reruns = 0  # chunks re-run after their worker was lost

    @property
    def workers(self) -> list:
        return self.pool.workers

    def submit(self, requests: list[Request]) -> list[Chunk]:
        return self.pool.submit(requests, self.sync.version)

    def collect(self, chunks: list[Chunk]) -> tuple[list[list[Completion]], dict]:
        while True:
            try:
                return self.pool.collect(chunks)
            except WorkerLost as lost:
                self._rearm(lost)

    def _rearm(self, lost: WorkerLost) -> None:
        chunk, name = lost.chunk, f"{self.pool.role} worker {lost.chunk.worker}"
        if chunk.reruns:  # re-armed and lost again on the same chunk: not a restart, a bug (or a crash loop)
            raise RuntimeError(f"{name} was lost again after being re-armed with version {chunk.version} "
                               f"({lost.cause})") from lost
        if self.sync.version is None:
            raise RuntimeError(f"{lost}; no weights were pushed yet to re-arm a restarted worker with") from lost
        info = wait_ready(self.pool.workers[chunk.worker], name, self.sync.startup_timeout_s,
                          "rollout.startup_timeout_s")
        log.warning("%s lost (%s); restarted as pid %s; pushing policy version %s and re-running its %d requests",
                    name, lost.cause, info["pid"], self.sync.version, len(chunk.requests))
        self.sync.push(self.sync.version)  # finds the new process, rebuilds the weight group, verifies
        self.reruns += 1
        self.pool.rerun(chunk, self.sync.version)

    def generate(self, requests: list[Request]) -> tuple[list[list[Completion]], dict]:
        return self.collect(self.submit(requests))
