"""Cross-field checks of a resolved Config: impossible combinations are one clear ConfigError before anything
starts (choices, registered names, positive sizes, resources versus ray.num_cpus, task shapes, async limits)."""
from __future__ import annotations

from omegaconf import OmegaConf

from mrt_ray.config import Config, ConfigError


_CHOICES = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "task.name": ("embedded", "file"),
    "task.grader": ("exact", "math"),
    "task.on_bad_row": ("error", "skip"),
    "rollout.backend": ("vllm", "hf"),
    "algo.loss_agg": ("token_mean", "seq_mean", "constant"),
    "algo.kl_estimator": ("k1", "k3"),
    "algo.mrt.variant": ("bonus", "termination_baseline"),
    "algo.name": ("grpo", "rloo", "drgrpo", "length_penalty", "mrt", "star"),
    "wandb.mode": ("offline", "online", "disabled", "auto"),
    "learner.zero_stage": (0, 1, 2, 3),
}


def uses_estimator(cfg: Config) -> bool:
    """MRT and MRT-STaR need the Monte-Carlo estimator pool."""
    return cfg.algo.name in ("mrt", "star")


def validate(cfg: Config) -> None:
    """Reject impossible combinations with one clear message, before anything starts."""
    errors = []
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(OmegaConf.structured(cfg), key)
        if value not in choices:
            errors.append(f"{key}={value!r} is not one of {list(choices)}")
    from mrt_ray.algos.advantages import ADVANTAGES  # late: the registries import torch
    from mrt_ray.algos.losses import LOSSES
    from mrt_ray.rewards import REWARDS

    for reg in (ADVANTAGES, REWARDS, LOSSES):
        value = OmegaConf.select(OmegaConf.structured(cfg), reg.key)
        if value not in reg:
            errors.append(f"{reg.key}={value!r} is not registered; choose one of {sorted(reg)}")
    positive = {
        "rollout.num_workers": cfg.rollout.num_workers,
        "rollout.n_samples": cfg.rollout.n_samples,
        "rollout.max_new_tokens": cfg.rollout.max_new_tokens,
        "learner.num_ranks": cfg.learner.num_ranks,
        "learner.micro_batch_size": cfg.learner.micro_batch_size,
        "train.prompts_per_step": cfg.train.prompts_per_step,
        "progress.samples": cfg.progress.samples,
        "progress.round_size": cfg.progress.round_size,
    }
    errors += [f"{k}={v} must be positive" for k, v in positive.items() if v <= 0]
    if not 0.0 <= cfg.algo.alpha < 1.0:
        errors.append(f"algo.alpha={cfg.algo.alpha} must be in [0, 1)")
    if cfg.algo.advantage in ("grpo", "rloo", "drgrpo") and cfg.rollout.n_samples < 2:
        errors.append(f"algo.advantage={cfg.algo.advantage} needs rollout.n_samples >= 2 (a group baseline)")
    if cfg.train.async_rollout and cfg.train.max_staleness < 1:
        errors.append("train.async_rollout=true samples one policy version behind: train.max_staleness must be >= 1")
    if cfg.train.async_rollout and cfg.algo.name in ("mrt", "star"):
        errors.append(f"train.async_rollout is not supported with algo.name={cfg.algo.name} (the estimator pool "
                      "shares the workers' weight versions); use the synchronous loop")
    if cfg.task.name == "embedded" and cfg.task.max_value < 2 * cfg.task.max_operand - 1:
        errors.append(f"task.max_value={cfg.task.max_value} must be >= 2*task.max_operand-1="
                      f"{2 * cfg.task.max_operand - 1} so every chain can stay in [0, max_value]")
    if cfg.task.name == "file" and not cfg.task.path:
        errors.append("task.name=file needs task.path (a JSONL/Parquet file or a saved HF dataset directory)")
    if cfg.model.max_model_len < cfg.rollout.max_new_tokens + 16:
        errors.append(
            f"model.max_model_len={cfg.model.max_model_len} leaves no room for prompts with "
            f"rollout.max_new_tokens={cfg.rollout.max_new_tokens}"
        )
    if cfg.ray.num_cpus:
        need = (
            cfg.rollout.num_workers * cfg.rollout.num_cpus
            + cfg.learner.num_ranks * cfg.learner.num_cpus
            + (cfg.progress.num_workers * cfg.progress.num_cpus if uses_estimator(cfg) else 0)
        )
        if need > cfg.ray.num_cpus:
            errors.append(
                f"the actors ask for {need:g} CPUs (rollout {cfg.rollout.num_workers}x{cfg.rollout.num_cpus:g}, "
                f"learner {cfg.learner.num_ranks}x{cfg.learner.num_cpus:g}) but ray.num_cpus={cfg.ray.num_cpus}"
            )
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
