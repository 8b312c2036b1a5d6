"""Small shared helpers: seeding and RNG state, timing, atomic directory writes, ports, thread and memory limits."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import random
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    """This process's RNG states (python, numpy, torch CPU and CUDA) as plain values and tensors (no pickle needed)."""
    import numpy as np
    import torch

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def timed(metrics: dict, key: str) -> Iterator[None]:
    """Add the wall-clock seconds of the block to metrics[key] (also when it raises)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        metrics[key] = metrics.get(key, 0.0) + time.perf_counter() - t0


@contextlib.contextmanager
def atomic_dir(final: Path | str) -> Iterator[Path]:
    """Write a directory under a temporary name, then rename it into place: a crash never leaves half a directory
    under the final name. An existing directory of that name is replaced."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


LOOPBACK = "127.0.0.1"


def listen_socket(host: str) -> socket.socket:
    """A TCP socket bound to `host`, port 0, and listening: the kernel picks a free port, and it stays this socket's,
    so no other process can take it before the server that needs it starts. Hand the socket to that server (torch's
    TCPStore takes it as `master_listen_fd=sock.detach()`), and tell the peers `sock.getsockname()[1]`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def free_port(host: str = LOOPBACK) -> int:
    """A port that was free a moment ago. Racy by nature (another process may bind it before the caller's program
    does): use it only for programs that bind the port themselves (Ray's dashboard, `ray start`), and retry with a
    new port when they fail with "address already in use". Servers of our own take a `listen_socket` instead."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def gloo_on_loopback(host: str) -> None:
    """Before a gloo group is made whose rendezvous `host` is loopback (all members on this machine): make gloo's
    pairs listen on the loopback interface too (GLOO_SOCKET_IFNAME), not on the address the hostname resolves to."""
    if is_loopback(host):
        names = {name for _, name in socket.if_nameindex()}
        os.environ.setdefault("GLOO_SOCKET_IFNAME", next((n for n in ("lo", "lo0") if n in names), "lo"))


def limit_memory(mb: str | int, name: str) -> None:
    """Cap this process's address space at `mb` MiB (RLIMIT_AS; "0": no cap): an allocation beyond it raises
    MemoryError. `name` is the setting's name, for the error on a bad value."""
    import resource

    if not str(mb).isdigit():
        raise ValueError(f"{name}={mb!r} must be a whole number of MiB (0: no cap)")
    if int(mb):
        resource.setrlimit(resource.RLIMIT_AS, (int(mb) << 20, int(mb) << 20))


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (musl, macOS: they do not keep freed pages)."""
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc malloc_trim(0)). glibc keeps memory freed inside its heaps
    mapped: a vLLM CPU engine serving thousands of short, distinct requests grew ~25 MiB per estimator round that way
    (docs/reliability.md, "Memory"); after this call its RSS stays flat. Takes well under a millisecond here."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (a container's limit). Not
    Ray's CPU count, which is logical (`ray.num_cpus` may be set above the cores for bookkeeping)."""
    n = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            n = min(n, max(1, int(quota) // int(period)))
    return n


def limit_threads(n: int) -> None:
    """Cap intra-op threads of this process (set before heavy libraries start their pools where possible)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch

    torch.set_num_threads(n)


def new_run_dir(path: str, name: str, marker: str, hint: str) -> Path:
    """The directory for a new run: `path`, or runs/<name>-<time>. One that already holds `marker` (a finished or
    running job's file) is refused with `hint`, so nothing is overwritten."""
    d = Path(path or f"runs/{name}-{datetime.now():%Y%m%d-%H%M%S}")
    if (d / marker).exists():
        raise FileExistsError(f"run.dir={d} already holds {marker}; {hint}")
    d.mkdir(parents=True, exist_ok=True)
    return d
