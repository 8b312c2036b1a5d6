"""`mrt-ray grid` with fake training and evaluation: members configured and placed per (method, seed), finished
members reused, one eval per model and seed, and the seed statistics against hand-computed values."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mrt_ray.config import ConfigError, load_config, to_yaml
from mrt_ray.grid import check_grid, run_grid

ACC = {"base": 0.50, "grpo": 0.60, "mrt": 0.70}  # + 0.01 * seed
TOKENS = {"base": 80.0, "grpo": 70.0, "mrt": 35.0}


def fake_eval_json(models, seed):
    out = {}
    for label, _ in models:
        a = ACC[label] + 0.01 * seed
        forced = [a / 2, a] if label != "mrt" else [a * 0.9, a]  # budgets 16, 32
        out[label] = {
            "sampled": {"accuracy": a, "tokens_mean": TOKENS[label] + seed, "maj@k": a},
            "greedy": {"accuracy": a + 0.05},
            "budget_forcing": [{"budget": b, "accuracy": f, "regret": 1 - f / 2} for b, f in zip((16, 32), forced)],
            "by_difficulty": [{"difficulty": 2, "tokens_mean": TOKENS[label] / 2, "accuracy": a},
                              {"difficulty": 6, "tokens_mean": TOKENS[label], "accuracy": a - 0.2}],
        }
        if label == "mrt":  # the adherence rows of an eval with eval.targets=[32,64]
            out[label]["budget_adherence"] = [{"target": t, "used_mean": t + seed, "abs_error_mean": seed + 1.0,
                                               "over_share": 0.5, "accuracy": a} for t in (32, 64)]
    return {"models": out}


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    calls = {"train": [], "eval": []}

    def train(cfg):
        d = Path(cfg.run.dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.yaml").write_text(to_yaml(cfg))
        calls["train"].append((cfg.algo.name, cfg.seed, cfg.train.steps))
        summary = {"steps": cfg.train.steps}
        (d / "summary.json").write_text(json.dumps(summary))
        return summary

    def evaluate(cfg, models):
        calls["eval"].append((cfg.seed, [m for m, _ in models]))
        d = Path(cfg.run.dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / "eval.json").write_text(json.dumps(fake_eval_json(models, cfg.seed)))

    monkeypatch.setattr("mrt_ray.models.resolve_model", lambda cfg: f"/base/seed{cfg.seed}")
    return calls, train, evaluate


def grid_overrides(tmp_path):
    return [f"run.dir={tmp_path}/g", "train.steps=7", "grid.select=[grpo,mrt]", "grid.seeds=[0,1,2]"]


def test_grid_trains_every_member_evaluates_per_seed_and_reports(tmp_path, fakes):
    calls, train, evaluate = fakes
    ov = grid_overrides(tmp_path)
    out = run_grid(load_config(None, ov), None, ov, train, evaluate)
    assert calls["train"] == [(m, s, 7) for s in (0, 1, 2) for m in ("grpo", "mrt")]  # seeds outer, overrides kept
    assert calls["eval"] == [(s, [m]) for s in (0, 1, 2) for m in ("base", "grpo", "mrt")]  # each after its training
    assert sorted(json.loads((tmp_path / "g" / "eval" / "seed1" / "eval.json").read_text())["models"]) == [
        "base", "grpo", "mrt"]
    assert (tmp_path / "g" / "mrt" / "seed2" / "summary.json").is_file()
    md = (tmp_path / "g" / "grid.md").read_text()
    # mrt pass@1 over seeds: 70, 71, 72 -> 71.0 +- t(2) * 1 / sqrt(3) = 2.5; paired vs grpo: +10 exactly (CI 0)
    assert "| mrt | 0,1,2 | 71.0 ± 2.5 | +20.0 ± 0.0 |" in md
    assert "| base | 0,1,2 | 51.0 ± 2.5 | - |" in md
    grid = json.loads((tmp_path / "g" / "grid.json").read_text())
    mrt = grid["summary"]["mrt"]
    assert mrt["vs_baseline"]["accuracy"]["mean"] == pytest.approx(0.10)
    rel = [(35 + s) / (70 + s) - 1 for s in (0, 1, 2)]  # mrt tokens / grpo tokens - 1, paired by seed
    assert mrt["vs_baseline"]["tokens_rel"]["mean"] == pytest.approx(sum(rel) / 3)
    # token efficiency: grpo reaches its own final forced accuracy at 32; mrt reaches it at 32 * ... (interpolated)
    assert mrt["vs_baseline"]["efficiency"]["mean"] > 1.0
    assert grid["summary"]["mrt"]["by_difficulty"]["2"]["tokens_mean"]["mean"] == pytest.approx(17.5)
    # mrt - grpo tokens per difficulty, paired by seed: (35 - 70) / 2 = -17.5 on difficulty 2, -35 on difficulty 6
    by = mrt["vs_baseline"]["tokens_by_difficulty"]
    assert (by["2"]["mean"], by["6"]["mean"]) == (pytest.approx(-17.5), pytest.approx(-35.0))
    assert "| mrt | -17.5 ± 0.0 | -35.0 ± 0.0 |" in md
    # budget adherence over seeds, for the models that have it: used 32 + seed -> 33.0 ± 2.5; |error| seed + 1
    assert "| mrt | 32 | 3 | 33.0 ± 2.5 | 2.0 ± 2.5 | 50 ± 0 | 71.0 ± 2.5 |" in md
    assert "| mrt | 64 | 3 | 65.0 ± 2.5 |" in md and "| grpo | 32 |" not in md
    assert grid["adherence"]["mrt"]["64"]["used_mean"]["mean"] == pytest.approx(65.0)
    for png in ("pareto_ci.png", "paired_vs_base.png", "paired_vs_baseline.png", "tokens_by_difficulty.png",
                "regret_vs_budget.png", "used_vs_target.png"):
        assert (tmp_path / "g" / png).stat().st_size > 1000
    assert out["members"]["mrt/seed0"] == "trained"


def test_rerun_reuses_members_and_evals(tmp_path, fakes):
    calls, train, evaluate = fakes
    ov = grid_overrides(tmp_path)
    run_grid(load_config(None, ov), None, ov, train, evaluate)
    n_train, n_eval = len(calls["train"]), len(calls["eval"])
    out = run_grid(load_config(None, ov), None, ov, train, evaluate)
    assert len(calls["train"]) == n_train and len(calls["eval"]) == n_eval
    assert set(out["members"].values()) == {"reused"}


def test_a_grid_extended_by_a_method_trains_and_evaluates_only_the_new_one(tmp_path, fakes, monkeypatch):
    """The report is rewritten after every member; a method added later (or a seed still missing) is summarised over
    the seeds it has, and a rerun with one more method trains and evaluates that method alone."""
    calls, train, evaluate = fakes
    monkeypatch.setitem(ACC, "lp", 0.58)
    monkeypatch.setitem(TOKENS, "lp", 40.0)
    ov = grid_overrides(tmp_path)
    run_grid(load_config(None, ov), None, ov, train, evaluate)
    n_train, n_eval = len(calls["train"]), len(calls["eval"])

    def fail_at_seed1(cfg):
        if cfg.seed == 1:
            raise RuntimeError("killed")
        return train(cfg)

    more = [*ov[:2], "grid.select=[grpo,mrt,lp]", "grid.seeds=[0,1,2]",
            "grid.methods.lp=[algo=length_penalty,algo.alpha=0.3]"]
    with pytest.raises(RuntimeError, match="killed"):
        run_grid(load_config(None, more), None, more, fail_at_seed1, evaluate)
    assert calls["train"][n_train:] == [("length_penalty", 0, 7)]
    assert calls["eval"][n_eval:] == [(0, ["lp"])]
    md = (tmp_path / "g" / "grid.md").read_text()
    assert "| lp | 0 | 58.0 |" in md and "| mrt | 0,1,2 | 71.0 ± 2.5 |" in md  # lp: one seed so far, no CI


@pytest.mark.parametrize(("overrides", "message"), [
    (["grid.select=[nope]"], "grid.select names ['nope']"),
    (["grid.select=[mrt]"], "grid.baseline='grpo' is not among the methods trained"),
    (["grid.seeds=[1,1]"], "without duplicates"),
    (["resume=x"], "not a grid option"),
    (["grid.methods.base=[algo=grpo]", "grid.select=[grpo,base]"], "not 'base'"),
])
def test_bad_grids_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_grid(load_config(None, overrides))


def _script(name: str):
    """scripts/<name>.py loaded as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paired_plot_joins_grids_each_against_its_own_baseline(tmp_path, fakes, capsys, monkeypatch) -> None:
    """scripts/paired_plot.py: the methods of two grid reports, labelled by grid, in one paired plot."""
    import sys

    calls, train, evaluate = fakes
    ov = grid_overrides(tmp_path)
    run_grid(load_config(None, ov), None, ov, train, evaluate)
    grid = tmp_path / "g" / "grid.json"
    monkeypatch.setattr(sys, "argv", ["paired_plot.py", str(grid), f"{grid}:cued", "--out", str(tmp_path / "p.png")])
    _script("paired_plot").main()
    out = capsys.readouterr().out
    assert "| mrt | " in out and "| mrt (cued) | " in out and "| grpo" not in out  # the baseline is the origin
    assert "+10.0 ± 0.0 |" in out  # mrt - grpo: +10 points on every seed
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_grid_summaries_from_training_runs_alone(tmp_path, capsys, monkeypatch) -> None:
    """scripts/grid_summaries.py: seed statistics from the members' summary.json and first metrics row (the base)."""
    import sys

    for method, accs in (("grpo", (0.40, 0.30, 0.50)), ("mrt", (0.44, 0.31, 0.53))):
        for seed, acc in enumerate(accs):
            d = tmp_path / method / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "summary.json").write_text(json.dumps({"eval/sampled_accuracy": acc, "eval/greedy_accuracy": acc,
                                                        "eval/sampled_tokens_mean": 50.0 + seed}))
            (d / "metrics.jsonl").write_text(json.dumps({"step": -1, "eval/sampled_accuracy": 0.35,
                                                         "eval/greedy_accuracy": 0.5,
                                                         "eval/sampled_tokens_mean": 70.0}) + "\n")
    mod = _script("grid_summaries")
    monkeypatch.setattr(sys, "argv", ["grid_summaries.py", str(tmp_path)])
    mod.main()
    out = capsys.readouterr().out
    assert "| base | 0,1,2 | 35.0 ± 0.0 (n=3) |" in out
    # mrt - grpo per seed: 4, 1, 3 points -> mean 2.67, sd 1.53, t(2) 4.303 -> half-width 3.79
    assert "| mrt | 0,1,2 | 2.7 ± 3.8 (n=3) |" in out


def test_step_overhead_sums_the_phases_of_a_run(tmp_path, capsys, monkeypatch) -> None:
    """scripts/step_overhead.py: every phase summed over the steps, and the step time outside them."""
    import sys

    rows = [{"step": -1, "eval/sampled_accuracy": 0.5}]  # the base evaluation row has no step timings
    rows += [{"step": s, "step_seconds": 10.0, "generate_seconds": 5.0, "advantage_seconds": 1.0,
              "learn_seconds_wall": 3.0, "push_seconds": 0.5} for s in range(4)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    mod = _script("step_overhead")
    s = mod.summary(tmp_path)
    assert s["steps"] == 4 and s["step_s"] == 40.0 and s["advantage_seconds"] == 4.0
    assert s["overhead_all_phases"] == pytest.approx(10 / 9.5)
    assert s["overhead_vs_generate_learn"] == pytest.approx(10 / 8)
    monkeypatch.setattr(sys, "argv", ["step_overhead.py", str(tmp_path)])
    mod.main()
    assert "| 4 | 40.000 |" in capsys.readouterr().out
