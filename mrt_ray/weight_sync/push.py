"""Step 8 of the data path: push the learner's weights to every inference worker, and prove they arrived.

One metadata RPC at connect time (the learner's state-dict layout, planned into buckets and sent to every member);
per push one RPC per actor and the buckets over the weight group (gloo/NCCL). Every push is verified twice: per-bucket
checksums (the bytes arrived) and a log-prob probe on a fixed sequence (the engine actually serves the new weights;
this also catches a tied output layer left stale). A failed or partial push raises, unless a worker was lost during it.

The probe is robust to low-precision noise: its statistic is the mean |log-prob gap| over the probe's tokens, judged
against the gap each worker showed on the base weights before any push (its noise floor: bf16 engines differ from the
learner by ~0.1-0.3 per token on identical weights). The gap a stale engine would show (the learner's move since the
last verified push) is reported beside it, so a log tells whether the probe could have seen a stale engine.

A worker that Ray restarted (a fresh process: base weights, no weight group) is found before every push by its
process id; the weight group is then rebuilt (every member aborts the old group and joins a NEW one on a new port
that learner rank 0 bound first) and the push goes to all workers, the restarted one included. A worker lost during a
push (or during the rebuild) makes the push start over the same way."""
from __future__ import annotations

import logging
import time

import ray

from mrt_ray.actors import Placement, wait_ready, weight_backend
from mrt_ray.learner.group import LearnerGroup
from mrt_ray.weight_sync.buckets import bucket_bytes, plan_buckets
from mrt_ray.weight_sync.group import verify_checksums

log = logging.getLogger("mrt_ray")
NOISE_MULT = 3.0  # a push passes when its probe gap is at most tol + NOISE_MULT x the worker's base-weight gap


def probe_gap(ref: list[float], lp: list[float]) -> tuple[float, float]:
    """(mean, max) |log-prob difference| per probe token."""
    d = [abs(a - b) for a, b in zip(ref, lp, strict=True)]
    return sum(d) / max(len(d), 1), max(d, default=0.0)


def allowed_gap(tol: float, baseline: float) -> float:
    """The largest mean probe gap a correct push may show on a worker whose base-weight gap was `baseline`."""
    return tol + NOISE_MULT * baseline


class WeightSync:
    def __init__(self, learners: LearnerGroup, workers: list, placement: Placement, probe_ids: list[int],
                 timeout_s: float, probe_tol: float, startup_timeout_s: float):
        """`timeout_s` bounds the weight group's operations; `startup_timeout_s` the wait for a worker that is still
        starting or restarting (engine load, compile, CUDA graphs)."""
        self.learners, self.workers, self.placement = learners, workers, placement
        self.probe_ids, self.timeout_s, self.probe_tol = probe_ids, timeout_s, probe_tol
        self.startup_timeout_s = startup_timeout_s
        self.zero3 = learners.cfg.learner.zero_stage == 3
        self.metas = ray.get(learners.actors[0].weight_metas.remote())
        self.plan = plan_buckets(self.metas, bucket_bytes(learners.cfg.learner.push_bucket_mib,
                                                          weight_backend(placement.roles)))
        self.bytes = sum(e.nbytes for b in self.plan.buckets for e in b.entries)  # tensor bytes per push
        self.version: int | None = None  # the policy version every worker holds (set by push)
        self.restarts = 0  # workers found restarted (a new process) and re-joined
        self.broken = False  # a push or rebuild failed half-way: the group must be rebuilt
        self.pushes = 0  # push ids: the ready gate's keys
        self.zero_copy = True  # send buckets from the learner's parameter storage where its layout allows (False:
        # pack every bucket, the older path, which bench/push_bench.py times against it)
        self.connect()
        # the noise floor: every worker's probe gap on the base weights, before the first push
        self.baseline = [probe_gap(self._learner_probe(), lp)[0] for lp in self._worker_probes()]
        self.last_ref: list[float] | None = None  # the learner's probe log-probs at the last verified push

    def _ready(self) -> list[dict]:
        return [wait_ready(w, f"inference worker {i}", self.startup_timeout_s, "rollout.startup_timeout_s")
                for i, w in enumerate(self.workers)]

    def connect(self, infos: list[dict] | None = None) -> None:
        """(Re)build the weight group: learner rank 0 is rank 0, then each worker's engine ranks in order.
        `infos`: the workers' ready() answers, when the caller has them."""
        infos = infos or self._ready()
        self.pids = [info["pid"] for info in infos]  # the processes that are members of the group
        sizes = [info["group_size"] for info in infos]
        world = 1 + sum(sizes)
        ip = self.learners.host  # learner rank 0's address: loopback for a local run
        port = ray.get(self.learners.actors[0].listen.remote(ip, "weights"), timeout=self.timeout_s)
        backend = weight_backend(self.placement.roles)
        futures = [a.init_weight_group.remote(backend, ip, port, world, self.timeout_s, self.plan)
                   for a in self.learners.actors]
        base = 1
        for w, size in zip(self.workers, sizes):
            futures.append(w.init_weight_group.remote(backend, ip, port, base, world, self.timeout_s, self.plan))
            base += size
        ray.get(futures, timeout=self.timeout_s)

    def push(self, version: int, attempts: int = 3) -> dict:
        """Send the learner's weights as `version` to every worker (re-joining restarted ones first) and verify.

        A worker lost during the push itself (its process died while the group was rebuilt, while receiving, or
        while probed) is waited for, and the push is repeated on a rebuilt group, up to `attempts` times in all. A
        failure with no lost worker is raised as it is. With ZeRO-3 every learner rank takes part in the push, so a
        push that failed half-way cannot be repeated: it is raised."""
        for attempt in range(1, attempts + 1):
            infos = self._ready()
            restarted = [i for i, (info, pid) in enumerate(zip(infos, self.pids)) if info["pid"] != pid]
            try:
                if restarted or self.broken:
                    if restarted:
                        log.warning("inference workers %s were restarted (new processes); rebuilding the weight group",
                                    restarted)
                    self.restarts += len(restarted)
                    self.broken = True
                    self.connect(infos)
                    self.broken = False
                return self._transfer(version)
            except (ray.exceptions.RayError, RuntimeError) as e:
                self.broken = True  # the group's state is unknown: rebuild it before the next push
                lost = [i for i, (info, pid) in enumerate(zip(self._ready(), self.pids)) if info["pid"] != pid]
                if not lost or attempt == attempts or self.zero3:
                    raise
                log.warning("inference workers %s were lost during the weight push (%s); pushing version %s again "
                            "(attempt %d of %d)", lost, type(e).__name__, version, attempt + 1, attempts)
        raise AssertionError("unreachable")

    def _transfer(self, version: int) -> dict:
        self.pushes += 1
        pid = self.pushes
        t0 = time.perf_counter()
        recv = [w.receive_weights.remote(version, pid) for w in self.workers]
        if self.zero3:  # every rank gathers: none may sit in a gather while a worker is still busy (a generate)
            ray.get(self.learners.actors[0].await_receivers.remote(pid), timeout=2 * self.timeout_s)
        # rank 0 passes the ready gate first
        send = [a.push_weights.remote(pid, self.zero_copy) for a in self.learners.actors]
        sent = ray.get(send, timeout=2 * self.timeout_s)[0]
        received = ray.get(recv, timeout=self.timeout_s)
        seconds = time.perf_counter() - t0
        for i, per_rank in enumerate(received):
            for r, sums in enumerate(per_rank):
                verify_checksums(sent["sums"], sums, self.plan, f"worker {i} (engine rank {r})")
        t1 = time.perf_counter()
        probe = self._verify()
        self.version = version
        return {"push_seconds": seconds, "push_broadcast_seconds": sent["seconds"],
                "push_gate_seconds": sent["gate_seconds"], "push_gbps": self.bytes / max(sent["seconds"], 1e-9) / 1e9,
                "push_packed_buckets": sent["packed"],
                "push_probe_seconds": time.perf_counter() - t1, **probe}

    def _learner_probe(self) -> list[float]:
        return self.learners.call("probe_logprobs", self.probe_ids)[0]

    def _worker_probes(self) -> list[list[float]]:
        return ray.get([w.prompt_logprobs.remote(self.probe_ids) for w in self.workers], timeout=self.timeout_s)

    def _verify(self) -> dict:
        """The probe after a push: raises on a worker whose gap exceeds its allowance (stale or partial weights)."""
        ref = self._learner_probe()
        stale = probe_gap(ref, self.last_ref)[0] if self.last_ref is not None else None
        worst = worst_max = 0.0
        for i, lp in enumerate(self._worker_probes()):
            gap, top = probe_gap(ref, lp)
            limit = allowed_gap(self.probe_tol, self.baseline[i])
            if not gap <= limit:
                raise RuntimeError(
                    f"weight push not applied on worker {i}: mean probe log-prob gap {gap:.3g} > {limit:.3g} "
                    f"(its gap on the base weights was {self.baseline[i]:.3g}"
                    + (f"; a stale engine would show about {stale:.3g}" if stale is not None else "")
                    + "): stale or partial weights")
            worst, worst_max = max(worst, gap), max(worst_max, top)
        self.last_ref = ref
        out = {"push_probe_diff": worst, "push_probe_max_diff": worst_max}
        if stale is not None:
            out["push_probe_stale_gap"] = stale
        return out

    def probe(self) -> float:
        """The worst mean probe gap over the workers now; raises like a push's check (stale or partial weights)."""
        return self._verify()["push_probe_diff"]
