"""Step 6 of the data path by method: the one place where `algo.name` chooses what a step trains on.

A `Method` builds the training batch (trajectories with per-token advantages) from the step's scored groups, says
whether it needs the Monte Carlo estimator pool (steps 3-4) and which loss it needs, if any. Adding a method is one
registered builder; a preset (`conf/algo/<name>.yaml`) then picks its reward, advantage and loss.

  grpo, rloo, drgrpo, length_penalty and the efficient-reasoning family (l1_exact, l1_max, kimi_length,
  shorter_better, thinkprune: each its own reward): outcome advantages (`algos.assign`)
  mrt: the variant's builder (`MRT_VARIANTS`: bonus = outcome + per-episode progress; termination_baseline = outcome
       + continuations from cut prefixes with the termination reward as baseline; online = outcome + continuing and
       terminating rollouts from cut prefixes normalised together, `progress.termination`)
  star: MRT-STaR, supervised on the correct traces that make the most progress (loss sft)
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mrt_ray.algos.assign import assign_advantages, uniform_groups
from mrt_ray.config import Config
from mrt_ray.progress.estimate import select_star
from mrt_ray.progress.pool import segment_trajectory
from mrt_ray.progress.termination import online_batch, termination_baseline_batch
from mrt_ray.registry import Registry
from mrt_ray.rollout.types import Request
from mrt_ray.trajectory import Trajectory
from mrt_ray.utils import timed


@dataclass
class StepContext:
    """What a batch builder may use: the step's groups (scored; with J and progress when the method estimates),
    the config, a metrics dict to fill, and the controller's services."""

    groups: list[list[Trajectory]]
    cfg: Config
    step: int
    metrics: dict
    reference: Callable[[list[Trajectory]], None]  # fills trajectories' ref_logprobs (the learners' reference)
    generate: Callable[[list[Request]], tuple]  # sample on the rollout pool (re-arming lost workers)
    decode: Callable  # token ids -> text
    grader: Callable[[str, str], bool]  # a rewards.grading.Grader (also .many)
    force_ids: list[int] = field(default_factory=list)  # the meta-prover's forcing text, tokenised
    force_text: str = ""


@dataclass(frozen=True)
class Method:
    build: Callable[[StepContext], list[Trajectory]]
    needs_estimator: Callable[[Config], bool] = lambda cfg: False  # whether steps 3-4 (J per episode) run
    loss: str | None = None  # the registered loss this method requires (None: any)


METHODS: Registry[Method] = Registry("method", "algo.name")
MRT_VARIANTS: Registry[Callable[[StepContext], list[Trajectory]]] = Registry("MRT variant", "algo.mrt.variant")


def register_method(*names: str, needs_estimator: Callable[[Config], bool] = lambda cfg: False,
                    loss: str | None = None):
    def add(build: Callable[[StepContext], list[Trajectory]]):
        for name in names:
            METHODS.register(name)(Method(build, needs_estimator, loss))
        return build

    return add


def outcome_batch(ctx: StepContext, progress_bonus: bool = False) -> list[Trajectory]:
    """Every sample with its outcome advantage (and MRT's progress bonus when asked). DAPO's dynamic sampling
    (`algo.drop_uniform_groups`) first drops the groups whose rewards are all equal, unless all are."""
    cfg, groups = ctx.cfg, ctx.groups
    if cfg.algo.drop_uniform_groups:
        drop = set(uniform_groups(groups))
        ctx.metrics["dropped_groups"] = len(drop)
        groups = [g for i, g in enumerate(groups) if i not in drop] or groups
    if cfg.algo.kl_in_reward > 0:  # the reference policy's log-probs, for the KL inside the reward
        with timed(ctx.metrics, "reference_seconds"):  # a forward pass on the learners, part of advantage_seconds
            ctx.reference([t for g in groups for t in g])
    assign_advantages(groups, cfg, progress_bonus=progress_bonus)
    return [t for g in groups for t in g]


register_method("grpo", "rloo", "drgrpo", "length_penalty", "l1_exact", "l1_max", "kimi_length", "shorter_better",
                "thinkprune")(outcome_batch)


@register_method("mrt", needs_estimator=lambda cfg: cfg.algo.mrt.variant != "online")
def mrt_batch(ctx: StepContext) -> list[Trajectory]:
    return MRT_VARIANTS.lookup(ctx.cfg.algo.mrt.variant)(ctx)


@MRT_VARIANTS.register("bonus")
def mrt_bonus(ctx: StepContext) -> list[Trajectory]:
    return outcome_batch(ctx, progress_bonus=True)


@register_method("star", needs_estimator=lambda cfg: True, loss="sft")
def star_batch(ctx: StepContext) -> list[Trajectory]:
    """MRT-STaR: the correct traces with the most progress (`select_star`), each with a zero advantage (the sft loss
    reads none)."""
    flat = [t for g in ctx.groups for t in g]
    keep = select_star([{"j": t.j_values, "tokens": t.length} for t in flat], ctx.cfg.algo.mrt.star_keep)
    ctx.metrics["star_kept"] = len(keep)
    for i in keep:
        flat[i].advantages = [0.0] * flat[i].length
    return [flat[i] for i in keep]


@MRT_VARIANTS.register("termination_baseline")
def mrt_termination_baseline(ctx: StepContext) -> list[Trajectory]:
    """The outcome batch plus continuations sampled from cut prefixes, each with R(continuation) - J(cut)."""
    batch = outcome_batch(ctx)
    with timed(ctx.metrics, "continue_seconds"):  # sampling and grading the continuations
        extra, stats = termination_baseline_batch(ctx.groups, ctx.cfg, ctx.generate, ctx.decode, ctx.grader, ctx.step)
    ctx.metrics.update(stats)
    return batch + extra


@MRT_VARIANTS.register("online")
def mrt_online(ctx: StepContext) -> list[Trajectory]:
    """The outcome batch plus continuing and terminating rollouts from cut prefixes, normalised together (their
    segmentation runs here: this variant needs no estimator pool)."""
    for g in ctx.groups:
        for t in g:
            segment_trajectory(t, ctx.cfg, ctx.decode)
    batch = outcome_batch(ctx)
    with timed(ctx.metrics, "continue_seconds"):
        extra, stats = online_batch(ctx.groups, ctx.cfg, ctx.generate, ctx.decode, ctx.grader, ctx.step,
                                    ctx.force_ids, ctx.force_text)
    ctx.metrics.update(stats)
    return batch + extra
