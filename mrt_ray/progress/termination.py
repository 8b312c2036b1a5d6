"""MRT-RL, termination-baseline form (as the paper practises it on GRPO): cut traces after a random number of
episodes, sample continuations from each prefix, and give every continuation the advantage
R(continuation) - R(termination), where R(termination) = J(c_j), the estimated accuracy of answering right at the
cut (already measured by the estimator pool for every episode boundary)."""
from __future__ import annotations

import random

import torch

from mrt_ray.algos.advantages import termination_baseline_advantages
from mrt_ray.config import Config
from mrt_ray.rollout.pool import request_seed
from mrt_ray.rollout.types import Request, SamplingSpec
from mrt_ray.trajectory import Trajectory


def termination_baseline_batch(groups: list[list[Trajectory]], cfg: Config, pool, decode, grader,
                               step: int) -> tuple[list[Trajectory], dict]:
    mc, rc = cfg.algo.mrt, cfg.rollout
    picks = []  # (trajectory, episode index j, cut in completion tokens)
    for gi, g in enumerate(groups):
        rng = random.Random(f"{cfg.seed}/cut/{step}/{gi}")  # a pure function of (seed, step, group): resume-exact
        candidates = [t for t in g if t.episode_cuts]
        for t in rng.sample(candidates, min(mc.cut_prefixes, len(candidates))):
            j = rng.randrange(len(t.episode_cuts))
            if t.episode_cuts[j] < rc.max_new_tokens:
                picks.append((t, j, t.episode_cuts[j]))
    if not picks:
        return [], {"mrt_continuations": 0}
    reqs = [Request(t.prompt_ids + t.completion.ids[:cut],
                    SamplingSpec(n=mc.continuations, temperature=rc.temperature, top_p=rc.top_p,
                                 max_tokens=rc.max_new_tokens - cut, seed=request_seed(cfg.seed, "cont", step, i)))
            for i, (t, j, cut) in enumerate(picks)]
    outs, _ = pool.generate(reqs)
    extra, cont_r, term_r = [], [], []
    for (t, j, cut), comps in zip(picks, outs):
        prefix_text = decode(t.completion.ids[:cut])
        conts = []
        for c in comps:
            ct = Trajectory(problem=t.problem, prompt_ids=t.prompt_ids + t.completion.ids[:cut], completion=c,
                            group=t.group)
            ct.correct = bool(c.finished and grader(prefix_text + c.text, t.problem.answer))
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
