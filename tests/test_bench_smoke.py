"""A 2-step smoke of the benchmark harness's mrt-ray side (bench/harness.py, bench/raw_broadcast.py, the prompt
hand-off of bench/vs_trl.py) on the tiny random model. No TRL, and nothing about time is asserted."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def test_phase_summary_and_table():
    from harness import markdown_table, phase_summary

    rows = [  # hand-made: step 0 overhead 1.2/1.0, step 1 2.2/2.0, step 2 3.0/2.5
        {"generate_seconds": 0.5, "score_seconds": 0.1, "learn_seconds_wall": 0.3, "push_seconds": 0.1,
         "step_seconds": 1.2},
        {"generate_seconds": 1.0, "score_seconds": 0.2, "learn_seconds_wall": 0.6, "push_seconds": 0.2,
         "step_seconds": 2.2},
        {"generate_seconds": 1.5, "estimate_seconds": 0.5, "score_seconds": 0.1, "learn_seconds_wall": 0.3,
         "push_seconds": 0.1, "step_seconds": 3.0},
    ]
    s = phase_summary(rows)
    assert s["generate_seconds"] == 1.0 and s["step_seconds"] == 2.2 and s["estimate_seconds"] == 0.5
    assert s["overhead"] == pytest.approx(1.2)  # median of 1.2, 1.1, 1.2
    assert s["steps"] == 3
    assert markdown_table(["a", "b"], [["x", 0.123456], [2, float("nan")]]) == (
        "| a | b |\n|---|---|\n| x | 0.123 |\n| 2 | n/a |")


@pytest.mark.slow  # a developer's tool: runs with `pytest tests` (and before any benchmark), not in CI
@pytest.mark.usefixtures("ray_session")
def test_session_two_steps_and_raw_broadcast(small_cfg):
    from harness import PHASES, MrtSession, actor_pids, read_metrics
    from raw_broadcast import bucket_sizes, raw_broadcast_seconds

    session = MrtSession(small_cfg("wandb.log_samples_every=0"))
    try:
        rows = session.steps(1) + session.steps(1)
        pids = actor_pids(session.trainer)
        sizes, nbytes = bucket_sizes(session.trainer.sync), session.trainer.sync.bytes
    finally:
        session.close()
    assert [r["step"] for r in rows] == [0, 1]
    assert {"learner 0", "rollout 0", "driver"} <= set(pids) and all(p > 0 for p in pids.values())
    assert rows == read_metrics(session.metrics_path)  # what the bench reports is what the run logged
    for r in rows:
        assert r["policy_version"] == r["step"] + 1
        for key in [p for p in PHASES if p != "estimate_seconds"] + ["step_seconds", "push_broadcast_seconds"]:
            assert key in r, key
    assert nbytes <= sum(sizes) < nbytes + 64 * len(sizes)  # the raw broadcast moves the pushed buckets
    times = raw_broadcast_seconds(sizes, reps=2)
    assert len(times) == 2 and all(t > 0 for t in times)


def test_trl_prompts_follow_mrt_steps(small_cfg, tmp_path):
    """TRL's dataset lists mrt-ray's prompts for steps 0, 1, ... in order (TRL runs with shuffle_dataset=False)."""
    from vs_trl import trl_spec

    from mrt_ray.models import load_tokenizer
    from mrt_ray.tasks.source import PromptSource

    cfg = small_cfg()
    spec = trl_spec(cfg, cfg.model.path, n_steps=2, threads=1, out_dir=tmp_path)
    source = PromptSource(cfg, load_tokenizer(cfg.model.path, cfg.model))
    expected = [{"prompt": p.prompt, "answer": p.answer} for s in (0, 1) for p in source.batch(s)]
    assert spec["rows"] == expected and len(expected) == 2 * cfg.train.prompts_per_step
    assert (spec["n_samples"], spec["max_new_tokens"], spec["prompts_per_step"]) == (4, 48, 4)
    # TRL's reward grades with the run's own grader (task.grader and its settings), built from the spec alone
    from mrt_ray.rewards import get_grader

    assert spec["grader"][0] == cfg.task.grader == "exact"
    grader = get_grader(*spec["grader"])
    assert grader.many([f"#### {expected[0]['answer']}", "#### x"], [expected[0]["answer"]] * 2) == [True, False]


def test_cost_growth_table_and_plot(tmp_path):
    """bench/cost_growth.py's report from hand-made sessions: medians over rounds, one column per actor, a PNG."""
    from cost_growth import MNT, PS, plot, table, workloads

    labels = [w[0] for w in workloads()]
    assert len(labels) == len(PS) + len(MNT) - 1 and "16x8" in labels  # 16 x 8 at 64 tokens is shared
    results = [{"label": label, "summary": {"step_seconds": 1.0 + i + r, "generate_seconds": 0.5 + i,
                                            "learn_seconds_wall": 0.4, "push_seconds": 0.1, "tokens_mean": 40.0},
                "peak_rss_mib": {"learner 0": 100.0 + r, "rollout 0": 200.0}}
               for r in (0, 2) for i, label in enumerate(labels)]
    out = table(results).splitlines()
    assert out[0].startswith("| workload | step s |") and "peak RSS learner 0 MiB" in out[0]
    assert out[2] == "| 4x4 | 2 | 0.5 | 0.4 | 0.1 | 40 | 101 | 200 | 2 |"  # step: median of 1 and 3
    plot(results, str(tmp_path / "cost.png"))
    assert (tmp_path / "cost.png").read_bytes()[:4] == b"\x89PNG"
    plot([r for r in results if r["label"] == "4x4"], str(tmp_path / "one.png"))  # --only: the points that ran
    assert (tmp_path / "one.png").stat().st_size > 1000
