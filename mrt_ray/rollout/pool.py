"""Step 2 of the data path: sample n completions per prompt on the rollout workers (requests split evenly)."""
from __future__ import annotations

import hashlib

import ray

from mrt_ray.rollout.types import Completion, Request, SamplingSpec
from mrt_ray.tasks import Problem
from mrt_ray.trajectory import Trajectory


def request_seed(*parts) -> int:
    """A stable 31-bit seed from (run seed, step, prompt index, ...): same inputs, same samples."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "little") >> 1


class RolloutPool:
    def __init__(self, workers: list):
        self.workers = workers

    def submit(self, requests: list[Request]) -> list:
        """Start generation (requests split evenly over the workers); returns the pending futures."""
        k = len(self.workers)
        size = -(-len(requests) // k)
        chunks = [requests[i * size:(i + 1) * size] for i in range(k)]
        return [w.generate.remote(c) for w, c in zip(self.workers, chunks) if c]

    @staticmethod
    def collect(futures: list) -> tuple[list[list[Completion]], dict]:
        """Completions per request, in request order. Stats: tokens and the slowest worker's seconds."""
        out, tokens, seconds = [], 0, 0.0
        for groups, st in ray.get(futures):
            out.extend(groups)
            tokens += st["tokens"]
            seconds = max(seconds, st["seconds"])
        return out, {"tokens": tokens, "seconds": seconds}

    def generate(self, requests: list[Request]) -> tuple[list[list[Completion]], dict]:
        return self.collect(self.submit(requests))

    def submit_rollout(self, problems: list[Problem], encode, spec: SamplingSpec, seed_parts: tuple) -> tuple:
        """Start sampling n trajectories per problem (`spec.n`), seeded per prompt; finish with `collect_rollout`."""
        prompt_ids = [encode(p.prompt) for p in problems]
        reqs = [Request(ids, SamplingSpec(**{**spec.__dict__, "seed": request_seed(*seed_parts, i)}), key=p.id)
                for i, (p, ids) in enumerate(zip(problems, prompt_ids))]
        return problems, prompt_ids, self.submit(reqs)

    def collect_rollout(self, pending: tuple) -> tuple[list[list[Trajectory]], dict]:
        problems, prompt_ids, futures = pending
        outs, stats = self.collect(futures)
        groups = [[Trajectory(problem=p, prompt_ids=ids, completion=c, group=g) for c in comps]
                  for g, (p, ids, comps) in enumerate(zip(problems, prompt_ids, outs))]
        return groups, stats

    def rollout(self, problems: list[Problem], encode, spec: SamplingSpec, seed_parts: tuple) -> tuple[
            list[list[Trajectory]], dict]:
        return self.collect_rollout(self.submit_rollout(problems, encode, spec, seed_parts))
