"""RolloutWorker: hosts one inference engine; samples completions and receives weight pushes.

A plain class (unit-testable without Ray); `trainer.py` makes it a Ray actor with restart options. The same class
serves the MRT estimator pool (forced answers are just short generations from prefix prompts).
"""
from __future__ import annotations

import os
import time

from mrt_ray.config import Config
from mrt_ray.rollout.types import Completion, Request


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

    def generate(self, requests: list[Request]) -> tuple[list[list[Completion]], dict]:
        t = time.perf_counter()
        out = self.engine.generate(requests, self.version)
        tokens = sum(len(c.ids) for g in out for c in g)
        return out, {"seconds": time.perf_counter() - t, "tokens": tokens}

    def prompt_logprobs(self, ids: list[int]) -> list[float]:
        return self.engine.prompt_logprobs(ids)

    def init_weight_group(self, backend, host, port, base_rank, world_size, timeout_s, plan) -> list[int]:
        return self.engine.init_weight_group(backend, host, port, base_rank, world_size, timeout_s, plan)

    def receive_weights(self, version: int, push_id: int) -> list[list[int]]:
        """Receive push `push_id` (policy `version`); per engine rank, its per-bucket checksums."""
        sums = self.engine.receive_weights(push_id)
        self.version = version
        return sums

    def set_version(self, version: int) -> None:
        self.version = version
