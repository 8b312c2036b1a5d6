"""Cross-key rules of a resolved Config, checked by the composition root (the CLI) before anything starts:
registered names, sizes that must agree, resources versus ray.num_cpus, task shapes. Per-key ranges and choices are
the schema's own (`mrt_ray.config.load.check_fields`). All violations are reported together in one ConfigError."""
from __future__ import annotations

from omegaconf import OmegaConf

from mrt_ray.config import Config, ConfigError


def uses_estimator(cfg: Config) -> bool:
    """Whether the method (algo.name) needs the Monte-Carlo estimator pool (MRT, MRT-STaR)."""
    from mrt_ray.methods import METHODS  # late: the registries import torch

    return cfg.algo.name in METHODS and METHODS[cfg.algo.name].needs_estimator(cfg)


def registry_errors(cfg: Config) -> list[str]:
    from mrt_ray.algos.advantages import ADVANTAGES  # late: the registries import torch
    from mrt_ray.algos.losses import LOSSES
    from mrt_ray.methods import METHODS, MRT_VARIANTS
    from mrt_ray.rewards import REWARDS

    errors = []
    node = OmegaConf.structured(cfg)
    for reg in (METHODS, MRT_VARIANTS, ADVANTAGES, REWARDS, LOSSES):
        value = OmegaConf.select(node, reg.key)
        if value not in reg:
            errors.append(f"{reg.key}={value!r} is not registered; choose one of {sorted(reg)}")
    method = METHODS.get(cfg.algo.name)
    if method is not None and method.loss is not None and cfg.algo.loss != method.loss:
        errors.append(f"algo.name={cfg.algo.name} trains with algo.loss={method.loss}, got {cfg.algo.loss!r}")
    return errors


def validate(cfg: Config) -> None:
    """Reject impossible combinations with one clear message, before anything starts."""
    errors = registry_errors(cfg)
    if cfg.algo.advantage in ("grpo", "rloo", "drgrpo") and cfg.rollout.n_samples < 2:
        errors.append(f"algo.advantage={cfg.algo.advantage} needs rollout.n_samples >= 2 (a group baseline)")
    if cfg.train.async_rollout and uses_estimator(cfg):
        errors.append(f"train.async_rollout is not supported with algo.name={cfg.algo.name} (the estimator pool "
                      "shares the workers' weight versions); use the synchronous loop")
    if cfg.task.name == "embedded" and cfg.task.max_value < 2 * cfg.task.max_operand - 1:
        errors.append(f"task.max_value={cfg.task.max_value} must be >= 2*task.max_operand-1="
                      f"{2 * cfg.task.max_operand - 1} so every chain can stay in [0, max_value]")
    if cfg.task.name == "embedded" and cfg.task.min_terms > cfg.task.max_terms:
        errors.append(f"task.min_terms={cfg.task.min_terms} must be <= task.max_terms={cfg.task.max_terms}")
    if cfg.task.name == "file" and not cfg.task.path:
        errors.append("task.name=file needs task.path (a JSONL/Parquet file or a saved HF dataset directory)")
    if cfg.task.name == "reasoning_gym" and not cfg.task.dataset:
        errors.append("task.name=reasoning_gym needs task.dataset (a reasoning-gym generator, e.g. chain_sum)")
    if cfg.task.grader == "reasoning_gym" and cfg.task.name != "reasoning_gym":
        errors.append(f"task.grader=reasoning_gym grades reasoning-gym problems; task.name={cfg.task.name} "
                      f"needs task.grader=math or exact")
    if cfg.model.max_model_len < cfg.rollout.max_new_tokens + 16:
        errors.append(
            f"model.max_model_len={cfg.model.max_model_len} leaves no room for prompts with "
            f"rollout.max_new_tokens={cfg.rollout.max_new_tokens}"
        )
    if cfg.algo.clip_eps_high < cfg.algo.clip_eps:
        errors.append(f"algo.clip_eps_high={cfg.algo.clip_eps_high} must be >= algo.clip_eps={cfg.algo.clip_eps} "
                      f"(clip-higher widens the upper bound only)")
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
        raise ConfigError.of(errors)
