"""What only NVIDIA GPUs can prove (run by scripts/gpu_smoke.sh: `pytest -m gpu tests`; skipped without CUDA).
The CPU halves of these checks are in tests/test_gpu_path.py and tests/test_vllm_contract.py.

- a dead engine core (a child process on GPU) ends the worker and Ray restarts it;
- the weight group over gloo moves CUDA tensors between two processes on ONE GPU (the shared layout), where NCCL
  refuses ("Duplicate GPU detected");
- with TORCH_NCCL_ASYNC_ERROR_HANDLING=2 (the learners' setting) a broadcast whose peer died raises in the sender,
  which lives on (needs 2 GPUs);
- a TP=2 engine starts inside one placement-group bundle of 2 GPUs (needs 2 GPUs)."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.stack,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _gpus(n: int):
    return pytest.mark.skipif(torch.cuda.device_count() < n, reason=f"needs {n} GPUs")


GPU_CFG = ("learner.num_ranks=1", "learner.num_gpus=0.4", "rollout.num_gpus=0.3", "model.dtype=bfloat16",
           "rollout.gpu_memory_utilization=0.25", "rollout.kv_cache_gib=1")


@pytest.mark.usefixtures("ray_session")
def test_dead_engine_core_restarts_the_worker_on_gpu(small_cfg, tiny_model):
    import psutil
    import ray

    from mrt_ray.actors import Placement, wait_ready
    from mrt_ray.rollout.types import Request, SamplingSpec
    from mrt_ray.rollout.worker import RolloutWorker

    cfg = small_cfg(*GPU_CFG, "rollout.max_restarts=1")
    placement = Placement(cfg, with_estimators=False, roles=("rollout",))
    worker = placement.actor(RolloutWorker, "rollout", 0, cfg, tiny_model, 0, max_restarts=1)
    req = [Request([5, 6, 7], SamplingSpec(n=2, max_tokens=8, seed=1))]
    try:
        first = wait_ready(worker, "worker", 600, "rollout.startup_timeout_s")
        ray.get(worker.generate.remote(req))
        for p in psutil.Process(first["pid"]).children(recursive=True):
            p.send_signal(signal.SIGKILL)
        time.sleep(2)
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(worker.generate.remote(req), timeout=300)
        assert wait_ready(worker, "worker", 600, "rollout.startup_timeout_s")["pid"] != first["pid"]
        out, _ = ray.get(worker.generate.remote(req))
        assert len(out[0]) == 2
    finally:
        ray.kill(worker)
        placement.remove()


def _member(backend: str, rank: int, port: int, one_gpu: bool, die: bool, env: dict, q) -> None:
    """One member of a 2-rank weight group (on cuda:0, or cuda:rank): rank 0 broadcasts 64 MB twice, each time
    waiting at most 60 s; a member with `die` ends its process after the first."""
    os.environ.update(env)
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from mrt_ray.weight_sync.group import create_group

    device = torch.device("cuda", 0 if one_gpu else rank)
    torch.cuda.set_device(device)
    group = create_group(backend, "127.0.0.1", port, rank, 2, 20.0, device)
    t = torch.full((16, 1 << 20), 1.5 if rank == 0 else 0.0, device=device)
    group.pg.broadcast([t], dist.BroadcastOptions()).wait(timedelta(seconds=60))
    q.put((rank, "first", float(t.sum())))
    if die:
        os._exit(0)
    try:
        group.pg.broadcast([t], dist.BroadcastOptions()).wait(timedelta(seconds=60))
        float(t.sum())
        q.put((rank, "second", "completed"))
    except Exception as e:  # noqa: BLE001 - the point: an error in Python, not a dead process
        q.put((rank, "second", f"raised {type(e).__name__}"))


def _run_pair(backend: str, one_gpu: bool, die_rank: int | None, env: dict, timeout: float = 180.0) -> list:
    """The members' reports (rank, phase, value); a member that is killed reports nothing more."""
    import queue

    from mrt_ray.utils import free_port

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_member, args=(backend, r, port, one_gpu, r == die_rank, env, q)) for r in (0, 1)]
    for p in procs:
        p.start()
    out, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline and len(out) < 4 - (die_rank is not None):
        try:
            out.append(q.get(timeout=1))
        except queue.Empty:
            pass
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    return out


def test_gloo_weight_group_moves_cuda_tensors_on_one_gpu():
    """The shared layout's transport: two processes on cuda:0, gloo, CUDA tensors (NCCL refuses this)."""
    got = _run_pair("gloo", True, None, {})
    assert (1, "first", 1.5 * 16 * (1 << 20)) in got and (1, "second", "completed") in got, got


@_gpus(2)
def test_nccl_timeout_raises_in_the_sender_instead_of_ending_it():
    """The receiver dies after the first broadcast. With TORCH_NCCL_ASYNC_ERROR_HANDLING=2 (the learners' setting)
    the sender's second broadcast fails in Python once the group's 20 s timeout passes, and the sender lives on to
    report it; with torch's default (3) the NCCL watchdog would end the sender's process."""
    got = _run_pair("nccl", False, 1, {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"})
    assert (0, "first", 1.5 * 16 * (1 << 20)) in got, got
    second = [g for g in got if g[:2] == (0, "second")]
    assert second and second[0][2].startswith("raised"), got


@_gpus(2)
@pytest.mark.usefixtures("ray_session")
def test_tensor_parallel_engine_in_one_bundle_of_two_gpus(small_cfg, tiny_model):
    import ray

    from mrt_ray.actors import Placement, wait_ready
    from mrt_ray.rollout.types import Request, SamplingSpec
    from mrt_ray.rollout.worker import RolloutWorker

    cfg = small_cfg("learner.num_gpus=1", "rollout.num_gpus=2", "rollout.tensor_parallel_size=2",
                    "model.dtype=bfloat16")
    placement = Placement(cfg, with_estimators=False, roles=("rollout",))
    worker = placement.actor(RolloutWorker, "rollout", 0, cfg, tiny_model, 0)
    try:
        assert wait_ready(worker, "worker", 900, "rollout.startup_timeout_s")["group_size"] == 2
        out, _ = ray.get(worker.generate.remote([Request([5, 6, 7], SamplingSpec(n=2, max_tokens=8, seed=1))]))
        assert len(out[0]) == 2
    finally:
        ray.kill(worker)
        placement.remove()
