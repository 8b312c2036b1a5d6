"""MRT-RL from cut prefixes: cut traces after a random number of episodes and sample from each prefix on-policy.

termination_baseline (the paper's description on GRPO): continuations only, each with the advantage
  R(continuation) - R(termination), R(termination) = J(c_j), the accuracy of answering right at the cut (measured by
  the estimator pool for every episode boundary).
online (the authors' on-policy form, as their README and model card describe it): from each cut prefix, sample
  `algo.mrt.continuations` continuing rollouts AND as many terminating ones (the meta-prover's forced answer, at the
  rollout temperature), normalise the rewards of all of them together (GRPO: mean and std of that group) and train
  on both; progress_coef scales these advantages. Continuing is rewarded exactly when it beats stopping now.
"""
from __future__ import annotations

import random

import torch

from mrt_ray.algos.advantages import ADVANTAGES, termination_baseline_advantages
from mrt_ray.config import Config
from mrt_ray.rollout.pool import request_seed
from mrt_ray.rollout.types import Request, SamplingSpec
from mrt_ray.trajectory import Trajectory


def pick_cuts(groups: list[list[Trajectory]], cfg: Config, step: int) -> list[tuple[Trajectory, int, int]]:
    """(trajectory, episode index j, cut in completion tokens): `algo.mrt.cut_prefixes` traces with episodes per
    group, each cut after a random episode; a pure function of (seed, step, group), so resumes are exact."""
    mc, rc = cfg.algo.mrt, cfg.rollout
    picks = []
    for gi, g in enumerate(groups):
        rng = random.Random(f"{cfg.seed}/cut/{step}/{gi}")
        candidates = [t for t in g if t.episode_cuts]
        for t in rng.sample(candidates, min(mc.cut_prefixes, len(candidates))):
            j = rng.randrange(len(t.episode_cuts))
            if t.episode_cuts[j] < rc.max_new_tokens:
                picks.append((t, j, t.episode_cuts[j]))
    return picks


def termination_baseline_batch(groups: list[list[Trajectory]], cfg: Config, generate, decode, grader,
                               step: int) -> tuple[list[Trajectory], dict]:
    """The continuations to add to the batch and their stats. `generate(requests)` samples on the rollout pool."""
    mc, rc = cfg.algo.mrt, cfg.rollout
    picks = pick_cuts(groups, cfg, step)
    if not picks:
        return [], {"mrt_continuations": 0}
    reqs = [Request(t.prompt_ids + t.completion.ids[:cut],
                    SamplingSpec(n=mc.continuations, temperature=rc.temperature, top_p=rc.top_p,
                                 max_tokens=rc.max_new_tokens - cut, seed=request_seed(cfg.seed, "cont", step, i)))
            for i, (t, j, cut) in enumerate(picks)]
    outs, _ = generate(reqs)
    texts = [(decode(t.completion.ids[:cut]) + c.text, c, t, cut) for (t, j, cut), comps in zip(picks, outs)
             for c in comps]
    verdicts = iter(grader.many([x for x, *_ in texts], [t.problem.answer for _, _, t, _ in texts]))
    extra, cont_r, term_r = [], [], []
    for (t, j, cut), comps in zip(picks, outs):
        conts = []
        for c in comps:
            ct = Trajectory(problem=t.problem, prompt_ids=t.prompt_ids + t.completion.ids[:cut], completion=c,
                            group=t.group)
            ct.correct = bool(c.finished and next(verdicts))
            ct.reward = float(ct.correct)
            conts.append(ct)
        term = t.j_values[j + 1]  # J(c_j): j_values starts with J(c_-1)
        adv = termination_baseline_advantages(torch.tensor([[c.reward for c in conts]]), torch.tensor([[term]]))[0]
        for ct, a in zip(conts, adv.tolist()):
            ct.advantages = [a] * ct.length
        extra += conts
        cont_r += [c.reward for c in conts]
        term_r.append(term)
    return extra, {"mrt_continuations": len(extra), "mrt_continuation_reward": sum(cont_r) / len(cont_r),
                   "mrt_termination_reward": sum(term_r) / len(term_r)}


def online_batch(groups: list[list[Trajectory]], cfg: Config, generate, decode, grader, step: int,
                 force_ids: list[int], force_text: str) -> tuple[list[Trajectory], dict]:
    """Continuing and terminating rollouts from cut prefixes, advantages normalised over each prefix's rollouts."""
    mc, rc = cfg.algo.mrt, cfg.rollout
    picks = pick_cuts(groups, cfg, step)
    if not picks:
        return [], {"mrt_continuations": 0}
    reqs = []
    for i, (t, _, cut) in enumerate(picks):
        prefix = t.prompt_ids + t.completion.ids[:cut]
        reqs.append(Request(prefix, SamplingSpec(n=mc.continuations, temperature=rc.temperature, top_p=rc.top_p,
                                                 max_tokens=rc.max_new_tokens - cut,
                                                 seed=request_seed(cfg.seed, "cont", step, i))))
        reqs.append(Request(prefix + force_ids, SamplingSpec(
            n=mc.continuations, temperature=rc.temperature, top_p=rc.top_p, max_tokens=cfg.progress.max_answer_tokens,
            seed=request_seed(cfg.seed, "term", step, i))))
    outs, _ = generate(reqs)
    rollouts = []  # (pick index, trajectory, text graded)
    for i, (t, _, cut) in enumerate(picks):
        prefix_text = decode(t.completion.ids[:cut])
        for c in outs[2 * i]:  # continuing: the model thinks on from the cut
            rollouts.append((i, Trajectory(t.problem, t.prompt_ids + t.completion.ids[:cut], c, t.group),
                             prefix_text + c.text))
        for c in outs[2 * i + 1]:  # terminating: the forced answer right at the cut
            rollouts.append((i, Trajectory(t.problem, t.prompt_ids + t.completion.ids[:cut] + force_ids, c, t.group),
                             force_text + c.text))
    verdicts = grader.many([text for _, _, text in rollouts], [tr.problem.answer for _, tr, _ in rollouts])
    for (_, tr, _), ok in zip(rollouts, verdicts):
        tr.correct = bool(tr.completion.finished and ok)
        tr.reward = float(tr.correct)
    n = 2 * mc.continuations
    rewards = torch.tensor([[tr.reward for _, tr, _ in rollouts[i * n:(i + 1) * n]] for i in range(len(picks))],
                           dtype=torch.float64)  # [P, 2m]: m continuing, then m terminating
    adv = ADVANTAGES["grpo"](rewards) * mc.progress_coef  # [P, 2m]
    for (_, tr, _), a in zip(rollouts, adv.reshape(-1).tolist()):
        tr.advantages = [a] * tr.length
    cont = rewards[:, :mc.continuations]
    term = rewards[:, mc.continuations:]
    return [tr for _, tr, _ in rollouts], {"mrt_continuations": int(cont.numel()),
                                            "mrt_continuation_reward": float(cont.mean()),
                                            "mrt_termination_reward": float(term.mean())}
