"""Step 8 of the data path: push the learner's weights to every inference worker, and prove they arrived.

One metadata RPC at connect time (the learner's state-dict layout, planned into buckets and sent to every member);
per push one RPC per actor and the buckets over the weight group (gloo/NCCL). Every push is verified twice: per-bucket
checksums (the bytes arrived) and a log-prob probe on a fixed sequence (the engine actually serves the new weights;
this also catches a tied output layer left stale). A failed or partial push raises.

The probe is robust to low-precision noise: its statistic is the mean |log-prob gap| over the probe's tokens, judged
against the gap each worker showed on the base weights before any push (its noise floor: bf16 engines differ from the
learner by ~0.1-0.3 per token on identical weights). The gap a stale engine would show (the learner's move since the
last verified push) is reported beside it, so a log tells whether the probe could have seen a stale engine.

A worker that Ray restarted (a fresh process: base weights, no weight group) is found before every push by its
process id; the weight group is then rebuilt (every member aborts the old group and joins a NEW one on a new port)
and the push goes to all workers, the restarted one included."""
from __future__ import annotations

import time

import ray

from mrt_ray.actors import Placement, wait_ready
from mrt_ray.learner.group import LearnerGroup
from mrt_ray.weight_sync.buckets import plan_buckets
from mrt_ray.weight_sync.group import verify_checksums

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
                 local: bool, timeout_s: float, probe_tol: float):
        self.learners, self.workers, self.placement = learners, workers, placement
        self.probe_ids, self.local, self.timeout_s, self.probe_tol = probe_ids, local, timeout_s, probe_tol
        self.zero3 = learners.cfg.learner.zero_stage == 3
        self.metas = ray.get(learners.actors[0].weight_metas.remote())
        self.plan = plan_buckets(self.metas, int(learners.cfg.learner.push_bucket_mib * 2**20))
        self.bytes = sum(e.nbytes for b in self.plan.buckets for e in b.entries)  # tensor bytes per push
        self.version: int | None = None  # the policy version every worker holds (set by push)
        self.restarts = 0  # workers found restarted (a new process) and re-joined
        self.pushes = 0  # push ids: the ready gate's keys
        self.connect()
        # the noise floor: every worker's probe gap on the base weights, before the first push
        self.baseline = [probe_gap(self._learner_probe(), lp)[0] for lp in self._worker_probes()]
        self.last_ref: list[float] | None = None  # the learner's probe log-probs at the last verified push

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
        futures = [a.init_weight_group.remote(ip, port, world, self.timeout_s, self.plan) for a in self.learners.actors]
        base = 1
        for w, size in zip(self.workers, sizes):
            futures.append(w.init_weight_group.remote(backend, ip, port, base, world, self.timeout_s, self.plan))
            base += size
        ray.get(futures, timeout=self.timeout_s)

    def push(self, version: int) -> dict:
        """Send the learner's weights as `version` to every worker (re-joining restarted ones first) and verify."""
        infos = self._ready()
        restarted = [i for i, (info, pid) in enumerate(zip(infos, self.pids)) if info["pid"] != pid]
        if restarted:
            print(f"mrt-ray: inference workers {restarted} were restarted (new processes); rebuilding the weight "
                  f"group", flush=True)
            self.restarts += len(restarted)
            self.connect(infos)
        self.pushes += 1
        pid = self.pushes
        t0 = time.perf_counter()
        recv = [w.receive_weights.remote(version, pid) for w in self.workers]
        if self.zero3:  # every rank gathers: none may sit in a gather while a worker is still busy (a generate)
            ray.get(self.learners.actors[0].await_receivers.remote(pid), timeout=2 * self.timeout_s)
        send = [a.push_weights.remote(pid) for a in self.learners.actors]  # rank 0 passes the ready gate first
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
