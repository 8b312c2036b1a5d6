"""Fake-driven unit tests of the data path's classes (no Ray, no engines): the rollout pool and the controller's
re-arming of lost workers, scoring, collation, the method registry's batch builders, and the termination-baseline
builder."""
from __future__ import annotations

import random

import pytest
import ray

from mrt_ray.config import load_config
from mrt_ray.recovery import Rearming
from mrt_ray.rewards import get_grader
from mrt_ray.rollout.pool import RolloutPool, WorkerLost, collect_rollout, submit_rollout
from mrt_ray.rollout.types import Completion, Request, SamplingSpec
from mrt_ray.tasks.embedded import make_problem, make_trace
from mrt_ray.trajectory import Trajectory


class FakeWorker:
    """A rollout worker whose `generate.remote(requests)` answers at once: one completion per requested sample, text
    naming the request's seed, from policy `version`; `dies` makes its next answers raise like a dead actor."""

    def __init__(self, index: int):
        self.index, self.version, self.dies, self.calls = index, 0, 0, 0
        self.generate = self
        self.ready = self

    def remote(self, requests=None):
        if requests is None:  # ready.remote()
            return {"pid": 1000 + self.calls, "index": self.index}
        self.calls += 1
        if self.dies:
            self.dies -= 1
            return RuntimeError("dead")
        groups = [[Completion([1, 2], [-0.1, -0.2], f"seed{r.spec.seed}", True, self.version)
                   for _ in range(r.spec.n)] for r in requests]
        return groups, {"seconds": 0.1 * len(requests), "tokens": 2 * sum(r.spec.n for r in requests)}


def fake_get(value):
    if isinstance(value, RuntimeError):
        raise ray.exceptions.RayActorError()
    return value


def reqs(n: int) -> list[Request]:
    return [Request([i], SamplingSpec(n=2, seed=i)) for i in range(n)]


def test_pool_splits_requests_and_keeps_their_order():
    workers = [FakeWorker(0), FakeWorker(1), FakeWorker(2)]
    outs, stats = RolloutPool(workers, get=fake_get).generate(reqs(7))
    assert [g[0].text for g in outs] == [f"seed{i}" for i in range(7)]
    assert [w.calls for w in workers] == [1, 1, 1] and stats["tokens"] == 28
    assert stats["seconds"] == pytest.approx(0.3)  # the slowest worker (3 requests)


def test_pool_raises_worker_lost_for_a_dead_worker_or_a_stale_version():
    workers = [FakeWorker(0), FakeWorker(1)]
    workers[1].dies = 1
    pool = RolloutPool(workers, "rollout", get=fake_get)
    with pytest.raises(WorkerLost, match="rollout worker 1 was lost .*the process died"):
        pool.collect(pool.submit(reqs(4)))
    workers[0].version = 3  # answers from version 3 where version 4 was asked for: a restarted worker
    with pytest.raises(WorkerLost, match="served policy version \\[3\\] instead of 4"):
        pool.collect(pool.submit(reqs(2), version=4))


class FakeSync:
    def __init__(self):
        self.version, self.timeout_s, self.startup_timeout_s, self.pushes = 5, 10.0, 60.0, 0

    def push(self, version):
        self.pushes += 1


def test_rearming_pushes_and_reruns_only_the_lost_chunk(monkeypatch):
    monkeypatch.setattr("mrt_ray.recovery.wait_ready", lambda actor, name, timeout, key: {"pid": 7})
    workers = [FakeWorker(0), FakeWorker(1)]
    for w in workers:
        w.version = 5
    workers[1].dies = 1
    sync = FakeSync()
    pool = Rearming(RolloutPool(workers, get=fake_get), sync)
    outs, _ = pool.generate(reqs(4))
    assert [g[0].text for g in outs] == [f"seed{i}" for i in range(4)]  # every request once, in order
    assert sync.pushes == 1 and pool.reruns == 1
    assert [w.calls for w in workers] == [1, 2]  # only the lost worker's chunk ran again


def test_rearming_gives_up_when_a_rerun_is_lost_again(monkeypatch):
    monkeypatch.setattr("mrt_ray.recovery.wait_ready", lambda actor, name, timeout, key: {"pid": 7})
    workers = [FakeWorker(0)]
    workers[0].dies = 2
    pool = Rearming(RolloutPool(workers, get=fake_get), FakeSync())
    with pytest.raises(RuntimeError, match="lost again after being re-armed"):
        pool.generate(reqs(1))


def test_submit_and_collect_rollout_build_one_group_per_problem():
    problems = [make_problem(0, "train", i) for i in range(3)]
    pool = RolloutPool([FakeWorker(0)], get=fake_get)
    pending = submit_rollout(pool, problems, lambda s: [ord(c) for c in s], SamplingSpec(n=2), (0, "train", 0))
    groups, _ = collect_rollout(pool, pending)
    assert [len(g) for g in groups] == [2, 2, 2] and groups[1][0].problem is problems[1]
    assert groups[2][1].prompt_ids == [ord(c) for c in problems[2].prompt] and groups[2][1].group == 2
    again, _ = collect_rollout(pool, pending)  # collected once: the same completions
    assert [t.completion.text for g in again for t in g] == [t.completion.text for g in groups for t in g]


def _traj(problem, text, finished=True, n=None):
    ids = list(range(n if n is not None else len(text)))
    return Trajectory(problem, [0, 1], Completion(ids, [-0.5] * len(ids), text, finished), 0)


def test_score_grades_finished_samples_and_applies_the_reward():
    from mrt_ray.rewards.score import score

    cfg = load_config(None, ["algo=length_penalty", "algo.alpha=0.2"])
    p = make_problem(0, "train", 1)
    right = make_trace(p, "stepwise", random.Random(0))
    g = [_traj(p, right, n=10), _traj(p, right, n=30), _traj(p, right, finished=False), _traj(p, "#### 99")]
    stats = score([g], cfg, get_grader("exact"))
    assert [t.correct for t in g] == [True, True, False, False]
    assert g[0].reward > g[1].reward > 0 and g[2].reward == g[3].reward == 0.0
    assert stats["accuracy"] == 0.5 and stats["solve_rate_any"] == 1.0


def test_collate_places_advantages_and_logprobs_on_completion_targets():
    from mrt_ray.learner.actor import collate

    shard = {"input_ids": [[5, 6, 7, 8], [5, 9]], "prompt_lens": [2, 1],
             "advantages": [[1.0, 2.0], [3.0]], "rollout_logprobs": [[-1.0, -2.0], [-3.0]]}
    b = collate(shard, pad_id=0, device="cpu")
    assert b["ids"].tolist() == [[5, 6, 7, 8], [5, 9, 0, 0]]
    # position t scores token t+1: sequence 0's completion tokens 7, 8 are targets at positions 1, 2
    assert b["mask"].tolist() == [[0, 1, 1], [1, 0, 0]]
    assert b["adv"].tolist() == [[0, 1, 2], [3, 0, 0]] and b["rollout_lp"].tolist() == [[0, -1, -2], [-3, 0, 0]]
    assert b["start"] == 0
    # prompts of 3 and 2 tokens: scoring starts at position 1, the first that predicts a completion token
    shard = {"input_ids": [[5, 6, 7, 8, 9], [5, 6, 7]], "prompt_lens": [3, 2],
             "advantages": [[1.0, 2.0], [3.0]], "rollout_logprobs": [[-1.0, -2.0], [-3.0]]}
    b = collate(shard, pad_id=0, device="cpu")
    assert b["start"] == 1 and b["ids"].tolist() == [[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]]
    # position t scores token 1+t+1: sequence 0's targets 8, 9 at positions 1, 2; sequence 1's 7 at 0
    assert b["mask"].tolist() == [[0, 1, 1], [1, 0, 0]]
    assert b["adv"].tolist() == [[0, 1, 2], [3, 0, 0]] and b["rollout_lp"].tolist() == [[0, -1, -2], [-3, 0, 0]]


def _ctx(groups, cfg, generate=None):
    from mrt_ray.methods import StepContext

    return StepContext(groups=groups, cfg=cfg, step=0, metrics={}, reference=lambda trajs: None,
                       generate=generate, decode=lambda ids: "".join(chr(i) for i in ids), grader=get_grader("exact"))


def _scored_group(rewards):
    p = make_problem(0, "train", 2)
    g = [_traj(p, "x", n=3) for _ in rewards]
    for t, r in zip(g, rewards):
        t.reward, t.correct = r, r > 0
    return g


def test_method_registry_builds_outcome_mrt_and_star_batches():
    from mrt_ray.methods import METHODS

    cfg = load_config(None, ["algo=grpo"])
    g = _scored_group([1.0, 0.0])
    batch = METHODS["grpo"].build(_ctx([g], cfg))
    assert batch == g and batch[0].advantages[0] > 0 > batch[1].advantages[0]
    cfg = load_config(None, ["algo=mrt"])
    g = _scored_group([1.0, 0.0])
    g[0].progress, g[0].episode_spans = [0.5], [(0, 2)]
    g[1].progress, g[1].episode_spans = [], []
    batch = METHODS["mrt"].build(_ctx([g], cfg))
    a = batch[0].advantages
    assert a[0] == pytest.approx(a[2] + 0.5)  # tokens of the episode carry its progress, the answer token does not
    cfg = load_config(None, ["algo=star"])
    g = _scored_group([1.0, 1.0, 0.0])
    g[0].j_values, g[1].j_values, g[2].j_values = [0.0, 1.0], [0.5, 1.0], [0.0, 0.0]
    ctx = _ctx([g], cfg)
    assert METHODS["star"].build(ctx) == [g[0]] and ctx.metrics["star_kept"] == 1
    assert METHODS["star"].needs_estimator(cfg) and METHODS["star"].loss == "sft"
    assert not METHODS["grpo"].needs_estimator(cfg) and METHODS["mrt"].needs_estimator(load_config(None, ["algo=mrt"]))
    assert not METHODS["mrt"].needs_estimator(load_config(None, ["algo=mrt", "algo.mrt.variant=online"]))


def test_termination_baseline_adds_continuations_with_the_cut_value_as_baseline():
    from mrt_ray.methods import METHODS

    cfg = load_config(None, ["algo=mrt", "algo.mrt.variant=termination_baseline", "algo.mrt.cut_prefixes=1",
                             "algo.mrt.continuations=2"])
    p = make_problem(0, "train", 3)
    g = _scored_group([1.0, 0.0])
    for t in g:
        t.problem = p
        t.episode_cuts, t.j_values = [2], [0.0, 0.25]
    seen = []

    def generate(requests):
        seen.extend(requests)
        right = make_trace(p, "concise", random.Random(0))
        return [[Completion([7], [-1.0], right, True, 0), Completion([8], [-1.0], "#### 999", True, 0)]
                for _ in requests], {}

    ctx = _ctx([g], cfg, generate)
    batch = METHODS["mrt"].build(ctx)
    assert len(seen) == 1 and seen[0].spec.n == 2  # one cut prefix per group, two continuations
    extra = batch[2:]
    assert [t.advantages for t in extra] == [[1.0 - 0.25], [0.0 - 0.25]]
    assert ctx.metrics["mrt_continuations"] == 2 and ctx.metrics["continue_seconds"] >= 0


def test_online_variant_normalises_continuing_and_terminating_rollouts_together():
    from mrt_ray.methods import METHODS

    cfg = load_config(None, ["algo=mrt", "algo.mrt.variant=online", "algo.mrt.cut_prefixes=1",
                             "algo.mrt.continuations=2", "algo.mrt.progress_coef=0.5"])
    p = make_problem(0, "train", 3)
    right = make_trace(p, "concise", random.Random(0))
    thinking = right[: right.index("\n</think>")]
    g = _scored_group([1.0, 0.0])
    for t in g:
        t.problem = p
        t.completion = Completion([ord(c) for c in thinking], [-0.1] * len(thinking), thinking, True)
    seen = []

    def generate(requests):
        seen.extend(requests)
        # continuing: one right, one wrong; terminating: both wrong
        return [[Completion([7], [-1.0], right[len(thinking):], True), Completion([8], [-1.0], "#### 999", True)]
                if i % 2 == 0 else
                [Completion([9], [-1.0], "999", True), Completion([9], [-1.0], "998", True)]
                for i, _ in enumerate(requests)], {}

    ctx = _ctx([g], cfg, generate)
    ctx.force_ids, ctx.force_text = [1, 2, 3], "\n</think>\n#### "
    batch = METHODS["mrt"].build(ctx)
    assert [r.spec.n for r in seen] == [2, 2]  # from the one cut prefix: 2 continuing, 2 terminating
    assert seen[1].prompt_ids[-3:] == [1, 2, 3] and seen[1].spec.max_tokens == cfg.progress.max_answer_tokens
    extra = batch[2:]
    # rewards (1, 0 | 0, 0): GRPO over the four: mean 0.25, sample std 0.5 -> (1.5, -0.5, -0.5, -0.5), x 0.5
    assert [t.advantages[0] for t in extra] == pytest.approx([0.75, -0.25, -0.25, -0.25], abs=1e-5)
    assert ctx.metrics["mrt_continuation_reward"] == 0.5 and ctx.metrics["mrt_termination_reward"] == 0.0


class _Handle:
    class ready:  # noqa: N801 - stands for an actor method handle (`actor.ready.remote()`)
        @staticmethod
        def remote():
            return "ref"


@pytest.mark.parametrize(("state", "waits"), [("RESTARTING", True), ("ALIVE", True), ("DEAD", False), (None, False)])
def test_wait_ready_waits_out_a_call_lost_to_a_restart(monkeypatch, state, waits):
    """A `ready` call in flight when its actor is killed fails with RayActorError ("The actor died unexpectedly before
    finishing this task") although Ray restarts the actor; test_chaos's watchdog hit it and the run ended with "max
    restarts are used up" at max_restarts=30. wait_ready now asks the GCS: restarting or alive -> call again; dead or
    unknown -> the error naming the actor."""
    import ray

    from mrt_ray import actors

    answers = [ray.exceptions.ActorDiedError(), {"pid": 2}]

    def get(ref, timeout):
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    monkeypatch.setattr(actors.ray, "get", get)
    monkeypatch.setattr(actors, "actor_state", lambda actor: (state, 2))
    monkeypatch.setattr(actors.time, "sleep", lambda s: None)
    if waits:
        assert actors.wait_ready(_Handle(), "worker 0", 60, "k") == {"pid": 2}
    else:
        shown = state or "unknown"
        with pytest.raises(RuntimeError, match=rf"worker 0 died and Ray did not restart it \(GCS state {shown} after"):
            actors.wait_ready(_Handle(), "worker 0", 60, "k")
