"""Rollout: inference engines (vLLM, HF generate) behind one interface, hosted by the RolloutWorker actor."""
