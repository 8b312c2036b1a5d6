"""RolloutWorker: hosts one inference engine; samples completions and receives weight pushes.

A plain class (unit-testable without Ray); `trainer.py` makes it a Ray actor with restart options. The same class
serves the MRT estimator pool (forced answers are just short generations from prefix prompts).

An engine that can never answer again (`EngineDead`: vLLM's engine-core process died, as an NCCL or CUDA fault on
GPU does) ends this process with exit status `EXIT_ENGINE_DEAD`: Ray then sees a dead actor and restarts it
(`rollout.max_restarts`), and the controller re-arms it and re-runs its chunk (`mrt_ray/recovery.py`). Raising
instead would leave a live actor that fails every call.
"""
from __future__ import annotations

import functools
import logging
import os

from mrt_ray.config import Config
from mrt_ray.rollout.types import Completion, EngineDead, Request
from mrt_ray.utils import release_freed_memory, timed

log = logging.getLogger("mrt_ray")
EXIT_ENGINE_DEAD = 75  # the worker's exit status after its engine died


def exit_if_engine_dead(method):
    """`EngineDead` from the engine ends the process (one logged line says why), so that Ray restarts it."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except EngineDead as e:
            log.error("worker %s (pid %s): %s; ending the process so that Ray restarts it", self.index, os.getpid(), e)
            logging.shutdown()  # flush before _exit skips the interpreter's own shutdown
            os._exit(EXIT_ENGINE_DEAD)
    return call


def make_engine(model_path: str, cfg: Config, seed: int):
    if cfg.rollout.backend == "vllm":
        from mrt_ray.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, cfg, seed)
    if cfg.rollout.backend == "hf":
        from mrt_ray.rollout.hf_engine import HFEngine

        return HFEngine(model_path, cfg, seed)
    raise ValueError(f"rollout.backend={cfg.rollout.backend!r}: choose vllm or hf")


class RolloutWorker:
    def __init__(self, cfg: Config, model_path: str, index: int = 0, threads: int | None = None):
        n = threads or cfg.rollout.threads
        os.environ["OMP_NUM_THREADS"] = str(n)  # in-process vLLM ignores torch.set_num_threads
        import torch

        torch.set_num_threads(n)
        self.cfg, self.index = cfg, index
        self.engine = make_engine(model_path, cfg, cfg.seed + 1000 * index)
        self.version = 0

    def ready(self) -> dict:
        return {"index": self.index, "pid": os.getpid(), "version": self.version, "group_size": self.engine.group_size}

    @exit_if_engine_dead
    def generate(self, requests: list[Request]) -> tuple[list[list[Completion]], dict]:
        stats: dict = {}
        with timed(stats, "seconds"):
            out = self.engine.generate(requests, self.version)
        release_freed_memory()  # else glibc keeps what the engine freed, and RSS grows with every call
        stats["tokens"] = sum(len(c.ids) for g in out for c in g)
        return out, stats

    @exit_if_engine_dead
    def prompt_logprobs(self, ids: list[int]) -> list[float]:
        return self.engine.prompt_logprobs(ids)

    @exit_if_engine_dead
    def init_weight_group(self, backend, host, port, base_rank, world_size, timeout_s, plan) -> list[int]:
        return self.engine.init_weight_group(backend, host, port, base_rank, world_size, timeout_s, plan)

    @exit_if_engine_dead
    def receive_weights(self, version: int, push_id: int) -> list[list[int]]:
        """Receive push `push_id` (policy `version`); per engine rank, its per-bucket checksums."""
        sums = self.engine.receive_weights(push_id)
        self.version = version
        return sums
