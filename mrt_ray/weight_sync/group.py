"""The weight-push transport: a standalone torch.distributed group between learner rank 0 (rank 0 of the group) and
every inference worker (rollout workers, estimator workers). gloo on CPU, NCCL on GPU, one code path.

The group is built from a TCPStore + PrefixStore + ProcessGroup{Gloo,NCCL}, not `init_process_group`, so it never
touches the default group of the process it lives in (the DeepSpeed world in a learner, vLLM's own group in a rollout
worker). Every operation carries the group's timeout: a dead peer is an error, never a hang.

One RPC carries the metadata (names, shapes, dtypes, once at set-up); tensors travel over the group. Integrity: the
sender and every receiver compute a per-tensor checksum; the controller compares them.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from mrt_ray.utils import gloo_on_loopback


@dataclass
class WeightGroup:
    pg: object  # ProcessGroupGloo | ProcessGroupNCCL
    device: torch.device  # where tensors must live for this backend
    store: object  # keeps the rendezvous store alive as long as the group


@dataclass(frozen=True)
class TensorMeta:
    name: str
    shape: tuple[int, ...]
    dtype: str  # e.g. "float32"


def create_group(backend: str, host: str, port: int, rank: int, world_size: int, timeout_s: float,
                 device: torch.device | None = None, listen_fd: int | None = None) -> WeightGroup:
    """Join the weight group (all members must call this at the same time). Rank 0 hosts the store on `listen_fd`, a
    socket already listening on (host, port) (`mrt_ray.utils.listen_socket(host).detach()`): the store then listens
    on `host` only (torch's TCPStore binds every interface when it opens its own socket) and the port cannot have
    been taken in the meantime."""
    if rank == 0 and listen_fd is None:
        raise ValueError("create_group: rank 0 hosts the store and needs listen_fd (a socket listening on host:port)")
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, is_master=(rank == 0), timeout=timeout, wait_for_workers=True,
                          master_listen_fd=listen_fd if rank == 0 else None)
    store = dist.PrefixStore("mrt-weights", store)
    if backend == "gloo":
        gloo_on_loopback(host)
        pg = dist.ProcessGroupGloo(store, rank, world_size, timeout)
    elif backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        pg = dist.ProcessGroupNCCL(store, rank, world_size, opts)
    else:
        raise ValueError(f"weight group backend must be gloo or nccl, got {backend!r}")
    return WeightGroup(pg, device or torch.device("cpu"), store)


def _broadcast(group: WeightGroup, tensor: torch.Tensor) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    group.pg.broadcast([tensor], opts).wait()


def checksum(t: torch.Tensor) -> float:
    """Order-sensitive float64 checksum: catches a missing, stale, truncated or permuted tensor."""
    flat = t.detach().reshape(-1).to(torch.float64)
    w = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device).remainder_(97).add_(1)
    return float((flat * w).sum().item())


def send_tensors(group: WeightGroup, tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, float]:
    """Rank 0: broadcast each tensor in metadata order, then checksum them; returns {name: checksum}."""
    sent = []
    for name, t in tensors:
        t = t.detach().to(group.device).contiguous()
        _broadcast(group, t)
        sent.append((name, t))
    return {name: checksum(t) for name, t in sent}


def receive_tensors(group: WeightGroup, metas: list[TensorMeta]) -> tuple[list[tuple[str, torch.Tensor]],
                                                                          dict[str, float]]:
    """A receiver: every tensor arrives back to back (nothing else runs between broadcasts, so the transfer runs at
    the group's bandwidth); returns them in metadata order and their {name: checksum}."""
    out = []
    for m in metas:
        t = torch.empty(m.shape, dtype=getattr(torch, m.dtype), device=group.device)
        _broadcast(group, t)
        out.append((m.name, t))
    return out, {name: checksum(t) for name, t in out}


def verify_checksums(sent: dict[str, float], received: dict[str, float], who: str, rtol: float = 1e-9) -> None:
    """Raise if a receiver is missing a tensor or got different bytes."""
    missing = sorted(set(sent) - set(received))
    if missing:
        raise RuntimeError(f"weight push to {who} incomplete: {len(missing)} tensors missing, e.g. {missing[:3]}")
    bad = [n for n, s in sent.items() if abs(received[n] - s) > rtol * max(1.0, abs(s))]
    if bad:
        raise RuntimeError(f"weight push to {who} corrupted: checksum mismatch on {bad[:3]}")
