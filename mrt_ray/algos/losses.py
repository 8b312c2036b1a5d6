"""Policy losses (PPO-clip with clip-higher, KL to a reference, entropy bonus; SFT NLL) and their aggregation.

A registered loss maps the current policy's log-probs and a `LossInputs` to a PER-TOKEN loss `[B, T]` plus statistics
(masked means over the micro-batch). It never reduces over tokens itself: `aggregate` does, with the normalisers of
the whole optimizer step (`StepNorm`: every micro-batch on every learner rank), so token_mean, seq_mean and constant
give each token or sequence exactly its intended weight however the step is split. All per-token tensors are
`[B, T]` over completion tokens; `mask` is 1 on real completion tokens and 0 on padding. Only `logp` and `entropy`
(a function of the current policy too) carry gradient: the others are detached here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from mrt_ray.registry import Registry

if TYPE_CHECKING:
    from mrt_ray.config import AlgoConfig

AGG_MODES = ("token_mean", "seq_mean", "constant")
KL_ESTIMATORS = ("k1", "k3")


@dataclass
class LossInputs:
    """What a loss may read besides the current log-probs. Each tensor `[B, T]`; None when the method has none."""

    mask: Tensor  # 1 on completion tokens
    adv: Tensor | None = None  # per-token advantages
    old_logp: Tensor | None = None  # log-probs of the policy that the ratio compares against
    ref_logp: Tensor | None = None  # frozen reference policy (algo.kl_coef > 0)
    is_weight: Tensor | None = None  # truncated importance weight of async samples
    entropy: Tensor | None = None  # per-position entropy of the current policy, WITH gradient (entropy_coef > 0)


@dataclass(frozen=True)
class StepNorm:
    """Normalisers of one optimizer step: completion tokens and sequences over ALL micro-batches and ranks, and
    Dr. GRPO's constant (max_new_tokens). `local(mask)` gives a single batch's own."""

    tokens: float
    seqs: float  # sequences with at least one completion token
    max_tokens: int = 0

    @classmethod
    def local(cls, mask: Tensor, max_tokens: int = 0) -> StepNorm:
        m = mask.bool()
        return cls(float(m.sum()), float((m.sum(dim=1) > 0).sum()), max_tokens)


class LossFn(Protocol):
    def __call__(self, logp: Tensor, inputs: LossInputs, cfg: AlgoConfig) -> tuple[Tensor, dict[str, float]]: ...


LOSSES: Registry[LossFn] = Registry("loss", "algo.loss")
register_loss = LOSSES.register


def aggregate(values: Tensor, mask: Tensor, mode: str, norm: StepNorm | None = None) -> Tensor:
    """This micro-batch's share of the step's scalar loss, from per-token `values: [B, T]` where `mask` is 1.

    token_mean: sum / tokens of the step; seq_mean: sum over sequences of (mean over its tokens) / sequences of the
    step; constant: sum / (sequences of the step * max_tokens) (Dr. GRPO). Summed over every micro-batch of every rank,
    the shares give the aggregate of the whole step. `norm` None: this batch is the whole step.
    """
    m = mask.bool()
    norm = norm if norm is not None else StepNorm.local(m)
    vals = torch.where(m, values, torch.zeros_like(values))
    if mode == "token_mean":
        return vals.sum() / max(norm.tokens, 1.0)
    if mode == "seq_mean":
        per_seq = m.sum(dim=1).clamp(min=1)  # [B]; sequences without tokens contribute 0
        return (vals.sum(dim=1) / per_seq).sum() / max(norm.seqs, 1.0)
    if mode == "constant":
        if norm.max_tokens <= 0:
            raise ValueError(f"algo.loss_agg=constant needs a positive max_tokens (max_new_tokens), got "
                             f"{norm.max_tokens}")
        return vals.sum() / (max(norm.seqs, 1.0) * norm.max_tokens)
    raise ValueError(f"algo.loss_agg={mode!r} is not one of {list(AGG_MODES)}")


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str) -> Tensor:
    """Per-token estimate of KL(pi || ref) from samples of pi.

    k1 = logp - ref; k3 = exp(ref - logp) - (ref - logp) - 1 (non-negative, lower variance)."""
    d = ref_logp.detach() - logp  # [B, T]
    if estimator == "k1":
        return -d
    if estimator == "k3":
        return torch.exp(d) - d - 1
    raise ValueError(f"algo.kl_estimator={estimator!r} is not one of {list(KL_ESTIMATORS)}")


def masked_mean(values: Tensor, mask: Tensor) -> float:
    m = mask.bool()
    return float(torch.where(m, values.detach(), torch.zeros_like(values)).sum() / m.sum().clamp(min=1))


def _check_shapes(where: str, logp: Tensor, inputs: LossInputs, needs: tuple[str, ...]) -> None:
    if logp.dim() != 2:
        raise ValueError(f"{where}: logp must be [B, T], got shape {tuple(logp.shape)}")
    for name in needs:
        if getattr(inputs, name) is None:
            raise ValueError(f"{where}: needs inputs.{name}, got None")
    for name in ("mask", "adv", "old_logp", "ref_logp", "is_weight", "entropy"):
        t = getattr(inputs, name)
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{where}: {name} has shape {tuple(t.shape)}, expected {tuple(logp.shape)} like logp")


@register_loss("ppo_clip")
def ppo_clip(logp: Tensor, inputs: LossInputs, cfg: AlgoConfig) -> tuple[Tensor, dict[str, float]]:
    """PPO-clip per token: max(-A r, -A clip(r, 1 - clip_eps, 1 + clip_eps_high)), r = exp(logp - old_logp), times
    `is_weight` (async samples; it scales this policy-gradient term only), plus kl_coef * KL(pi || ref) minus
    entropy_coef * entropy.

    Stats: pg_loss (masked mean), clip_frac (tokens whose clipped term is the active one), approx_kl (k3 estimate of
    KL(old || pi)), ratio_mean, kl (when ref_logp is given), entropy (when given).
    """
    _check_shapes("ppo_clip", logp, inputs, ("adv", "old_logp"))
    if cfg.kl_coef != 0 and inputs.ref_logp is None:
        raise ValueError(f"algo.kl_coef={cfg.kl_coef} needs ref_logp (reference-model log-probs), got None")
    if cfg.entropy_coef != 0 and inputs.entropy is None:
        raise ValueError(f"algo.entropy_coef={cfg.entropy_coef} needs the per-token entropy, got None")
    m = inputs.mask.bool()
    zero = torch.zeros_like(logp)
    # padding is zeroed before exp so garbage there can give neither inf nor NaN gradients
    log_ratio = torch.where(m, logp - inputs.old_logp.detach(), zero)  # [B, T]
    ratio = torch.exp(log_ratio)
    a = torch.where(m, inputs.adv.detach(), zero)
    pg_unclipped = -a * ratio
    pg_clipped = -a * ratio.clamp(1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps_high)
    pg = torch.maximum(pg_unclipped, pg_clipped)  # [B, T]
    if inputs.is_weight is not None:
        pg = pg * torch.where(m, inputs.is_weight.detach(), zero)
    per_token = pg
    stats = {
        "pg_loss": masked_mean(pg, m),
        "clip_frac": masked_mean((pg_clipped > pg_unclipped).to(logp.dtype), m),
        "approx_kl": masked_mean(ratio - 1 - log_ratio, m),
        "ratio_mean": masked_mean(ratio, m),
    }
    if inputs.ref_logp is not None:
        kl = kl_penalty(torch.where(m, logp, zero), torch.where(m, inputs.ref_logp, zero), cfg.kl_estimator)
        stats["kl"] = masked_mean(kl, m)
        if cfg.kl_coef != 0:
            per_token = per_token + cfg.kl_coef * kl
    if inputs.entropy is not None:
        stats["entropy"] = masked_mean(inputs.entropy, m)
        if cfg.entropy_coef != 0:
            per_token = per_token - cfg.entropy_coef * torch.where(m, inputs.entropy, zero)
    return per_token, stats


@register_loss("sft")
def sft(logp: Tensor, inputs: LossInputs, cfg: AlgoConfig) -> tuple[Tensor, dict[str, float]]:
    """Negative log-likelihood of the completion tokens (MRT-STaR); reads only the mask."""
    _check_shapes("sft", logp, inputs, ())
    nll = -torch.where(inputs.mask.bool(), logp, torch.zeros_like(logp))  # [B, T]
    return nll, {"nll": masked_mean(nll, inputs.mask)}
