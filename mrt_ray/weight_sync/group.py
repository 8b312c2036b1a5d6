"""The weight-push transport: a standalone torch.distributed group between learner rank 0 (rank 0 of the group) and
every inference worker rank (rollout workers, estimator workers). gloo on CPU, NCCL on GPU, one code path.

The group is built from a TCPStore + PrefixStore + ProcessGroup{Gloo,NCCL}, not `init_process_group`, so it never
touches the default group of the process it lives in (the DeepSpeed world in a learner, vLLM's own group in a rollout
worker). Every operation carries the group's timeout: a dead peer is an error, never a hang. A group that is rebuilt
(a worker restarted) is aborted first on every member that still holds it.

One push = the buckets of a `buckets.Plan`, broadcast in order:
- **Ready gate.** Each receiver marks itself ready in the group's store (`ready/<push id>/<rank>`) as its receive
  starts; the sender waits for every mark before its first broadcast, so no RPC arrival (a receive queued behind a
  generate) ever sits inside a transfer, and a late receiver is a clear error, not a broadcast timing out.
- **Sender.** A bucket whose tensors already lie in one storage at the plan's offsets (ZeRO-1/2's flat parameter
  buffer, or a ZeRO-0 learner's after `buckets.flatten`) is broadcast from that storage: no copy. Any other is packed
  into one of two send buffers (allocated on first need, kept across pushes): bucket 0 while the receivers get ready
  (before the gate), bucket k+1 (and bucket k's checksum) while bucket k is on the wire.
- **Receiver.** A generator of (name, tensor) views that the engine's loader consumes as buckets arrive; bucket k+1
  lands while bucket k is loaded and checksummed, so at most two buckets are alive beyond the model's own weights.
  On CPU the receive buffers are pooled across pushes (a buffer is reused only once no view into it is left).
- **Integrity.** Both sides checksum every bucket (`buckets.checksum`); the controller compares the lists.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from mrt_ray.utils import gloo_on_loopback
from mrt_ray.weight_sync.buckets import Plan, checksum, pack, storage_view, unpack


@dataclass
class WeightGroup:
    pg: object  # ProcessGroupGloo | ProcessGroupNCCL
    device: torch.device  # where tensors must live for this backend
    store: object  # the rendezvous store (also carries the ready gate); kept alive as long as the group
    rank: int
    world_size: int
    timeout_s: float
    send_buffers: list = field(default_factory=list)  # rank 0: the two send buffers, reused by every push
    recv_pool: list = field(default_factory=list)  # a CPU receiver: (buffer, its use count when free), reused

    def close(self) -> None:
        """Abort the group (pending operations fail at once) and drop the store: called before a rebuild."""
        abort = getattr(self.pg, "abort", None)
        try:
            if abort is not None:
                abort()
        except RuntimeError:  # a backend without abort, or a group already broken by a dead peer
            pass
        self.pg = self.store = None
        self.send_buffers, self.recv_pool = [], []


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
    return WeightGroup(pg, device or torch.device("cpu"), store, rank, world_size, timeout_s)


def _broadcast(group: WeightGroup, tensor: torch.Tensor):
    """Start a broadcast from rank 0; returns its work (`.wait()` it)."""
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    return group.pg.broadcast([tensor], opts)


def _ready_key(push_id: int, rank: int) -> str:
    return f"ready/{push_id}/{rank}"


def await_receivers(group: WeightGroup, push_id: int, timeout_s: float) -> None:
    """Rank 0: wait until every receiver has started its receive for `push_id` (the ready gate)."""
    keys = [_ready_key(push_id, r) for r in range(1, group.world_size)]
    try:
        group.store.wait(keys, timedelta(seconds=timeout_s))
    except RuntimeError as e:  # DistStoreError: a timeout
        late = [r for r, k in zip(range(1, group.world_size), keys) if not group.store.check([k])]
        raise RuntimeError(f"weight push {push_id}: group ranks {late} did not start receiving within {timeout_s:g}s "
                           f"(an inference worker busy or dead); nothing was sent") from e


def send_stream(group: WeightGroup, plan: Plan, tensors: Iterable[list[torch.Tensor]], push_id: int,
                zero_copy: bool = True) -> tuple[list[int], float, int]:
    """Rank 0: prepare the first bucket while the receivers get ready, then, after the ready gate, broadcast every
    bucket of `plan`, preparing bucket k+1 while bucket k is on the wire (`tensors`: one list per bucket, in entry
    order; the iterator may gather them lazily, and with `zero_copy` it must keep each bucket's tensors alive and
    unchanged until this returns). Returns the per-bucket checksums (one host sync), the seconds spent waiting at the
    gate and the number of buckets packed (the rest went from the tensors' own storage)."""
    sender = _Sender(group, plan, zero_copy)
    items = enumerate(zip(plan.buckets, tensors, strict=True))
    first = next(items, None)
    buf = sender.prepare(*first[1]) if first is not None else None
    t0 = time.perf_counter()
    await_receivers(group, push_id, group.timeout_s)
    gate_seconds = time.perf_counter() - t0
    sums = []
    for k, (bucket, ts) in itertools.chain([first] if first is not None else [], items):
        if k:  # bucket 0 was prepared before the gate
            buf = sender.prepare(bucket, ts)
        sender.send(buf)
        sums.append(checksum(buf))  # reads the bytes while they are on the wire
    sender.finish()
    for r in range(1, group.world_size):
        group.store.delete_key(_ready_key(push_id, r))
    return (torch.stack(sums).tolist() if sums else []), gate_seconds, sender.packed


class _Sender:
    """The bytes of each bucket: a view of its tensors' storage, or one of two send buffers packed from them (a
    buffer is refilled only once its previous bucket has left)."""

    def __init__(self, group: WeightGroup, plan: Plan, zero_copy: bool):
        self.group, self.plan, self.zero_copy = group, plan, zero_copy
        self.packed = 0  # buckets packed so far; the next one goes to send buffer packed % 2
        self.slots: list = [None, None]  # per send buffer, the broadcast last posted from it
        self.filled: int | None = None  # the send buffer prepare() packed, until send() posts it
        self.works: list = []  # every broadcast posted

    def prepare(self, bucket, ts: list[torch.Tensor]) -> torch.Tensor:
        view = storage_view(bucket, ts) if self.zero_copy else None
        if view is not None:
            return view
        slot = self.packed % 2
        if self.slots[slot] is not None:
            self.slots[slot].wait()  # the buffer's previous bucket has left
            self.slots[slot] = None
        buf = self._buffers()[slot][:bucket.nbytes]
        pack(bucket, ts, buf)
        self.packed += 1
        self.filled = slot
        return buf

    def send(self, buf: torch.Tensor) -> None:
        """Post the broadcast of what prepare() returned last."""
        work = _broadcast(self.group, buf)
        self.works.append(work)
        if self.filled is not None:
            self.slots[self.filled], self.filled = work, None

    def finish(self) -> None:
        for w in self.works:
            w.wait()

    def _buffers(self) -> list[torch.Tensor]:
        g = self.group
        if len(g.send_buffers) < 2 or g.send_buffers[0].numel() < self.plan.max_bucket:
            # kept across pushes (2 x the largest bucket on rank 0): refilling warm memory, not faulting in pages
            g.send_buffers = [torch.empty(self.plan.max_bucket, dtype=torch.uint8, device=g.device) for _ in "ab"]
        return g.send_buffers


def receive_stream(group: WeightGroup, plan: Plan, push_id: int, sums: list) -> Iterator[tuple[str, torch.Tensor]]:
    """A receiver: posts the first bucket's receive and marks itself ready at once (bucket 0 lands while the engine
    prepares its reload); returns an iterator of (name, view) for every tensor and tied alias of `plan`, in order, as
    the buckets arrive. Appends each bucket's checksum (a device tensor) to `sums`. The consumer must exhaust it (see
    `drain`), or the sender blocks until its timeout."""
    pending = _post(group, plan, 0)
    group.store.set(_ready_key(push_id, group.rank), b"1")
    return _stream(group, plan, pending, sums)


def _stream(group: WeightGroup, plan: Plan, pending, sums: list) -> Iterator[tuple[str, torch.Tensor]]:
    """Bucket k+1 is posted once the consumer took the first tensor of bucket k (so it has let go of bucket k-1):
    at most two buckets are alive, the one being loaded and the one landing."""
    for k, bucket in enumerate(plan.buckets):
        buf, work = pending
        work.wait()
        items = unpack(bucket, buf)
        for i, item in enumerate(items):
            yield item
            if i == 0:
                pending = _post(group, plan, k + 1)
                sums.append(checksum(buf))  # while bucket k+1 lands
        del buf, items, item


def _post(group: WeightGroup, plan: Plan, k: int):
    if k >= len(plan.buckets):
        return None
    buf = _recv_buffer(group, plan, plan.buckets[k].nbytes)
    return buf, _broadcast(group, buf)


RECV_POOL = 2  # pooled receive buffers: the bucket being loaded and the one landing


def _recv_buffer(group: WeightGroup, plan: Plan, nbytes: int) -> torch.Tensor:
    """A receive buffer. On CPU, a pooled one (plan.max_bucket bytes, kept across pushes) that nothing references any
    more (the loader let go of every view into it), else a new one that joins the pool while it has room: the pages
    of a new buffer fault in during the transfer (filling 32 MiB took 25 ms fresh against 5 ms reused on this
    machine's CPUs). On GPU the caching allocator reuses memory already, and a pool would hold device memory."""
    if group.device.type != "cpu":
        return torch.empty(nbytes, dtype=torch.uint8, device=group.device)
    for buf, free in group.recv_pool:
        if buf.numel() >= nbytes and _uses(buf) == free:
            return buf[:nbytes]
    if len(group.recv_pool) >= RECV_POOL:
        return torch.empty(nbytes, dtype=torch.uint8)
    buf = torch.empty(plan.max_bucket, dtype=torch.uint8)
    group.recv_pool.append((buf, _uses(buf)))
    return buf[:nbytes]


def _uses(buf: torch.Tensor) -> int:
    """How many tensors and storages share `buf`'s memory (views included)."""
    return torch._C._storage_Use_Count(buf.untyped_storage()._cdata)


def drain(stream: Iterator) -> None:
    """Receive (and drop) whatever a failed consumer left in `stream`, so the sender is not left waiting."""
    for _ in stream:
        pass


def verify_checksums(sent: list[int], received: list[int], plan: Plan, who: str) -> None:
    """Raise if a receiver got fewer buckets than were sent or different bytes in one."""
    if len(received) != len(sent):
        raise RuntimeError(f"weight push to {who} incomplete: {len(received)} of {len(sent)} buckets arrived")
    bad = [k for k, (s, r) in enumerate(zip(sent, received)) if s != r]
    if bad:
        first = plan.buckets[bad[0]].entries
        raise RuntimeError(f"weight push to {who} corrupted: checksum mismatch in {len(bad)} buckets, first bucket "
                           f"{bad[0]} ({first[0].name} .. {first[-1].name})")
