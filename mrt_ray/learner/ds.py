"""Every DeepSpeed call in mrt-ray lives here, so a DeepSpeed upgrade touches this file only."""
from __future__ import annotations

import contextlib
import importlib
import os
from datetime import timedelta

import torch

from mrt_ray.config import Config


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int, timeout_s: float) -> str:
    """Join the learners' DeepSpeed world: NCCL on GPU, gloo on CPU. Returns the backend."""
    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK="0")
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        # The shared-memory all-reduce op serves inference only and costs ~50 s of compile per fresh machine.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    import deepspeed

    backend = "nccl" if cuda else "gloo"
    deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=timeout_s))
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
    return engine


def set_accumulation_boundary(engine, is_last: bool) -> None:
    engine.set_gradient_accumulation_boundary(is_last)


def grad_norm(engine) -> float:
    n = engine.get_global_grad_norm()
    return float(n) if n is not None else float("nan")


def gathered(params, enabled: bool):
    """ZeRO-3: gather full parameters on every rank (all ranks must enter, or it deadlocks)."""
    if not enabled:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)


def save_checkpoint(engine, path: str, tag: str) -> None:
    engine.save_checkpoint(path, tag=tag)


def load_checkpoint(engine, path: str, tag: str) -> None:
    _, client = engine.load_checkpoint(path, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
    if client is None:
        raise RuntimeError(f"no DeepSpeed checkpoint {tag!r} under {path}")
