"""Gradient checks of the learner's objective (mrt_ray/learner/objective.py).

For every term of every registered loss (policy gradient with clip and importance weight, KL k1/k3, entropy, SFT) and
every aggregation, the autograd gradient of the learner's path (on a tiny float64 causal LM) must match
  1. an independent reference: the loss re-derived in plain loops from a full log-softmax, differentiated by autograd;
  2. central finite differences of the learner's own loss value (catches any term whose value depends on the weights
     but whose gradient was cut, as the entropy bonus once was).
Splitting a step over unequal micro-batches and data-parallel ranks must give the full step's gradient exactly.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mrt_ray.algos.losses import StepNorm
from mrt_ray.config import AlgoConfig
from mrt_ray.learner.objective import microbatch_loss, policy_logprobs

V, TEMP = 13, 0.7


class TinyLM(torch.nn.Module):
    """A causal LM that computes in float64 throughout (HF's RMSNorm rounds through float32, which finite differences
    would see as noise): embedding, causal running mean, tanh mixing, output head."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(V, 6)
        self.mix = torch.nn.Linear(6, 6)
        self.head = torch.nn.Linear(6, V)

    def forward(self, input_ids, attention_mask, logits_to_keep: int = 0):
        h = self.emb(input_ids) * attention_mask[..., None]  # [B, T, 6]
        steps = torch.arange(1, input_ids.shape[1] + 1, dtype=h.dtype)[None, :, None]
        h = torch.tanh(self.mix(torch.cumsum(h, dim=1) / steps) + h)
        return SimpleNamespace(logits=self.head(h[:, -logits_to_keep:]))  # [B, T or logits_to_keep, V], as HF's


def tiny_model(seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM().double()


def make_batch(seed: int = 1):
    """4 sequences, prompts of 2-3 tokens, completions of 1-5 tokens, right-padded; per-token tensors [B, T-1]."""
    g = torch.Generator().manual_seed(seed)
    prompts, comps = [2, 3, 2, 3], [5, 1, 3, 4]
    T = max(p + c for p, c in zip(prompts, comps))
    B = len(prompts)
    ids = torch.zeros(B, T, dtype=torch.long)
    attn = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T - 1, dtype=torch.float64)
    for b, (p, c) in enumerate(zip(prompts, comps)):
        ids[b, :p + c] = torch.randint(1, V, (p + c,), generator=g)
        attn[b, :p + c] = 1
        mask[b, p - 1:p - 1 + c] = 1
    adv = torch.randn(B, T - 1, generator=g, dtype=torch.float64) * mask
    return {"ids": ids, "attn": attn, "mask": mask, "adv": adv, "g": g, "prompts": prompts}


def cfg(**kw) -> AlgoConfig:
    base = {"clip_eps": 0.2, "clip_eps_high": 0.28, "kl_coef": 0.0, "entropy_coef": 0.0, "loss_agg": "token_mean"}
    return AlgoConfig(**{**base, **kw})


def side_inputs(model, batch, off_policy: bool):
    """old_logp (the current policy's, or shifted by +-0.6 so that both clip bounds bind on some tokens), a reference
    policy's log-probs and an importance weight; all constants."""
    with torch.no_grad():
        logp0, _ = policy_logprobs(model, batch["ids"], batch["attn"], TEMP)
    g = batch["g"]
    shift = (torch.randint(0, 3, logp0.shape, generator=g) - 1).double() * 0.6 if off_policy else 0.0
    ref = logp0 + torch.randn(logp0.shape, generator=g, dtype=torch.float64) * 0.3
    w = torch.rand(logp0.shape, generator=g, dtype=torch.float64) + 0.5
    return logp0 + shift, ref, w


def learner_loss(model, batch, c: AlgoConfig, old, ref, w, rows=None, norm=None, world=1):
    """The learner's loss on the rows `rows` of the batch (a micro-batch), as Learner.train_step computes it: scored
    from the rows' shortest prompt (collate's `start`), through the model's `logits_to_keep`."""
    rows = list(range(batch["ids"].shape[0])) if rows is None else rows
    start = min(batch["prompts"][r] for r in rows) - 1
    sel = lambda t: t[rows][:, start:] if t.shape[1] < batch["ids"].shape[1] else t[rows]  # noqa: E731  [B, T-1] tail
    logp, logits = policy_logprobs(model, sel(batch["ids"]), sel(batch["attn"]), TEMP, start)
    norm = norm or StepNorm.local(batch["mask"], max_tokens=6)
    loss, _ = microbatch_loss(logp, logits, sel(batch["mask"]), sel(batch["adv"]), sel(old), c, norm, world,
                              ref_logp=sel(ref) if c.kl_coef else None, is_weight=sel(w) if w is not None else None)
    return loss


def reference_loss(model, batch, c: AlgoConfig, old, ref, w, max_tokens=6):
    """The same objective written out token by token from its definition (docs/algorithms.md)."""
    logits = model(input_ids=batch["ids"], attention_mask=batch["attn"]).logits[:, :-1] / TEMP
    logsm = torch.log_softmax(logits, dim=-1)
    mask = batch["mask"]
    n_tokens, n_seqs = int(mask.sum()), int((mask.sum(1) > 0).sum())
    total = torch.zeros((), dtype=torch.float64)
    for b in range(mask.shape[0]):
        n_b = int(mask[b].sum())
        for t in range(mask.shape[1]):
            if not mask[b, t]:
                continue
            lp = logsm[b, t, batch["ids"][b, t + 1]]
            if c.loss == "sft":
                term = -lp
            else:
                r = torch.exp(lp - old[b, t])
                a = batch["adv"][b, t]
                term = torch.maximum(-a * r, -a * torch.clamp(r, 1 - c.clip_eps, 1 + c.clip_eps_high))
                if w is not None:
                    term = term * w[b, t]
                if c.kl_coef:
                    d = ref[b, t] - lp
                    term = term + c.kl_coef * ((lp - ref[b, t]) if c.kl_estimator == "k1" else torch.exp(d) - d - 1)
                if c.entropy_coef:
                    p = torch.softmax(logits[b, t], dim=-1)
                    term = term - c.entropy_coef * -(p * torch.log(p)).sum()
            weight = {"token_mean": 1 / n_tokens, "seq_mean": 1 / (n_seqs * n_b),
                      "constant": 1 / (n_seqs * max_tokens)}[c.loss_agg]
            total = total + weight * term
    return total


def grads(model, loss_fn) -> torch.Tensor:
    model.zero_grad()
    loss = loss_fn()
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]), loss.detach()


def finite_difference(model, loss_fn, direction: torch.Tensor, eps: float = 1e-6) -> float:
    params = list(model.parameters())
    flat0 = [p.detach().clone() for p in params]

    def shifted(sign: float) -> float:
        offset = 0
        with torch.no_grad():
            for p, p0 in zip(params, flat0):
                n = p.numel()
                p.copy_(p0 + sign * eps * direction[offset:offset + n].view_as(p))
                offset += n
            value = float(loss_fn())
            for p, p0 in zip(params, flat0):
                p.copy_(p0)
        return value

    return (shifted(1.0) - shifted(-1.0)) / (2 * eps)


TERMS = {
    "pg_on_policy": (dict(), False, False),
    "pg_clipped": (dict(), True, False),
    "pg_is_weight": (dict(), True, True),
    "kl_k1": (dict(kl_coef=0.3, kl_estimator="k1"), True, False),
    "kl_k3": (dict(kl_coef=0.3, kl_estimator="k3"), True, False),
    "entropy": (dict(entropy_coef=0.5), False, False),
    "all_terms": (dict(kl_coef=0.2, kl_estimator="k3", entropy_coef=0.3), True, True),
    "sft": (dict(loss="sft"), False, False),
}


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean", "constant"])
@pytest.mark.parametrize("term", list(TERMS))
def test_learner_gradient_matches_reference_and_finite_differences(term, agg):
    kw, off_policy, weighted = TERMS[term]
    c = cfg(loss_agg=agg, **kw)
    model, batch = tiny_model(), make_batch()
    old, ref, w = side_inputs(model, batch, off_policy)
    w = w if weighted else None
    g_learner, v_learner = grads(model, lambda: learner_loss(model, batch, c, old, ref, w))
    g_ref, v_ref = grads(model, lambda: reference_loss(model, batch, c, old, ref, w))
    assert float(v_learner) == pytest.approx(float(v_ref), rel=1e-10, abs=1e-12)
    torch.testing.assert_close(g_learner, g_ref, rtol=1e-8, atol=1e-11)
    assert g_learner.abs().max() > 1e-4  # a real gradient, not two zeros agreeing
    for k in range(3):
        d = torch.randn(g_learner.shape, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        fd = finite_difference(model, lambda: learner_loss(model, batch, c, old, ref, w), d)
        assert float(g_learner @ d) == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_entropy_coefficient_changes_the_gradient():
    model, batch = tiny_model(), make_batch()
    old, ref, _ = side_inputs(model, batch, False)
    g0, _ = grads(model, lambda: learner_loss(model, batch, cfg(), old, ref, None))
    g1, _ = grads(model, lambda: learner_loss(model, batch, cfg(entropy_coef=0.5), old, ref, None))
    assert (g1 - g0).abs().max() > 1e-3


# rows per (rank, micro-batch): 4 sequences on 2 ranks of unequal size, one rank with an empty micro-batch
SPLITS = {
    "one_batch": [[[0, 1, 2, 3]]],
    "two_ranks_3_1": [[[0, 2], [3]], [[1], []]],
    "three_ranks": [[[0]], [[1, 2]], [[3]]],
    "micro_1_3": [[[1], [0, 2, 3]]],
}


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("agg", ["token_mean", "seq_mean", "constant"])
def test_split_steps_give_the_whole_steps_gradient(agg, split):
    """Each rank sums its micro-batches' gradients; data parallelism then AVERAGES over ranks (DeepSpeed). With the
    step's StepNorm that average equals the gradient of the aggregate over the whole batch, however it is split."""
    c = cfg(loss_agg=agg)
    model, batch = tiny_model(), make_batch()
    old, ref, w = side_inputs(model, batch, True)
    norm = StepNorm.local(batch["mask"], max_tokens=6)
    g_full, _ = grads(model, lambda: learner_loss(model, batch, c, old, ref, w, norm=norm))
    ranks = SPLITS[split]
    world = len(ranks)
    total = torch.zeros_like(g_full)
    for chunks in ranks:
        for rows in chunks:
            # an empty chunk runs on a dummy row with a zero mask
            data, picked = ({**batch, "mask": batch["mask"] * 0}, [0]) if not rows else (batch, rows)
            g, _ = grads(model, lambda data=data, picked=picked: learner_loss(model, data, c, old, ref, w, picked,
                                                                               norm, world))
            total += g
    torch.testing.assert_close(total / world, g_full, rtol=1e-9, atol=1e-12)


def test_scoring_from_a_start_position_is_the_full_scorings_tail():
    """policy_logprobs(start=k) on a real HF causal LM (through `logits_to_keep`) and on a model without that argument
    (sliced) gives the full scoring's positions k.. and their logits, values and gradients alike."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mrt_ray.learner.objective import _keeps_logits

    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(Qwen2Config(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32))
    batch = make_batch()

    class NoKeep(torch.nn.Module):  # the TinyLM without `logits_to_keep`: the sliced path
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids, attention_mask)

    assert _keeps_logits(hf) and _keeps_logits(SimpleNamespace(module=hf)) and not _keeps_logits(NoKeep(hf))
    for model in (hf.double(), tiny_model(), NoKeep(tiny_model())):
        full, full_logits = policy_logprobs(model, batch["ids"], batch["attn"], TEMP)  # [B, T-1]
        g_full = torch.autograd.grad(full[:, 1:].sum(), list(model.parameters()))
        tail, tail_logits = policy_logprobs(model, batch["ids"], batch["attn"], TEMP, start=1)  # [B, T-2]
        g_tail = torch.autograd.grad(tail.sum(), list(model.parameters()))
        assert tail.shape == (full.shape[0], full.shape[1] - 1) and tail_logits.shape[1] == full.shape[1] - 1
        torch.testing.assert_close(tail, full[:, 1:], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(tail_logits, full_logits[:, 1:], rtol=1e-10, atol=1e-12)
        for a, b in zip(g_tail, g_full):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_reference_logprobs_per_sequence_from_scored_micro_batches():
    """Learner.ref_logprobs (algo.kl_in_reward) scores micro-batches from their shortest prompt and hands back each
    sequence's completion log-probs: those of scoring the sequence alone from position 0."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mrt_ray.config import load_config
    from mrt_ray.learner.actor import Learner

    torch.manual_seed(0)
    ref = Qwen2ForCausalLM(Qwen2Config(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, num_key_value_heads=1)).eval()
    learner = Learner.__new__(Learner)  # the method's own state only: no DeepSpeed world, no thread limit
    learner.ref, learner.tok, learner.device = ref, SimpleNamespace(pad_token_id=0), torch.device("cpu")
    learner.cfg = load_config(None, ["rollout.temperature=0.7"])
    seqs, plens = [[1, 2, 3, 4, 5, 6], [3, 4, 5], [7, 8, 9, 10, 11], [2, 3]], [3, 2, 4, 1]
    shard = {"input_ids": seqs, "prompt_lens": plens, "advantages": [[0.0] * (len(s) - p) for s, p in zip(seqs, plens)],
             "rollout_logprobs": [[0.0] * (len(s) - p) for s, p in zip(seqs, plens)]}
    got = learner.ref_logprobs(shard, n_micro=2)
    for s, p, lps in zip(seqs, plens, got):
        ids = torch.tensor([s])
        with torch.no_grad():
            alone = policy_logprobs(ref, ids, torch.ones_like(ids), 0.7)[0][0, p - 1:]
        assert lps == pytest.approx(alone.tolist(), rel=1e-5, abs=1e-6)
