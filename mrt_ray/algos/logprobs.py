"""Log-probabilities and entropies from logits, without a full-vocabulary float32 copy for half-precision logits."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


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
    """Entropy of softmax(logits) per position: `[B, T, V]` -> `[B, T]` (float32 for half-precision logits).
    Differentiable: the entropy bonus takes its gradient through this."""
    if logits.dim() != 3:
        raise ValueError(f"entropy_from_logits: expected logits [B, T, V], got {tuple(logits.shape)}")
    return _rowwise(_entropy, logits)
