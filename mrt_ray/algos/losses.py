"""Policy losses (PPO-clip with clip-higher, KL to a reference, entropy bonus; SFT NLL) and log-prob helpers.

Every registered loss has the `LossFn` signature and returns `(scalar loss, stats)`. All per-token tensors are
`[B, T]` over the completion tokens; `mask` is 1 on real completion tokens and 0 on padding. Only `logp` (and
`entropy`, a function of the current policy too) carry gradient: `old_logp`, `adv`, `ref_logp` and `is_weight` are
detached.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

import torch
from torch import Tensor

from mrt_ray.registry import Registry

if TYPE_CHECKING:
    from mrt_ray.config import AlgoConfig

AGG_MODES = ("token_mean", "seq_mean", "constant")
KL_ESTIMATORS = ("k1", "k3")


class LossFn(Protocol):
    def __call__(
        self,
        logp: Tensor,
        old_logp: Tensor,
        adv: Tensor,
        mask: Tensor,
        cfg: AlgoConfig,
        ref_logp: Tensor | None = None,
        is_weight: Tensor | None = None,
        entropy: Tensor | None = None,
        agg_constant: int | None = None,
    ) -> tuple[Tensor, dict[str, float]]: ...


LOSSES: Registry[LossFn] = Registry("loss", "algo.loss")
register_loss = LOSSES.register


def aggregate(values: Tensor, mask: Tensor, mode: str, agg_constant: int | None = None) -> Tensor:
    """Reduce per-token `values: [B, T]` to a scalar over the tokens where `mask` is 1.

    token_mean: sum / number of tokens in the batch; seq_mean: mean over each sequence's tokens, then over the
    sequences that have tokens; constant: sum / (B * agg_constant) (Dr. GRPO, agg_constant = max_new_tokens).
    """
    m = mask.bool()
    vals = torch.where(m, values, torch.zeros_like(values))
    if mode == "token_mean":
        return vals.sum() / m.sum().clamp(min=1)
    if mode == "seq_mean":
        per_seq = m.sum(dim=1)  # [B]
        has = per_seq > 0
        seq_means = vals.sum(dim=1)[has] / per_seq[has]  # [B'] sequences with at least one token
        return seq_means.mean() if seq_means.numel() else vals.sum()
    if mode == "constant":
        if agg_constant is None or agg_constant <= 0:
            raise ValueError(
                f"algo.loss_agg=constant needs a positive agg_constant (max_new_tokens), got {agg_constant}"
            )
        return vals.sum() / (values.shape[0] * agg_constant)
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


def _masked_mean(values: Tensor, m: Tensor) -> float:
    return float(torch.where(m, values, torch.zeros_like(values)).sum() / m.sum().clamp(min=1))


def _check_shapes(where: str, logp: Tensor, **others: Tensor | None) -> None:
    if logp.dim() != 2:
        raise ValueError(f"{where}: logp must be [B, T], got shape {tuple(logp.shape)}")
    for name, t in others.items():
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{where}: {name} has shape {tuple(t.shape)}, expected {tuple(logp.shape)} like logp")


@register_loss("ppo_clip")
def ppo_clip(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    cfg: AlgoConfig,
    ref_logp: Tensor | None = None,
    is_weight: Tensor | None = None,
    entropy: Tensor | None = None,
    agg_constant: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO-clip: per token max(-A r, -A clip(r, 1 - clip_eps, 1 + clip_eps_high)), r = exp(logp - old_logp),
    times `is_weight` (truncated IS weight of async samples; it scales this policy-gradient term only), plus
    kl_coef * KL(pi || ref) minus entropy_coef * entropy, aggregated per `cfg.loss_agg`.

    Stats: pg_loss, clip_frac (tokens whose clipped term is the active one), approx_kl (k3 estimate of KL(old || pi)),
    ratio_mean, kl (when ref_logp is given), entropy (when given); means over masked tokens.
    """
    _check_shapes("ppo_clip", logp, old_logp=old_logp, adv=adv, mask=mask, ref_logp=ref_logp,
                  is_weight=is_weight, entropy=entropy)
    if cfg.kl_coef != 0 and ref_logp is None:
        raise ValueError(f"algo.kl_coef={cfg.kl_coef} needs ref_logp (reference-model log-probs), got None")
    if cfg.entropy_coef != 0 and entropy is None:
        raise ValueError(f"algo.entropy_coef={cfg.entropy_coef} needs the per-token entropy, got None")
    m = mask.bool()
    zero = torch.zeros_like(logp)
    # padding is zeroed before exp so garbage there can give neither inf nor NaN gradients
    log_ratio = torch.where(m, logp - old_logp.detach(), zero)  # [B, T]
    ratio = torch.exp(log_ratio)
    a = torch.where(m, adv.detach(), zero)
    pg_unclipped = -a * ratio
    pg_clipped = -a * ratio.clamp(1.0 - cfg.clip_eps, 1.0 + cfg.clip_eps_high)
    pg = torch.maximum(pg_unclipped, pg_clipped)  # [B, T]
    if is_weight is not None:
        pg = pg * torch.where(m, is_weight.detach(), zero)
    per_token = pg
    with torch.no_grad():
        stats = {
            "pg_loss": float(aggregate(pg, m, cfg.loss_agg, agg_constant)),
            "clip_frac": _masked_mean((pg_clipped > pg_unclipped).to(logp.dtype), m),
            "approx_kl": _masked_mean(ratio - 1 - log_ratio, m),
            "ratio_mean": _masked_mean(ratio, m),
        }
    if ref_logp is not None:
        kl = kl_penalty(torch.where(m, logp, zero), torch.where(m, ref_logp, zero), cfg.kl_estimator)  # [B, T]
        stats["kl"] = _masked_mean(kl.detach(), m)
        if cfg.kl_coef != 0:
            per_token = per_token + cfg.kl_coef * kl
    if entropy is not None:
        stats["entropy"] = _masked_mean(entropy.detach(), m)
        if cfg.entropy_coef != 0:
            per_token = per_token - cfg.entropy_coef * entropy
    return aggregate(per_token, m, cfg.loss_agg, agg_constant), stats


@register_loss("sft")
def sft(
    logp: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    mask: Tensor,
    cfg: AlgoConfig,
    ref_logp: Tensor | None = None,
    is_weight: Tensor | None = None,
    entropy: Tensor | None = None,
    agg_constant: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Negative log-likelihood of the completion tokens, token_mean (MRT-STaR). Only logp and mask are used: the
    other arguments exist for the shared signature (advantages, old/ref log-probs and weights are ignored)."""
    _check_shapes("sft", logp, mask=mask)
    m = mask.bool()
    nll = -torch.where(m, logp, torch.zeros_like(logp))  # [B, T]
    loss = aggregate(nll, m, "token_mean")
    stats = {"nll": float(loss.detach())}
    if entropy is not None:
        stats["entropy"] = _masked_mean(entropy.detach(), m)
    return loss, stats


def _rowwise(fn: Callable[..., Tensor], logits: Tensor, *others: Tensor) -> Tensor:
    """fn(logits, *others) in float32 or float64. Lower-precision logits are upcast one row [T, V] at a time (a full
    float32 copy of [B, T, V] is never built at once; under autograd each row's copy is kept for backward)."""
    if logits.dtype in (torch.float32, torch.float64):
        return fn(logits, *others)
    return torch.stack([fn(row.float(), *(o[i] for o in others)) for i, row in enumerate(logits)])


def _gather_logprobs(logits: Tensor, ids: Tensor) -> Tensor:
    # log_softmax(logits)[ids] = logits[ids] - logsumexp(logits): no [.., V] log-softmax tensor is materialised
    return logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _entropy(logits: Tensor) -> Tensor:
    logz = torch.logsumexp(logits, dim=-1, keepdim=True)  # [.., 1]
    probs = torch.exp(logits - logz)  # [.., V] the one vocabulary-sized temporary
    return logz.squeeze(-1) - (probs * logits).sum(dim=-1)


def gather_logprobs(logits: Tensor, ids: Tensor) -> Tensor:
    """log pi(ids[b, t]) from `logits: [B, T, V]` and `ids: [B, T]` -> `[B, T]` (float32 for half-precision logits)."""
    if logits.dim() != 3 or ids.shape != logits.shape[:2]:
        raise ValueError(f"gather_logprobs: expected logits [B, T, V] and ids [B, T], got "
                         f"{tuple(logits.shape)} and {tuple(ids.shape)}")
    return _rowwise(_gather_logprobs, logits, ids.long())


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) per position: `[B, T, V]` -> `[B, T]` (float32 for half-precision logits)."""
    if logits.dim() != 3:
        raise ValueError(f"entropy_from_logits: expected logits [B, T, V], got {tuple(logits.shape)}")
    return _rowwise(_entropy, logits)
