"""The real stack: Ray + vLLM rollout workers + DeepSpeed learners + the weight push."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mrt_ray.config import from_yaml_file

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.stack]


def test_two_step_training_run(grpo_run):
    cfg, summary = grpo_run
    run = Path(cfg.run.dir)
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] in (0, 1)]
    assert len(steps) == 2
    for r in steps:
        assert r["policy_version"] == r["step"] + 1
        assert r["push_probe_diff"] < 1e-3  # the push was applied (also enforced inside push())
        assert r["logprob_diff"] < 1e-3  # rollout and learner agree on the sampled tokens' log-probs
        for key in ("generate_seconds", "learn_seconds", "push_seconds", "tokens_mean", "tokens_p90", "truncation",
                    "neg_logp", "grad_norm", "reward", "accuracy", "kl" if cfg.algo.kl_coef else "approx_kl"):
            assert key in r, key
    assert (run / "summary.json").is_file()
    written = from_yaml_file(run / "config.yaml")  # learner.num_ranks=0 was derived at start, and recorded for resume
    assert cfg.learner.num_ranks == written.learner.num_ranks == 1  # on CPU
    # the final checkpoint is an HF directory transformers can load
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(summary["checkpoint"])
    assert sum(p.numel() for p in m.parameters()) > 0


def test_budgets_and_a_scheduled_token_limit_reach_the_rollout(small_cfg):
    """ThinkPrune's limit, scheduled 12 -> 6 tokens, caps the sampler at each step (a random model rarely stops, so
    uncapped samples would run to 48 tokens), and every prompt carries an L1 budget cue whose adherence is logged."""
    from mrt_ray.trainer import Trainer

    cfg = small_cfg("algo=thinkprune", "algo.token_limit=12", "algo.schedule.token_limit=[[0,12],[1,6]]",
                    "algo.budget.min_tokens=8", "algo.budget.max_tokens=40")
    Trainer(cfg).run()
    rows = {r["step"]: r for r in map(json.loads, (Path(cfg.run.dir) / "metrics.jsonl").read_text().splitlines())}
    for step, limit in ((0, 12), (1, 6)):
        r = rows[step]
        assert r["schedule/token_limit"] == limit
        assert 1 <= r["tokens_mean"] <= r["tokens_p90"] <= limit
        assert 8 <= r["budget_target_mean"] <= 40 and r["budget_abs_error"] >= 0 and 0 <= r["budget_over_share"] <= 1


def _trajectories(tok, n_groups=2, n=4, seed=0):
    from mrt_ray.rollout.types import Completion
    from mrt_ray.tasks.embedded import make_problem
    from mrt_ray.trajectory import Trajectory

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_groups):
        p = make_problem(seed, "train", i)
        ids = tok(p.prompt, add_special_tokens=False)["input_ids"]
        for k in range(n):
            comp = torch.randint(3, len(tok), (5 + k,), generator=g).tolist()
            t = Trajectory(problem=p, prompt_ids=ids, completion=Completion(comp, [-1.0] * len(comp), "", True),
                           group=i)
            t.advantages = [float(k - 1.5)] * len(comp)
            out.append(t)
    return out


def _learner_step(cfg, tiny_model, trajs):
    import ray

    from mrt_ray.actors import Placement
    from mrt_ray.learner.group import LearnerGroup

    placement = Placement(cfg, with_estimators=False)
    group = LearnerGroup(cfg, placement, tiny_model, local=True)
    try:
        stats = group.train(trajs)
        probe = group.call("probe_logprobs", trajs[0].prompt_ids + trajs[0].completion.ids)[0]
    finally:
        for a in group.actors:
            ray.kill(a)
        ray.util.remove_placement_group(placement.pg)
    return stats, probe


def test_zero_stages_agree(small_cfg, tiny_model):
    """ZeRO-0, 1, 2 and 3 give the same loss, gradient norm and updated weights for the same data and seed (ZeRO-0's
    norm is the learner's own: DeepSpeed keeps none there)."""
    from mrt_ray.models import load_tokenizer

    tok = load_tokenizer(tiny_model, small_cfg().model)
    trajs = _trajectories(tok)
    results = {s: _learner_step(small_cfg(f"learner.zero_stage={s}", "learner.lr=1e-2"), tiny_model, trajs)
               for s in (0, 1, 2, 3)}
    ref_stats, ref_probe = results[1]
    assert ref_stats["grad_norm"] > 0
    for s in (0, 2, 3):
        stats, probe = results[s]
        assert stats["pg_loss"] == pytest.approx(ref_stats["pg_loss"], abs=1e-6)
        assert stats["grad_norm"] == pytest.approx(ref_stats["grad_norm"], rel=1e-4)
        assert max(abs(a - b) for a, b in zip(probe, ref_probe)) < 1e-4


def test_entropy_coefficient_changes_the_learner_step(small_cfg, tiny_model):
    """Through the real Learner (DeepSpeed): algo.entropy_coef > 0 changes the update (its bonus has a gradient)."""
    from mrt_ray.models import load_tokenizer

    tok = load_tokenizer(tiny_model, small_cfg().model)
    trajs = _trajectories(tok)
    common = ("learner.lr=1e-2", "learner.num_ranks=1", "learner.zero_stage=0")
    s0, p0 = _learner_step(small_cfg(*common), tiny_model, trajs)
    s1, p1 = _learner_step(small_cfg(*common, "algo.entropy_coef=0.5"), tiny_model, trajs)
    assert "entropy" not in s0 and s1["entropy"] > 0  # computed only when its coefficient is > 0
    assert s1["grad_norm"] != pytest.approx(s0["grad_norm"], rel=1e-3)
    assert max(abs(a - b) for a, b in zip(p0, p1)) > 1e-4


@pytest.mark.parametrize("agg", [pytest.param("seq_mean", marks=pytest.mark.slow),
                                 pytest.param("constant", marks=pytest.mark.slow), "token_mean"])  # CI: one of three
def test_unequal_shards_and_micro_batches_match_one_batch(small_cfg, tiny_model, agg):
    """3 sequences of different lengths on 2 ranks (2 + 1, one micro-batch each per sequence, so rank 1 runs an empty
    micro-batch) give exactly the gradient of one rank with one micro-batch, for every aggregation."""
    from mrt_ray.models import load_tokenizer

    tok = load_tokenizer(tiny_model, small_cfg().model)
    trajs = _trajectories(tok, n_groups=1, n=3)
    common = ("learner.lr=1e-2", "learner.zero_stage=2", f"algo.loss_agg={agg}")
    one, p_one = _learner_step(small_cfg(*common, "learner.num_ranks=1"), tiny_model, trajs)
    two, p_two = _learner_step(small_cfg(*common, "learner.num_ranks=2", "learner.micro_batch_size=1"), tiny_model,
                               trajs)
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5)
    assert max(abs(a - b) for a, b in zip(p_one, p_two)) < 1e-5


@pytest.fixture(scope="session")
def tiny_tied_model(tmp_path_factory) -> str:
    """The tiny model with its output layer tied to the input embedding (as in small Qwen2/SmolLM2 models)."""
    from transformers import Qwen2ForCausalLM

    from mrt_ray.bootstrap import build_model, build_tokenizer
    from mrt_ray.config import BootstrapConfig

    path = tmp_path_factory.mktemp("tiny_tied_model")
    tok = build_tokenizer()
    config = build_model(BootstrapConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128), len(tok),
                         320, seed=0).config
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("backend,tied,stage", [("vllm", False, 3), ("vllm", True, 3), ("vllm", True, 0),
                                                pytest.param("hf", False, 3, marks=pytest.mark.slow)])
def test_push_reaches_rollout_worker(small_cfg, tiny_model, tiny_tied_model, backend, tied, stage):
    """After an update and a push, the rollout worker's log-probs (vLLM or HF engine) equal the learner's; before the
    push they differ and the probe rejects the stale engine. Small buckets; ZeRO-3: every bucket is gathered on both
    ranks and packed; ZeRO-0: the learner's flattened parameters are sent from their own storage, nothing packed.
    Tied embeddings travel once, and vLLM's output layer still follows them."""
    import ray

    from mrt_ray.actors import Placement
    from mrt_ray.learner.group import LearnerGroup
    from mrt_ray.models import load_tokenizer
    from mrt_ray.rollout.worker import RolloutWorker
    from mrt_ray.weight_sync.push import WeightSync

    model = tiny_tied_model if tied else tiny_model
    cfg = small_cfg("learner.lr=5e-2", f"learner.zero_stage={stage}", f"rollout.backend={backend}",
                    "learner.push_bucket_mib=0.02", f"model.path={model}")
    tok = load_tokenizer(model, cfg.model)
    trajs = _trajectories(tok)
    probe = trajs[0].prompt_ids + trajs[0].completion.ids
    placement = Placement(cfg, with_estimators=False)
    learners = LearnerGroup(cfg, placement, model, local=True)
    worker = placement.actor(RolloutWorker, "rollout", 0, cfg, model, 0)
    try:
        sync = WeightSync(learners, [worker], placement, probe, 60.0, 1e-4, 600.0)
        assert len(sync.plan.buckets) > 3
        aliases = [a for b in sync.plan.buckets for e in b.entries for a in e.aliases]
        assert aliases == (["lm_head.weight"] if tied else [])
        assert sync.probe() < 1e-4  # same initial weights
        learners.train(trajs)
        learner_lp = learners.call("probe_logprobs", probe)[0]
        stale = ray.get(worker.prompt_logprobs.remote(probe))
        assert max(abs(a - b) for a, b in zip(learner_lp, stale)) > 1e-3  # the update changed the policy
        with pytest.raises(RuntimeError, match="stale or partial weights"):
            sync.probe()
        stats = sync.push(1)
        fresh = ray.get(worker.prompt_logprobs.remote(probe))
        assert max(abs(a - b) for a, b in zip(learner_lp, fresh)) < 1e-4
        assert stats["push_probe_diff"] < 1e-4 and stats["push_gbps"] > 0
        assert stats["push_probe_stale_gap"] > 1e-3  # the probe could see a stale engine
        assert (stats["push_packed_buckets"] == 0) == (stage == 0)
    finally:
        for a in learners.actors + [worker]:
            ray.kill(a)
        ray.util.remove_placement_group(placement.pg)


def test_reload_log_filter_drops_only_the_rotary_cache_line():
    import logging

    from mrt_ray.rollout.vllm_ext import _RotaryReloadFilter

    def record(msg: str, *args) -> logging.LogRecord:
        return logging.LogRecord("vllm", logging.WARNING, __file__, 1, msg, args, None)

    f = _RotaryReloadFilter()
    assert not f.filter(record("%s: Failed to load weights", "RotaryEmbedding"))
    assert f.filter(record("%s: Failed to load weights", "QKVParallelLinear"))


@pytest.mark.parametrize("algo", ["mrt:bonus", pytest.param("mrt:termination_baseline", marks=pytest.mark.slow),
                                  "star:bonus"])  # CI: MRT and MRT-STaR (the two MRT forms differ in the reward only)
def test_mrt_two_steps(small_cfg, algo):
    """MRT (both forms) and MRT-STaR through the real stack: estimator pool workers receive pushes too; progress
    telemetry is logged."""
    from mrt_ray.trainer import Trainer

    name, variant = algo.split(":")
    cfg = small_cfg(f"algo={name}", f"algo.mrt.variant={variant}", "progress.samples=4", "progress.round_size=2",
                    "rollout.num_cpus=0.25", "progress.num_cpus=0.25")
    Trainer(cfg).run()
    rows = [json.loads(ln) for ln in (Path(cfg.run.dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] in (0, 1)]
    assert len(steps) == 2
    for r in steps:
        assert r["estimate_prefixes"] >= 4 and r["estimate_samples"] >= 2 * r["estimate_prefixes"]
        assert 0.0 <= r["j_c-1"] <= 1.0 and "episodes_mean" in r
        if name == "star":  # SFT only on selected traces; a step that keeps none trains and pushes nothing
            assert r["star_kept"] >= 0 and (r["star_kept"] == 0) == ("push_probe_diff" not in r)
        else:
            assert r["push_probe_diff"] < 1e-3


def test_async_rollout_is_one_version_behind_and_resumes_exactly(small_cfg, tmp_path):
    """Async mode: step k+1 is sampled while step k trains, so its samples are exactly one version old. The
    checkpoint after step 1 holds step 2's prefetched batch, so a run resumed from it repeats steps 2-3, the final
    evaluation and the final weights of the uninterrupted run exactly."""
    import shutil

    from safetensors.torch import load_file

    from mrt_ray.trainer import Trainer

    cfg = small_cfg("train.async_rollout=true", "train.steps=4", "train.save_every=2")
    Trainer(cfg).run()
    run = Path(cfg.run.dir)

    def rows(d: Path) -> dict[int, dict]:
        return {r["step"]: r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())}

    a = rows(run)
    assert a[0]["staleness_max"] == 0 and all(a[k]["staleness_max"] == 1 for k in (1, 2, 3))
    assert all(a[k]["policy_version"] == k + 1 for k in range(4))
    assert (run / "checkpoints" / "step_000001" / "prefetched_rollout.json").is_file()
    assert not (run / "checkpoints" / "step_000003" / "prefetched_rollout.json").exists()  # no step after the last

    cut = tmp_path / "cut"  # the run as a kill after step 1's checkpoint leaves it
    shutil.copytree(run, cut)
    shutil.rmtree(cut / "checkpoints" / "step_000003")
    (cut / "checkpoints" / "latest").write_text("step_000001")
    (cut / "summary.json").unlink()
    Trainer(small_cfg(f"resume={cut}")).run()
    b = rows(cut)
    keys = ("reward", "accuracy", "tokens_mean", "pg_loss", "grad_norm", "staleness_max", "policy_version")
    for k in (2, 3):
        assert {x: b[k][x] for x in keys} == {x: a[k][x] for x in keys}, k
    final = [x for x in a[4] if x.startswith("eval/")]
    assert final and {x: b[4][x] for x in final} == {x: a[4][x] for x in final}
    wa, wb = (load_file(d / "checkpoints" / "step_000003" / "hf" / "model.safetensors") for d in (run, cut))
    assert sorted(wa) == sorted(wb) and all(wa[n].equal(wb[n]) for n in wa)
