"""The ceiling for the weight push: a raw gloo broadcast of the same buckets (same byte sizes, in order) between two
freshly spawned processes, over the same kind of standalone group mrt-ray's push uses
(`mrt_ray.weight_sync.group.create_group`), with both sides already waiting: no ready gate, packing, checksums, RPCs
or engine reload."""
from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mrt_ray.utils import LOOPBACK, listen_socket
from mrt_ray.weight_sync.group import create_group


def _sync(pg) -> None:
    """A barrier: a one-element all-reduce."""
    pg.allreduce([torch.zeros(1)]).wait()


def _member(rank: int, ports, sizes: list[int], reps: int, threads: int, out) -> None:
    torch.set_num_threads(threads)
    if rank == 0:  # hosts the store on a socket it bound itself (no port race); tells rank 1 the port
        sock = listen_socket(LOOPBACK)
        ports.put(sock.getsockname()[1])
        group = create_group("gloo", LOOPBACK, sock.getsockname()[1], 0, 2, 300.0, listen_fd=sock.detach())
    else:
        group = create_group("gloo", LOOPBACK, ports.get(timeout=300), 1, 2, 300.0)
    buffers = [torch.empty(n, dtype=torch.uint8) for n in sizes]  # sizes: WeightSync.plan's bucket bytes
    if rank == 0:
        for b in buffers:
            b.random_(0, 256)
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    times = []
    for _ in range(reps + 1):  # the first round opens the connections: a warm-up, dropped
        _sync(group.pg)
        t0 = time.perf_counter()
        for b in buffers:
            group.pg.broadcast([b], opts).wait()
        _sync(group.pg)  # the receiver holds every byte
        times.append(time.perf_counter() - t0)
    if rank == 0:
        out.put(times[1:])


def raw_broadcast_seconds(sizes: list[int], reps: int = 10, threads: int = 1, timeout_s: float = 300.0) -> list[float]:
    """Seconds per full broadcast of buffers of `sizes` bytes (one per rep), measured on the sender after a barrier."""
    if reps < 1:
        raise ValueError(f"reps={reps} must be >= 1")
    ctx = mp.get_context("spawn")
    out, ports = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_member, args=(r, ports, sizes, reps, threads, out), daemon=True) for r in (0, 1)]
    for p in procs:
        p.start()
    try:
        times = out.get(timeout=timeout_s)
    finally:
        for p in procs:
            p.join(timeout=30)
    bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if bad:
        raise RuntimeError(f"raw gloo broadcast: a member process exited with code {bad[0]}")
    return times


def bucket_sizes(sync) -> list[int]:
    """The byte sizes of the buckets a `WeightSync` pushes."""
    return [b.nbytes for b in sync.plan.buckets]
