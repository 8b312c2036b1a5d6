"""Step 8 of the data path: push the learner's weights to every inference worker, and prove they arrived.

One metadata RPC at connect time; per push one RPC per actor and the tensors over the weight group (gloo/NCCL).
Every push is verified twice: per-tensor checksums (the bytes arrived) and a log-prob probe on a fixed sequence
(the engine actually serves the new weights). A failed or partial push raises.

A worker that Ray restarted (a fresh process: base weights, no weight group) is found before every push by its
process id; the weight group is then rebuilt (every member joins a NEW group on a new port; the old one is dropped,
and all its operations carry a timeout) and the push goes to all workers, the restarted one included."""
from __future__ import annotations

import logging
import time

import ray

from mrt_ray.actors import Placement, wait_ready
from mrt_ray.learner.group import LearnerGroup
from mrt_ray.weight_sync.group import verify_checksums

log = logging.getLogger(__name__)


class WeightSync:
    def __init__(self, learners: LearnerGroup, workers: list, placement: Placement, probe_ids: list[int],
                 local: bool, timeout_s: float, probe_tol: float):
        self.learners, self.workers, self.placement = learners, workers, placement
        self.probe_ids, self.local, self.timeout_s, self.probe_tol = probe_ids, local, timeout_s, probe_tol
        self.metas = ray.get(learners.actors[0].weight_metas.remote())
        self.bytes = sum(_numel(s) * _itemsize(d) for _, s, d in self.metas)
        self.version: int | None = None  # the policy version every worker holds (set by push)
        self.restarts = 0  # workers found restarted (a new process) and re-joined
        self.connect()

    def _ready(self) -> list[dict]:
        return [wait_ready(w, f"inference worker {i}", self.timeout_s) for i, w in enumerate(self.workers)]

    def connect(self, infos: list[dict] | None = None) -> None:
        """(Re)build the weight group: learner rank 0 is rank 0, then each worker's engine ranks in order.
        `infos`: the workers' ready() answers, when the caller has them."""
        infos = infos or self._ready()
        self.pids = [info["pid"] for info in infos]  # the processes that are members of the group
        sizes = [info["group_size"] for info in infos]
        world = 1 + sum(sizes)
        ip, port = self.placement.node_address("learner", 0)
        ip = "127.0.0.1" if self.local else ip
        backend = "nccl" if self.placement.roles["learner"][0].get("GPU") else "gloo"
        futures = [a.init_weight_group.remote(ip, port, world, self.timeout_s) for a in self.learners.actors]
        base = 1
        for w, size in zip(self.workers, sizes):
            futures.append(w.init_weight_group.remote(backend, ip, port, base, world, self.timeout_s, self.metas))
            base += size
        ray.get(futures, timeout=self.timeout_s)

    def push(self, version: int) -> dict:
        """Send the learner's weights as `version` to every worker (re-joining restarted ones first) and verify."""
        infos = self._ready()
        restarted = [i for i, (info, pid) in enumerate(zip(infos, self.pids)) if info["pid"] != pid]
        if restarted:
            log.warning("inference workers %s were restarted (new processes); rebuilding the weight group", restarted)
            self.restarts += len(restarted)
            self.connect(infos)
        t0 = time.perf_counter()
        send = [a.push_weights.remote() for a in self.learners.actors]
        recv = [w.receive_weights.remote(version) for w in self.workers]
        sent = ray.get(send, timeout=self.timeout_s)[0]
        received = ray.get(recv, timeout=self.timeout_s)
        seconds = time.perf_counter() - t0
        for i, per_rank in enumerate(received):
            for r, sums in enumerate(per_rank):
                verify_checksums(sent["sums"], sums, f"worker {i} (engine rank {r})")
        diff = self.probe()
        self.version = version
        return {"push_seconds": seconds, "push_broadcast_seconds": sent["seconds"],
                "push_gbps": self.bytes / max(sent["seconds"], 1e-9) / 1e9, "push_probe_diff": diff}

    def probe(self) -> float:
        """Max |log-prob difference| between learner and every worker on the probe sequence; raises above tol."""
        ref = self.learners.call("probe_logprobs", self.probe_ids)[0]
        worst = 0.0
        for i, lp in enumerate(ray.get([w.prompt_logprobs.remote(self.probe_ids) for w in self.workers])):
            d = max(abs(a - b) for a, b in zip(ref, lp))
            if not d <= self.probe_tol:
                raise RuntimeError(f"weight push not applied on worker {i}: probe log-prob gap {d:.3g} > "
                                   f"{self.probe_tol:g} (stale or partial weights)")
            worst = max(worst, d)
        return worst


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _itemsize(dtype: str) -> int:
    return {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}.get(dtype, 4)
