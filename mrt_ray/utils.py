"""Small shared helpers: seeding, timing, atomic directory writes, free ports, run directories."""
from __future__ import annotations

import contextlib
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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def new_run_dir(path: str, name: str, marker: str, hint: str) -> Path:
    """The directory for a new run: `path`, or runs/<name>-<time>. One that already holds `marker` (a finished or
    running job's file) is refused with `hint`, so nothing is overwritten."""
    d = Path(path or f"runs/{name}-{datetime.now():%Y%m%d-%H%M%S}")
    if (d / marker).exists():
        raise FileExistsError(f"run.dir={d} already holds {marker}; {hint}")
    d.mkdir(parents=True, exist_ok=True)
    return d
