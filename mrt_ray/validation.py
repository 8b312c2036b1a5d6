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


def gpu_errors(cfg: Config) -> list[str]:
    """The GPU layout: every role on CPU or every role on GPU; an engine's bundle holds exactly its
    tensor_parallel_size GPUs; a GPU share (num_gpus < 1: Ray puts several actors on one GPU) only where nothing
    needs NCCL between ranks on that GPU (one learner rank, TP=1 engines) and with vLLM's memory inside the share."""
    errors, tp, lg = [], cfg.rollout.tensor_parallel_size, cfg.learner.num_gpus
    engines = [("rollout", cfg.rollout.num_gpus)]
    if uses_estimator(cfg):
        engines.append(("progress", cfg.progress.num_gpus))
    for key, g in engines:
        if lg and not g:
            errors.append(f"learner.num_gpus={lg:g} puts the learners on GPU but {key}.num_gpus=0 starts its engines "
                          f"without one; give them GPUs ({key}.num_gpus={tp}) or keep every role on CPU")
        elif g and not lg:
            errors.append(f"{key}.num_gpus={g:g} but learner.num_gpus=0: the weight push needs every role on GPU "
                          f"(learner.num_gpus=1) or every role on CPU")
        if g >= 1 and g != tp:
            errors.append(f"{key}.num_gpus={g:g} must equal rollout.tensor_parallel_size={tp}: an engine's GPUs are "
                          f"all in its worker's bundle")
        elif 0 < g < 1 and tp > 1:
            errors.append(f"{key}.num_gpus={g:g} shares a GPU, but a rollout.tensor_parallel_size={tp} engine needs "
                          f"{tp} whole GPUs")
        elif 0 < g < 1 and cfg.rollout.backend == "vllm" and cfg.rollout.gpu_memory_utilization > g:
            errors.append(f"rollout.gpu_memory_utilization={cfg.rollout.gpu_memory_utilization:g} exceeds the GPU "
                          f"share {key}.num_gpus={g:g} of each engine")
    if lg > 1 or (lg >= 1 and lg != int(lg)):
        errors.append(f"learner.num_gpus={lg:g}: a DeepSpeed rank drives one GPU; use 1 (or 0 for CPU)")
    elif 0 < lg < 1 and cfg.learner.num_ranks > 1:
        errors.append(f"learner.num_gpus={lg:g} shares a GPU, which needs learner.num_ranks=1: NCCL refuses two ranks "
                      f"of the DeepSpeed world on one GPU")
    if tp > 1 and cfg.rollout.backend != "vllm":
        errors.append(f"rollout.tensor_parallel_size={tp} needs rollout.backend=vllm (the hf engine runs on one "
                      f"device)")
    return errors


def _backtrack_errors(cfg: Config) -> list[str]:
    """The backtracking-search traces are the embedded task's, and their attempts are episodes only when the
    backtrack line opens one (conf/task/embedded_backtrack.yaml sets both)."""
    from mrt_ray.tasks.backtrack import TO_BEGINNING, TO_LINE

    errors, seg = [], cfg.progress.segment
    if cfg.bootstrap.sft_loss == "suffix" and cfg.task.traces != "backtrack":
        errors.append("bootstrap.sft_loss=suffix trains on the attempt after the last backtrack: it needs "
                      "task.traces=backtrack (task=embedded_backtrack)")
    b = cfg.bootstrap
    if b.budget_share > 0 and cfg.task.traces != "r1":
        errors.append(f"bootstrap.budget_share={b.budget_share:g} puts L1 budget cues in the r1 traces' SFT prompts; "
                      f"task.traces={cfg.task.traces} has none")
    if b.budget_min_tokens > b.budget_max_tokens:
        errors.append(f"bootstrap.budget_min_tokens={b.budget_min_tokens} must be <= "
                      f"bootstrap.budget_max_tokens={b.budget_max_tokens}")
    if cfg.task.traces != "backtrack":
        return errors
    if cfg.task.name != "embedded":
        errors.append(f"task.traces=backtrack is a trace family of the embedded task; got task.name={cfg.task.name}")
    lines = (TO_BEGINNING, TO_LINE.format(n=1))
    if seg.separator != "lines" or not all(any(ln.startswith(m) for m in seg.markers) for ln in lines):
        errors.append(f"task.traces=backtrack: an attempt is an episode only with progress.segment.separator=lines "
                      f"and a marker that starts both backtrack lines ('Backtrack to'); got separator="
                      f"{seg.separator}, markers={list(seg.markers)} (task=embedded_backtrack sets them)")
    return errors


def validate(cfg: Config) -> None:
    """Reject impossible combinations with one clear message, before anything starts."""
    errors = registry_errors(cfg) + gpu_errors(cfg)
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
    errors += _backtrack_errors(cfg)
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
            + max(cfg.learner.num_ranks, 1) * cfg.learner.num_cpus  # 0 ranks: derived, at least 1
            + (cfg.progress.num_workers * cfg.progress.num_cpus if uses_estimator(cfg) else 0)
        )
        if need > cfg.ray.num_cpus:
            errors.append(
                f"the actors ask for {need:g} CPUs (rollout {cfg.rollout.num_workers}x{cfg.rollout.num_cpus:g}, "
                f"learner {max(cfg.learner.num_ranks, 1)}x{cfg.learner.num_cpus:g}) but ray.num_cpus={cfg.ray.num_cpus}"
            )
    errors += budget_errors(cfg)
    if errors:
        raise ConfigError.of(errors)


def budget_errors(cfg: Config) -> list[str]:
    """Token budgets in the prompt (L1), the hard token limit (ThinkPrune), budget-adherence targets, schedules."""
    from mrt_ray.schedule import schedule_errors  # late: imports the reward registry

    a, bc, cap = cfg.algo, cfg.algo.budget, cfg.rollout.max_new_tokens
    errors = schedule_errors(cfg)
    if bc.max_tokens:
        if not 1 <= bc.min_tokens <= bc.max_tokens <= cap:
            errors.append(f"algo.budget needs 1 <= min_tokens ({bc.min_tokens}) <= max_tokens ({bc.max_tokens}) <= "
                          f"rollout.max_new_tokens ({cap})")
        if cfg.task.name == "file" and not ("{n}" in bc.cue and "{n}" in bc.max_cue):
            errors.append(f"algo.budget.cue={bc.cue!r} and max_cue={bc.max_cue!r} must both hold {{n}}, the budget")
    elif bc.min_tokens or bc.max_share:
        errors.append("algo.budget.min_tokens / max_share are set but algo.budget.max_tokens=0 (budgets off)")
    if a.reward in ("l1_exact", "l1_max") and not bc.max_tokens:
        errors.append(f"algo.reward={a.reward} needs a budget in every prompt: set algo.budget.min_tokens and "
                      f"max_tokens")
    if a.reward == "l1_exact" and bc.max_share:
        errors.append(f"algo.reward=l1_exact rewards exact budgets only; algo.budget.max_share={bc.max_share} asks for "
                      f"maximum budgets too (use algo.reward=l1_max)")
    if a.reward == "thinkprune" and not a.token_limit and "token_limit" not in a.schedule:
        errors.append("algo.reward=thinkprune needs algo.token_limit > 0 or algo.schedule.token_limit")
    limits = [a.token_limit] + [p[1] for p in a.schedule.get("token_limit", []) if len(p) == 2]
    if max(limits) > cap:
        errors.append(f"algo.token_limit (or its schedule) reaches {max(limits):g} > rollout.max_new_tokens ({cap}): "
                      f"a limit above the sampling cap has no effect")
    if any(t > cap for t in cfg.eval.targets):
        errors.append(f"eval.targets={cfg.eval.targets} must not exceed rollout.max_new_tokens ({cap})")
    return errors
