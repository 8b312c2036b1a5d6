"""Every DeepSpeed call in mrt-ray lives here, so a DeepSpeed upgrade touches this file only.

Checkpoints: DeepSpeed's own save/load logic (every ZeRO stage, per-rank optimizer partitions, fp32 master weights,
scheduler, counters) runs unchanged, but its checkpoint engine, the one object that turns a state dict into a file
and back, is replaced by `SafeCheckpointEngine`, which writes `mrt_ray.safe_state` files (safetensors + a JSON
tree) where DeepSpeed's `TorchCheckpointEngine` would torch.save a pickle and read it back with
`torch.load(weights_only=False)`. The files keep DeepSpeed's names (`*_model_states.pt`, `*_optim_states.pt`: its
loader finds them by those names), but hold no pickle. The only objects they may rebuild are listed in `_objects()`.
"""
from __future__ import annotations

import contextlib
import importlib
import os
from datetime import timedelta
from pathlib import Path

import torch

from mrt_ray import safe_state
from mrt_ray.config import Config
from mrt_ray.utils import gloo_on_loopback


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int, timeout_s: float,
                     listen_fd: int | None = None) -> str:
    """Join the learners' DeepSpeed world: NCCL on GPU, gloo on CPU. Returns the backend.

    The rendezvous store is ours, not torch's `env://` one (whose TCPStore listens on every interface): rank 0 serves
    it on `listen_fd`, a socket already listening on master_addr:master_port (`mrt_ray.utils.listen_socket`), and the
    default process group is created on it before DeepSpeed, which then adopts it. On loopback the gloo pairs bind
    127.0.0.1 too (GLOO_SOCKET_IFNAME), so a local run listens on no other interface."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK="0")
    gloo_on_loopback(master_addr)
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        # The shared-memory all-reduce op serves inference only and costs ~50 s of compile per fresh machine.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    import deepspeed

    backend = "nccl" if cuda else "gloo"
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(master_addr, master_port, world_size, is_master=rank == 0, timeout=timeout,
                          wait_for_workers=False, master_listen_fd=listen_fd)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
    deepspeed.init_distributed(dist_backend=backend, timeout=timeout)  # adopts the group created above
    return backend


def ds_config(cfg: Config, micro_batch: int) -> dict:
    lc = cfg.learner
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,  # micro-batches are accumulated by hand (set_accumulation_boundary)
        "zero_optimization": {"stage": lc.zero_stage},
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.model.dtype == "float16"},
        "gradient_clipping": lc.grad_clip,
        "zero_allow_untested_optimizer": True,  # a plain torch AdamW: no FusedAdam/CPUAdam compile
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def initialize(model, cfg: Config, micro_batch: int):
    """Wrap `model` in a DeepSpeed engine with AdamW and a linear warm-up schedule."""
    import deepspeed

    lc = cfg.learner
    opt = torch.optim.AdamW(model.parameters(), lr=lc.lr, betas=tuple(lc.betas), weight_decay=lc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, lc.warmup_steps)))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                           config=ds_config(cfg, micro_batch))
    engine.checkpoint_engine = _safe_checkpoint_engine()
    return engine


def set_accumulation_boundary(engine, is_last: bool) -> None:
    engine.set_gradient_accumulation_boundary(is_last)


def step(engine) -> float | None:
    """engine.step(), returning the global gradient norm (before clipping) that DeepSpeed does not keep itself: its
    plain ZeRO-0 path clips without storing it. At the accumulation boundary, after backward, ZeRO-0's gradients
    are already all-reduced, so every rank computes the same norm. None when DeepSpeed keeps it (grad_norm reads it)
    or off the boundary."""
    own = None
    if engine.zero_optimization_stage() == 0 and engine.is_gradient_accumulation_boundary():
        norms = [torch.linalg.vector_norm(p.grad.float()) for p in engine.module.parameters() if p.grad is not None]
        own = float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0
    engine.step()
    return own


def grad_norm(engine, own: float | None = None) -> float:
    """The last step's global gradient norm: DeepSpeed's, else `own` (from `step`), else NaN."""
    n = engine.get_global_grad_norm()
    return float(n) if n is not None else own if own is not None else float("nan")


def gathered(params, enabled: bool):
    """ZeRO-3: gather full parameters on every rank (all ranks must enter, or it deadlocks)."""
    if not enabled:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)


def _objects() -> dict[str, type]:
    """The classes DeepSpeed's state dicts hold besides containers, tensors and numbers (ZeRO-1/2/3, fp32/bf16/fp16):
    the loss scalers, the ZeRO stage enum, and the fragment addresses of ZeRO-1/2's parameter slice mappings."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return {safe_state.qualname(c): c for c in (LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address)}


def _safe_checkpoint_engine():
    from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointEngine

    class SafeCheckpointEngine(CheckpointEngine):
        """DeepSpeed's checkpoint engine interface over `mrt_ray.safe_state`: no pickle is written or read."""

        def __init__(self):
            super().__init__()
            self.name = "mrt-ray SafeCheckpointEngine"
            self.objects = _objects()

        def create(self, info) -> None:
            pass

        def save(self, state_dict, path: str) -> None:
            safe_state.save(state_dict, path, self.objects)

        def load(self, path: str, map_location=None):
            return safe_state.load(path, self.objects)  # CPU tensors: DeepSpeed copies them where they belong

        def commit(self, info) -> bool:
            return True

    return SafeCheckpointEngine()


def save_checkpoint(engine, path: str, tag: str) -> None:
    engine.save_checkpoint(path, tag=tag)
    for script in ("zero_to_fp32.py", "zero_to_torch.py"):  # DeepSpeed's converters torch.load: not for these files
        (Path(path) / script).unlink(missing_ok=True)


def load_checkpoint(engine, path: str, tag: str) -> None:
    _, client = engine.load_checkpoint(path, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
    if client is None:
        raise RuntimeError(f"no DeepSpeed checkpoint {tag!r} under {path}")
