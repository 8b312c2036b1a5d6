"""The learner's objective for one micro-batch: score it under the current policy and build the registered loss's
share of the step's scalar loss. Pure torch (no DeepSpeed, no distributed state), so the gradient checks in
tests/test_gradients.py run on exactly this code."""
from __future__ import annotations

import inspect

import torch
from torch import Tensor

from mrt_ray.algos.logprobs import entropy_from_logits, gather_logprobs
from mrt_ray.algos.losses import LOSSES, LossInputs, StepNorm, aggregate, masked_mean
from mrt_ray.config import AlgoConfig


def _keeps_logits(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (HF causal LMs do); a DeepSpeed engine is asked of its
    module."""
    return "logits_to_keep" in inspect.signature(getattr(model, "module", model).forward).parameters


def policy_logprobs(model, ids: Tensor, attn: Tensor, temperature: float, start: int = 0) -> tuple[Tensor, Tensor]:
    """Score `ids: [B, T]` from position `start` on: (log pi(ids[:, s+1] | ids[:, :s+1]) for s = start .. T-2,
    `[B, T-1-start]`; the logits `[B, T-1-start, V]`), the logits divided by the sampling temperature so the learner
    scores the distribution the sampler drew from.

    The learner passes its micro-batch's shortest prompt length - 1 as `start`, so the output head and everything
    vocabulary-sized run on completion positions only (TRL does the same with its left-padded prompts); a model whose
    forward takes `logits_to_keep` computes no logits before `start`, any other is sliced after the fact."""
    if start and _keeps_logits(model):
        logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=ids.shape[1] - start).logits[:, :-1]
    else:
        logits = model(input_ids=ids, attention_mask=attn).logits[:, start:-1]
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    return gather_logprobs(logits, ids[:, start + 1:]), logits


def microbatch_loss(logp: Tensor, logits: Tensor, mask: Tensor, adv: Tensor, old_logp: Tensor, cfg: AlgoConfig,
                    norm: StepNorm, world: int, ref_logp: Tensor | None = None,
                    is_weight: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """This micro-batch's loss, scaled so that the data-parallel gradient AVERAGE over `world` ranks of the summed
    micro-batch gradients is the gradient of the step's aggregate (`aggregate` with the step's `norm`).

    The entropy is computed with its gradient, and only when `algo.entropy_coef` > 0 (a vocabulary-sized pass).
    Stats: the loss's own, plus `neg_logp`, the mean negative log-prob of the sampled tokens (an estimate of the
    policy's entropy on its own samples, free to compute)."""
    entropy = entropy_from_logits(logits) if cfg.entropy_coef > 0 else None  # [B, T-1]
    inputs = LossInputs(mask=mask, adv=adv, old_logp=old_logp, ref_logp=ref_logp, is_weight=is_weight,
                        entropy=entropy)
    per_token, stats = LOSSES[cfg.loss](logp, inputs, cfg)
    loss = aggregate(per_token, mask, cfg.loss_agg, norm) * world
    stats["neg_logp"] = masked_mean(-logp, mask)
    return loss, stats


def ref_logprobs(ref_model, ids: Tensor, attn: Tensor, temperature: float, start: int = 0) -> Tensor | None:
    """The frozen reference policy's log-probs from position `start` (no gradient), or None without a reference."""
    if ref_model is None:
        return None
    with torch.no_grad():
        return policy_logprobs(ref_model, ids, attn, temperature, start)[0]
