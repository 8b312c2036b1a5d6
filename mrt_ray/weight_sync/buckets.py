"""The layout of a weight push: the learner's state dict packed, in metadata order, into flat byte buckets.

A bucket is one uint8 buffer holding several whole tensors (any dtypes) at aligned offsets; it is broadcast in one
operation and unpacked on the receiver into views (no copy). The plan is computed once, at connect time, from the
learner's metadata and travels to every member of the weight group, so sender and receivers agree on every offset.

- Tied tensors (e.g. `lm_head.weight` tied to `model.embed_tokens.weight`) are sent once: the alias rides on its
  source's entry and the receiver yields the same view under both names, in the same load call.
- A bucket boundary never splits a load group (the tensors of one module's parent, e.g. a layer's q/k/v projections,
  which vLLM fuses into one layer and holds until all arrive) unless the group alone exceeds the bucket; a tensor
  larger than the bucket travels alone. So a receiver never holds more than the buckets in flight, whatever the model
  size: a 7B model never needs a second full copy of its weights.
- Zero copy: where a bucket's tensors already lie in one storage at the plan's offsets (DeepSpeed ZeRO-1/2 keeps
  the parameters as views of one flat buffer; `flatten` lays out a ZeRO-0 learner's so), the sender broadcasts that
  storage itself (`storage_view`): no send buffer and no packing copy. Otherwise the bucket is packed.
- Integrity: an integer checksum per bucket, one pass over an int64 view of the bytes (wrapping sums per 1 MiB chunk:
  exact, order-aware across chunks, no copy), as a device tensor: one host sync per push.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

DEFAULT_BUCKET_MIB = {"gloo": 32.0, "nccl": 256.0}  # learner.push_bucket_mib=0 (docs/performance.md section 9)
ALIGN = 64  # byte alignment of every tensor in a bucket (any dtype's view is legal; bucket sizes stay int64-viewable)
CHUNK = 2**20  # bytes per checksum chunk


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]
    dtype: str  # e.g. "bfloat16"
    offset: int  # byte offset inside its bucket
    aliases: tuple[str, ...] = ()  # names tied to this tensor: loaded from the same bytes

    @property
    def nbytes(self) -> int:
        return _numel(self.shape) * _itemsize(self.dtype)


@dataclass(frozen=True)
class Bucket:
    nbytes: int  # a multiple of ALIGN
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class Plan:
    buckets: tuple[Bucket, ...]

    @property
    def nbytes(self) -> int:
        """Bytes on the wire per push (tied aliases are not sent; bucket padding is)."""
        return sum(b.nbytes for b in self.buckets)

    @property
    def max_bucket(self) -> int:
        return max((b.nbytes for b in self.buckets), default=0)

    def names(self) -> list[str]:
        """Every name a receiver loads, aliases included, in stream order."""
        return [n for b in self.buckets for e in b.entries for n in (e.name, *e.aliases)]


def state_metas(state: dict[str, torch.Tensor]) -> list[tuple]:
    """(name, shape, dtype, tied_to) per entry of a `state_dict(keep_vars=True)`; tied_to names the entry where the
    same parameter object (e.g. lm_head tied to embed_tokens) first appeared, else "". ZeRO-3 parameters report their
    full shape (`ds_shape`)."""
    metas, first = [], {}
    for name, t in state.items():
        shape = tuple(t.ds_shape) if hasattr(t, "ds_shape") else tuple(t.shape)
        tied_to = first.setdefault(id(t), name)
        metas.append((name, shape, str(t.dtype).removeprefix("torch."), "" if tied_to == name else tied_to))
    return metas


def bucket_bytes(mib: float, backend: str) -> int:
    """Bytes per bucket: `mib` MiB, or the backend's default when `mib` is 0."""
    return int((mib or DEFAULT_BUCKET_MIB[backend]) * 2**20)


def load_group(name: str) -> str:
    """Tensors a loader may hold until all of them arrived: those of one module's parent (e.g.
    `model.layers.3.self_attn` for q/k/v_proj, `model.layers.3.mlp` for gate/up_proj)."""
    return name.rsplit(".", 2)[0] if name.count(".") >= 2 else name


def plan_buckets(metas: list[tuple], bucket_bytes: int) -> Plan:
    """Pack `metas` ((name, shape, dtype, tied_to) in state-dict order; tied_to "" or the source's name) into buckets
    of at most `bucket_bytes` (a larger group or tensor gets a bucket to itself)."""
    if bucket_bytes < ALIGN:
        raise ValueError(f"bucket size {bucket_bytes} B is below the {ALIGN} B alignment")
    aliases: dict[str, list[str]] = {}
    sources = []
    for name, shape, dtype, tied_to in metas:
        if tied_to:
            if tied_to not in aliases:
                raise ValueError(f"{name!r} is tied to {tied_to!r}, which does not come before it in the state dict")
            aliases[tied_to].append(name)
        else:
            aliases[name] = []
            sources.append((name, tuple(shape), dtype))
    groups: list[list[tuple]] = []  # consecutive tensors of one load group
    for m in sources:
        if groups and load_group(groups[-1][-1][0]) == load_group(m[0]):
            groups[-1].append(m)
        else:
            groups.append([m])
    buckets: list[list[tuple]] = [[]]
    size = 0
    for group in groups:
        need = sum(_padded(_numel(s) * _itemsize(d)) for _, s, d in group)
        if size and size + need > bucket_bytes:
            buckets.append([])
            size = 0
        for m in group:  # fits, or the group alone is larger than a bucket: split it tensor by tensor
            n = _padded(_numel(m[1]) * _itemsize(m[2]))
            if size and size + n > bucket_bytes and need > bucket_bytes:
                buckets.append([])
                size = 0
            buckets[-1].append(m)
            size += n
    out = []
    for ms in buckets:
        entries, off = [], 0
        for name, shape, dtype in ms:
            entries.append(Entry(name, shape, dtype, off, tuple(aliases[name])))
            off += _padded(_numel(shape) * _itemsize(dtype))
        if entries:
            out.append(Bucket(max(off, ALIGN), tuple(entries)))
    return Plan(tuple(out))


def pack(bucket: Bucket, tensors: list[torch.Tensor], out: torch.Tensor) -> None:
    """Copy `tensors` (one per entry, in order) into the uint8 buffer `out` (at least bucket.nbytes)."""
    for e, t in zip(bucket.entries, tensors, strict=True):
        _check(e, t)
        _view(out, e).copy_(t)


def storage_view(bucket: Bucket, tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """The bucket's bytes as a uint8 view of its tensors' own storage, when every tensor (contiguous) lies in one
    storage at its entry's offset from the first and the storage holds the bucket's whole span (padding included):
    then it can be sent as it is. None otherwise."""
    first = tensors[0]
    storage = first.untyped_storage()
    base = first.data_ptr() - bucket.entries[0].offset  # the bucket's byte 0
    start = base - storage.data_ptr()
    for e, t in zip(bucket.entries, tensors, strict=True):
        _check(e, t)
        if (t.untyped_storage().data_ptr() != storage.data_ptr() or t.data_ptr() != base + e.offset
                or not t.is_contiguous()):
            return None  # pack() checks the remaining entries
    if start < 0 or start + bucket.nbytes > storage.nbytes():
        return None
    return torch.empty(0, dtype=torch.uint8, device=first.device).set_(storage, start, (bucket.nbytes,))


def flatten(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """Move the distinct tensors of `state` (a `state_dict(keep_vars=True)`: parameters, buffers; tied ones once) into
    one flat uint8 buffer, in order, each at an ALIGN-padded offset as `plan_buckets` places them: every bucket of any
    plan over these tensors is then a contiguous span of it (`storage_view`). Each tensor's `.data` becomes its view
    (parameters stay the same objects, so an optimizer built on them is unaffected). Returns the buffer."""
    unique = list({id(t): t for t in state.values()}.values())
    if not unique:
        return torch.empty(0, dtype=torch.uint8)
    sizes = [_padded(t.numel() * t.element_size()) for t in unique]
    flat = torch.empty(sum(sizes), dtype=torch.uint8, device=unique[0].device)
    off = 0
    for t, n in zip(unique, sizes):
        view = flat[off:off + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
        view.copy_(t.data)
        t.data = view
        off += n
    return flat


def _check(e: Entry, t: torch.Tensor) -> None:
    if tuple(t.shape) != e.shape or str(t.dtype).removeprefix("torch.") != e.dtype:
        raise RuntimeError(f"weight push: {e.name} is {tuple(t.shape)} {t.dtype}, the plan says {e.shape} "
                           f"{e.dtype} (the model changed after connect)")


def unpack(bucket: Bucket, buf: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """(name, view into `buf`) for every entry and alias of `bucket`, in stream order: no copy."""
    out = []
    for e in bucket.entries:
        t = _view(buf, e)
        out.extend((n, t) for n in (e.name, *e.aliases))
    return out


def checksum(buf: torch.Tensor) -> torch.Tensor:
    """Order-aware integer checksum of a uint8 buffer (length a multiple of 8) as a 0-dim int64 device tensor. Per
    1 MiB chunk, the sum of its int64 words with wrap-around (mod 2**64: exact whatever the reduction order, so equal
    on every device); the chunk sums, reduced mod M = 2**31 - 1 and weighted by P**(chunks - 1 - k) mod M, are summed
    mod M (no overflow: every product < 2**62). One pass over the bytes, no widened copy, four kernel launches."""
    words = buf.view(torch.int64)
    step = CHUNK // 8
    n = words.numel() // step
    sums = words[:n * step].view(n, step).sum(1)  # [n] chunk sums, wrapped
    if words.numel() > n * step:
        sums = torch.cat([sums, words[n * step:].sum().view(1)])
    terms = torch.remainder(sums, _M) * _powers(sums.numel(), buf.device)
    return torch.remainder(torch.remainder(terms, _M).sum(), _M)


_M, _P = 2**31 - 1, 1_000_003


@functools.lru_cache(maxsize=64)
def _powers(n: int, device: torch.device) -> torch.Tensor:
    """[n] int64: P**(n - 1 - k) mod M, the weight of chunk k."""
    return torch.tensor([pow(_P, n - 1 - k, _M) for k in range(n)], dtype=torch.int64, device=device)


def _view(buf: torch.Tensor, e: Entry) -> torch.Tensor:
    return buf[e.offset:e.offset + e.nbytes].view(getattr(torch, e.dtype)).view(e.shape)


def _padded(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _itemsize(dtype: str) -> int:
    return torch.empty((), dtype=getattr(torch, dtype)).element_size()
