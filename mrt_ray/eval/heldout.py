"""Held-out accuracy and length of the current policy, sampled on the rollout workers (the training-time eval)."""
from __future__ import annotations

import math

from mrt_ray.config import Config
from mrt_ray.eval.metrics import pass_at_1, token_stats, truncation_rate
from mrt_ray.rollout.pool import sample_groups
from mrt_ray.rollout.types import SamplingSpec


def grade_groups(groups, grader) -> list[list[bool]]:
    """Each trajectory's correctness (a truncated sample counts as wrong), also stored in its `correct`."""
    flat = [t for g in groups for t in g]
    for t, ok in zip(flat, grader.many([t.completion.text for t in flat], [t.problem.answer for t in flat])):
        t.correct = bool(t.completion.finished and ok)
    return [[t.correct for t in g] for g in groups]


def sample_stats(groups, grader, correct: list[list[bool]] | None = None) -> dict[str, float]:
    """Accuracy (pass@1; a truncated sample counts as wrong) with its stderr over prompts (0 for one prompt), mean and
    p90 completion tokens, and truncation rate of sampled trajectory groups (one group per prompt). `correct`: the
    groups' grades when already computed (`grade_groups`)."""
    correct = correct if correct is not None else grade_groups(groups, grader)
    lengths = [t.length for g in groups for t in g]
    acc, se = pass_at_1(correct)
    stats = token_stats(lengths)
    per_prompt = [sum(t.length for t in g) / len(g) for g in groups]  # tokens se: over prompts, like accuracy
    mean = sum(per_prompt) / len(per_prompt)
    tokens_se = (math.sqrt(sum((x - mean) ** 2 for x in per_prompt) / (len(per_prompt) - 1) / len(per_prompt))
                 if len(per_prompt) > 1 else 0.0)
    return {
        "accuracy": acc,
        "accuracy_se": 0.0 if math.isnan(se) else se,
        "tokens_mean": stats["mean"],
        "tokens_se": tokens_se,
        "tokens_p90": stats["p90"],
        "truncation": truncation_rate([t.completion.finished for g in groups for t in g]),
    }


def evaluate(pool, source, cfg: Config, grader, tag: str = "eval") -> dict:
    """Greedy accuracy (if eval.greedy) and sampled pass@1 over eval.n_samples, with standard errors."""
    out = {}
    modes = ([("greedy", SamplingSpec(n=1, temperature=0.0, max_tokens=cfg.rollout.max_new_tokens))]
             if cfg.eval.greedy else [])
    modes.append(("sampled", SamplingSpec(n=cfg.eval.n_samples, temperature=cfg.eval.temperature,
                                          top_p=cfg.eval.top_p, max_tokens=cfg.rollout.max_new_tokens)))
    for mode, spec in modes:
        groups, _ = sample_groups(pool, source.eval, source.encode, spec, (cfg.seed, tag, mode))
        out.update({f"{tag}/{mode}_{k}": v for k, v in sample_stats(groups, grader).items()})
    return out
