"""Advantage estimators and losses against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from mrt_ray.algos import (
    ADVANTAGES,
    LOSSES,
    LossInputs,
    StepNorm,
    aggregate,
    entropy_from_logits,
    gather_logprobs,
    kl_penalty,
    mrt_bonus_advantages,
    register_advantage,
    termination_baseline_advantages,
    token_advantages,
    whiten,
)
from mrt_ray.algos.advantages import kl_reward_to_go
from mrt_ray.algos.assign import assign_advantages
from mrt_ray.config import AlgoConfig

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])


def close(actual: torch.Tensor, expected: list | float, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# --------------------------------------------------------------------------- advantages


def test_grpo_uses_sample_std():
    # row 0: mean .5, sample std sqrt(4 * .25 / 3); row 2: mean .25, sample std sqrt(.75 / 3) = .5
    s0 = math.sqrt(1 / 3) + 1e-6
    expected = [[0.5 / s0, -0.5 / s0, -0.5 / s0, 0.5 / s0], [0, 0, 0, 0], [-0.25 / 0.500001, -0.25 / 0.500001,
                                                                            -0.25 / 0.500001, 0.75 / 0.500001]]
    close(ADVANTAGES["grpo"](REWARDS), expected)


def test_rloo_leave_one_out():
    expected = [[2 / 3, -2 / 3, -2 / 3, 2 / 3], [0, 0, 0, 0], [-1 / 3, -1 / 3, -1 / 3, 1.0]]
    close(ADVANTAGES["rloo"](REWARDS), expected)


def test_drgrpo_no_std():
    close(ADVANTAGES["drgrpo"](REWARDS), [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0], [-0.25, -0.25, -0.25, 0.75]])


@pytest.mark.parametrize("name", ["grpo", "rloo", "drgrpo"])
def test_equal_rewards_give_zero(name):
    out = ADVANTAGES[name](torch.full((2, 5), 0.7))
    assert torch.equal(out, torch.zeros(2, 5))


@pytest.mark.parametrize("name", ["grpo", "rloo", "drgrpo"])
def test_bad_reward_shapes(name):
    with pytest.raises(ValueError, match="at least 2 samples"):
        ADVANTAGES[name](torch.ones(3, 1))
    with pytest.raises(ValueError, match=r"\[G prompts, n samples\]"):
        ADVANTAGES[name](torch.ones(6))


def test_register_twice_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_advantage("grpo")(lambda r: r)


def test_whiten_without_mask():
    # mean 2.5, population variance 1.25
    sd = math.sqrt(1.25 + 1e-8)
    close(whiten(torch.tensor([1.0, 2.0, 3.0, 4.0])), [-1.5 / sd, -0.5 / sd, 0.5 / sd, 1.5 / sd])


def test_whiten_with_mask_ignores_padding():
    adv = torch.tensor([[1.0, 3.0, 100.0], [5.0, -7.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    sd = math.sqrt(8 / 3 + 1e-8)  # entries 1, 3, 5: mean 3, population variance 8/3
    close(whiten(adv, mask), [[-2 / sd, 0.0, 0.0], [2 / sd, 0.0, 0.0]])
    with pytest.raises(ValueError, match="no entries"):
        whiten(adv, torch.zeros(2, 3))


def test_token_advantages_broadcast():
    out = token_advantages(torch.tensor([0.5, -2.0]), torch.tensor([[1, 1, 0], [1, 1, 1]]))
    close(out, [[0.5, 0.5, 0.0], [-2.0, -2.0, -2.0]])


def test_mrt_bonus_tokens_get_their_episode_progress():
    seq_adv = torch.tensor([0.5, -1.0])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    progress = [[0.2, -0.1], [0.3]]
    spans = [[(0, 2), (2, 4)], [(1, 3)]]
    out = mrt_bonus_advantages(token_advantages(seq_adv, mask), progress, spans, mask, coef=2.0)
    # row 0: episode 0 -> .5 + 2*.2, episode 1 -> .5 - 2*.1, token 4 (answer) -> .5, padding -> 0
    close(out, [[0.9, 0.9, 0.3, 0.3, 0.5, 0.0], [-1.0, -0.4, -0.4, -1.0, 0.0, 0.0]])


def test_whiten_over_action_tokens_matches_the_reference_vector():
    """Rewards (1, 0), lengths (1, 3), RLOO, whitened over the batch's action tokens (the Arora & Zanette recipe via
    OpenRLHF): (1.732 | -0.577 x 3); whitening per sequence would give (1 | -1 x 3)."""
    adv = ADVANTAGES["rloo"](torch.tensor([[1.0, 0.0]], dtype=torch.float64)).reshape(-1)  # (1, -1)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    out = whiten(token_advantages(adv, mask), mask)
    close(out, [[3 ** 0.5, 0.0, 0.0], [-(3 ** 0.5) / 3] * 3], atol=1e-6)
    close(whiten(adv), [1.0, -1.0], atol=1e-6)


def test_kl_reward_to_go_is_a_suffix_sum_of_k1():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, 9.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.5, -2.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # k1 = logp - ref: row 0 (0.5, -1, 0) -> suffix sums (-0.5, -1, 0); row 1 (-0.5, 1, pad) -> (0.5, 1, 0)
    close(kl_reward_to_go(logp, ref, mask, beta=0.1), [[0.05, 0.1, 0.0], [-0.05, -0.1, 0.0]])


def test_assign_advantages_length_penalty_recipe():
    """RLOO + k1 KL inside the reward + token whitening, end to end on trajectories."""
    from mrt_ray.config import load_config

    cfg = load_config(None, ["algo=length_penalty"])
    assert cfg.algo.whiten and cfg.algo.loss_agg == "seq_mean" and cfg.algo.kl_in_reward == 0.001
    trajs = _fake_group([1.0, 0.0], [1, 3])
    for t in trajs:
        t.ref_logprobs = [lp - 0.5 for lp in t.completion.logprobs]  # k1 = 0.5 per token
    assign_advantages([trajs], cfg)
    adv = torch.tensor([1.0, -1.0]) - 0.001 * torch.tensor([0.5, 1.5])  # first tokens' returns (suffix sums)
    raw = [[adv[0].item()], [-1 - 0.001 * 1.5, -1 - 0.001 * 1.0, -1 - 0.001 * 0.5]]
    flat = torch.tensor([x for r in raw for x in r], dtype=torch.float64)
    z = (flat - flat.mean()) / flat.var(unbiased=False).sqrt()
    got = [a for t in trajs for a in t.advantages]
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), z, atol=1e-6, rtol=0)


def test_kl_in_reward_needs_reference_logprobs():
    from mrt_ray.config import load_config

    with pytest.raises(ValueError, match="reference log-probs"):
        assign_advantages([_fake_group([1.0, 0.0], [1, 3])], load_config(None, ["algo=length_penalty"]))


def _fake_group(rewards, lengths):
    from mrt_ray.rollout.types import Completion
    from mrt_ray.tasks import Problem
    from mrt_ray.trajectory import Trajectory

    out = []
    for r, n in zip(rewards, lengths):
        t = Trajectory(Problem("p", "q", "1"), [0], Completion(list(range(n)), [-1.0] * n, "", True), 0)
        t.reward = r
        out.append(t)
    return out


def test_mrt_bonus_rejects_bad_spans():
    mask = torch.tensor([[1, 1, 1, 0]])
    seq_adv = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="do not match the mask"):
        mrt_bonus_advantages(torch.zeros(1), [[0.1]], [[(0, 2)]], mask, 1.0)
    with pytest.raises(ValueError, match="row 0 has 2 progress values but 1 episode spans"):
        mrt_bonus_advantages(seq_adv, [[0.1, 0.2]], [[(0, 2)]], mask, 1.0)
    with pytest.raises(ValueError, match="overlaps"):
        mrt_bonus_advantages(seq_adv, [[0.1, 0.2]], [[(0, 2), (1, 3)]], mask, 1.0)
    with pytest.raises(ValueError, match="outside the mask"):
        mrt_bonus_advantages(seq_adv, [[0.1]], [[(2, 4)]], mask, 1.0)
    with pytest.raises(ValueError, match="not within"):
        mrt_bonus_advantages(seq_adv, [[0.1]], [[(3, 9)]], mask, 1.0)
    with pytest.raises(ValueError, match="batch has 1 rows"):
        mrt_bonus_advantages(seq_adv, [[], []], [[]], mask, 1.0)


def test_termination_baseline():
    cont = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    term = torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    close(termination_baseline_advantages(cont, term), [[0.5, -0.5], [1.0, 1.0]])
    with pytest.raises(ValueError, match="same P"):
        termination_baseline_advantages(cont, term[:1])


# --------------------------------------------------------------------------- ppo_clip
# ratios [[1.5, .5, 1.1], [.7, 1.3, pad]], advantages [[1, -1, 2], [2, .5, pad]], clip range [.8, 1.28]:
# (0,0) -A*r=-1.5 vs -A*1.28=-1.28 -> -1.28 clipped   (0,1) .5 vs .8 -> .8 clipped   (0,2) -2.2 unclipped
# (1,0) -1.4 vs -1.6 -> -1.4 unclipped (ratio outside the range, but the pessimistic term is the unclipped one)
# (1,1) -.65 vs -.64 -> -.64 clipped (only with clip-higher: symmetric .2 would clip at 1.2)
PER_TOKEN = [[-1.28, 0.8, -2.2], [-1.4, -0.64]]
LOG_RATIOS = torch.log(torch.tensor([[1.5, 0.5, 1.1], [0.7, 1.3, 1.0]])) + torch.tensor([[0, 0, 0], [0, 0, 1000.0]])
ADV = torch.tensor([[1.0, -1.0, 2.0], [2.0, 0.5, 5.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
OLD = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.7, -1.0]])


def ppo_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    logp = (OLD + LOG_RATIOS).requires_grad_(True)  # padding: log-ratio 1000 (inf ratio)
    return logp, OLD.clone()


def cfg(**kw) -> AlgoConfig:
    return AlgoConfig(**{"clip_eps": 0.2, "clip_eps_high": 0.28, "kl_coef": 0.0, "entropy_coef": 0.0, **kw})


def run_loss(name, logp, old, c, agg_const=0, **inputs):
    """The registered loss aggregated over this one batch (what the learner does for a one-micro-batch step)."""
    inp = LossInputs(mask=inputs.pop("mask", MASK), adv=inputs.pop("adv", ADV), old_logp=old, **inputs)
    per_token, stats = LOSSES[name](logp, inp, c)
    return aggregate(per_token, inp.mask, c.loss_agg, StepNorm.local(inp.mask, agg_const)), stats


@pytest.mark.parametrize(
    "agg, const, expected",
    [
        ("token_mean", 0, -4.72 / 5),
        ("seq_mean", 0, ((-1.28 + 0.8 - 2.2) / 3 + (-1.4 - 0.64) / 2) / 2),
        ("constant", 4, -4.72 / (2 * 4)),
    ],
)
def test_ppo_clip_aggregation(agg, const, expected):
    logp, old = ppo_inputs()
    loss, stats = run_loss("ppo_clip", logp, old, cfg(loss_agg=agg), const)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert stats["pg_loss"] == pytest.approx(-4.72 / 5, abs=1e-5)  # stats are masked token means
    assert stats["clip_frac"] == pytest.approx(3 / 5)
    assert stats["ratio_mean"] == pytest.approx((1.5 + 0.5 + 1.1 + 0.7 + 1.3) / 5, abs=1e-5)
    k3_old = sum(r - 1 - math.log(r) for r in (1.5, 0.5, 1.1, 0.7, 1.3)) / 5
    assert stats["approx_kl"] == pytest.approx(k3_old, abs=1e-5)
    assert "kl" not in stats and "entropy" not in stats


def test_ppo_clip_gradient_only_through_logp():
    logp, old = ppo_inputs()
    old.requires_grad_(True)
    adv = ADV.clone().requires_grad_(True)
    ref = (OLD - 0.1).requires_grad_(True)
    w = torch.full((2, 3), 0.5, requires_grad=True)
    loss, _ = run_loss("ppo_clip", logp, old, cfg(kl_coef=0.1, kl_estimator="k1"), adv=adv, ref_logp=ref,
                       is_weight=w)
    loss.backward()
    assert old.grad is None and adv.grad is None and ref.grad is None and w.grad is None
    # token_mean over 5 tokens: d(-A r w)/dlogp = -A r w / 5 on unclipped tokens, 0 on clipped ones; k1 adds .1 / 5
    expected = [[0.02, 0.02, -2.2 * 0.5 / 5 + 0.02], [-1.4 * 0.5 / 5 + 0.02, 0.02, 0.0]]
    close(logp.grad, expected)


def test_ppo_clip_is_weight_kl_and_entropy_terms():
    logp, old = ppo_inputs()
    ref = old + torch.tensor([[0.5, 0.0, -1.0], [0.0, 0.0, 0.0]])  # ref - logp per token
    ent = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 60.0]], requires_grad=True)
    w = torch.tensor([[2.0, 1.0, 1.0], [1.0, 0.0, 7.0]])
    c = cfg(kl_coef=0.1, kl_estimator="k3", entropy_coef=0.01)
    loss, stats = run_loss("ppo_clip", logp, old, c, ref_logp=ref, is_weight=w, entropy=ent)
    d = (ref - logp).detach()
    k3 = torch.exp(d) - d - 1
    kl_sum = float(k3[0].sum() + k3[1, :2].sum())
    pg = (-1.28 * 2 + 0.8 - 2.2 - 1.4 + 0.0) / 5
    assert loss.item() == pytest.approx(pg + 0.1 * kl_sum / 5 - 0.01 * 15 / 5, abs=1e-5)
    assert stats["kl"] == pytest.approx(kl_sum / 5, abs=1e-5)
    assert stats["entropy"] == pytest.approx(3.0)
    loss.backward()  # the entropy bonus carries gradient: -coef / tokens on every real token, 0 on padding
    close(ent.grad, [[-0.002, -0.002, -0.002], [-0.002, -0.002, 0.0]])


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    close(kl_penalty(logp, ref, "k1"), [0.5, -1.0])
    close(kl_penalty(logp, ref, "k3"), [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1 - 1])
    with pytest.raises(ValueError, match="algo.kl_estimator"):
        kl_penalty(logp, ref, "k2")


def test_ppo_clip_bad_config():
    logp, old = ppo_inputs()
    with pytest.raises(ValueError, match="algo.loss_agg='sum'"):
        run_loss("ppo_clip", logp, old, cfg(loss_agg="sum"))
    with pytest.raises(ValueError, match="positive max_tokens"):
        run_loss("ppo_clip", logp, old, cfg(loss_agg="constant"))
    with pytest.raises(ValueError, match="needs ref_logp"):
        run_loss("ppo_clip", logp, old, cfg(kl_coef=0.1))
    with pytest.raises(ValueError, match="needs the per-token entropy"):
        run_loss("ppo_clip", logp, old, cfg(entropy_coef=0.1))
    with pytest.raises(ValueError, match="adv has shape"):
        run_loss("ppo_clip", logp, old, cfg(), adv=ADV[:, :2])
    with pytest.raises(ValueError, match="needs inputs.old_logp"):
        LOSSES["ppo_clip"](logp, LossInputs(mask=MASK, adv=ADV), cfg())


def test_sft_is_nll_aggregated_like_any_loss():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -99.0]], requires_grad=True)
    loss, stats = run_loss("sft", logp, None, cfg(loss_agg="token_mean"), adv=None)
    assert loss.item() == pytest.approx(15 / 5)
    assert stats["nll"] == pytest.approx(3.0)
    loss.backward()
    close(logp.grad, [[-0.2, -0.2, -0.2], [-0.2, -0.2, 0.0]])


# --------------------------------------------------------------------------- log-prob helpers


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gather_logprobs_matches_naive(dtype):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 11, generator=g) * 4).to(dtype)
    ids = torch.randint(0, 11, (3, 5), generator=g)
    naive = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[..., None]).squeeze(-1)
    out = gather_logprobs(logits, ids)
    assert out.dtype == torch.float32 and out.shape == (3, 5)
    torch.testing.assert_close(out, naive, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_entropy_matches_naive(dtype):
    logits = (torch.randn(2, 4, 7, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    p = torch.softmax(logits.float(), dim=-1)
    naive = -(p * torch.log(p)).sum(-1)
    torch.testing.assert_close(entropy_from_logits(logits), naive, atol=1e-5, rtol=0)
    # uniform logits: entropy log V
    close(entropy_from_logits(torch.zeros(1, 2, 7)), [[math.log(7), math.log(7)]])


def test_seq_mean_skips_sequences_without_tokens():
    values = torch.tensor([[1.0, 3.0], [5.0, 7.0], [9.0, 9.0]])
    mask = torch.tensor([[1, 1], [0, 0], [1, 0]])
    assert aggregate(values, mask, "seq_mean").item() == pytest.approx((2.0 + 9.0) / 2)
