"""`mrt-ray sweep`: members, table, plot, W&B and continuation, with a fake train function writing hand-set summaries
(the real training stack is covered by test_spine.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mrt_ray import sweep
from mrt_ray.checkpoint import write_manifest
from mrt_ray.config import Config, ConfigError, from_yaml_file, load_config, to_yaml

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# held-out metrics per alpha, as mrt_ray.trainer.train returns them; alpha 0.4 ran without greedy eval and with a
# tokens stderr recorded
SUMMARIES = {
    0.0: {"eval/sampled_accuracy": 0.8, "eval/sampled_accuracy_se": 0.05, "eval/sampled_tokens_mean": 120.0,
          "eval/greedy_accuracy": 0.85, "eval/greedy_accuracy_se": 0.04, "eval/greedy_tokens_mean": 110.5},
    0.1: {"eval/sampled_accuracy": 0.78, "eval/sampled_accuracy_se": 0.06, "eval/sampled_tokens_mean": 80.25,
          "eval/greedy_accuracy": 0.8, "eval/greedy_accuracy_se": 0.05, "eval/greedy_tokens_mean": 70.0},
    0.4: {"eval/sampled_accuracy": 0.5, "eval/sampled_accuracy_se": 0.07, "eval/sampled_tokens_mean": 40.0,
          "eval/sampled_tokens_se": 2.5},
}


class FakeTrain:
    """Behaves like mrt_ray.trainer.train on disk: config.yaml + metrics.jsonl, then summary.json."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, bool]] = []  # (alpha, resumed)
        self.configs: list[Config] = []

    def __call__(self, cfg: Config) -> dict:
        resumed = bool(cfg.resume)
        d = Path(cfg.resume or cfg.run.dir)
        if resumed:
            cfg = from_yaml_file(d / "config.yaml")
        else:
            if (d / "metrics.jsonl").exists():
                raise FileExistsError(f"run.dir={d} already holds a run")
            d.mkdir(parents=True, exist_ok=True)
            (d / "config.yaml").write_text(to_yaml(cfg))
            (d / "metrics.jsonl").write_text("{}\n")
        self.calls.append((cfg.algo.alpha, resumed))
        self.configs.append(cfg)
        summary = {"steps": cfg.train.steps, **SUMMARIES[cfg.algo.alpha]}
        (d / "summary.json").write_text(json.dumps(summary))
        return summary


class FakeTracker:
    """Records what the sweep logs to W&B."""

    logged: list[tuple] = []

    def __init__(self, cfg: Config, run_dir: Path, total_steps: int, desc: str, unit: str) -> None:
        self.cfg, self.bar = cfg, self
        FakeTracker.logged = [("init", cfg.wandb.name, cfg.wandb.group, str(run_dir), desc)]

    def update(self, n: int) -> None:
        FakeTracker.logged.append(("members", n))

    def table(self, name: str, columns: list[str], rows: list[list], step: int) -> None:
        FakeTracker.logged.append(("table", name, columns, rows, step))

    def image(self, name: str, path: Path, step: int | None = None) -> None:
        FakeTracker.logged.append(("image", name, Path(path).read_bytes()[:8], step))

    def close(self) -> None:
        FakeTracker.logged.append(("close",))


@pytest.fixture
def make_cfg(tmp_path):
    def make(*overrides: str) -> Config:
        return load_config(None, ["algo=length_penalty", f"run.dir={tmp_path}/sw", "seed=7", "train.steps=3",
                                  "sweep.alphas=[0.0,0.1,0.4]", "wandb.mode=disabled", *overrides])

    return make


@pytest.fixture
def plotted(monkeypatch):
    """The points handed to plot_pareto (the real plot is still drawn)."""
    seen: list = []

    def spy(points, path):
        seen.append(list(points))
        return real(points, path)

    real = sweep.plot_pareto
    monkeypatch.setattr(sweep, "plot_pareto", spy)
    return seen


def test_sweep_trains_each_alpha_and_writes_table_plot_json(make_cfg, tmp_path, plotted, monkeypatch):
    monkeypatch.setattr(sweep, "Tracker", FakeTracker)
    train = FakeTrain()
    out = sweep.run_sweep(make_cfg("algo.kl_coef=0.01"), train)
    root = tmp_path / "sw"
    assert train.calls == [(0.0, False), (0.1, False), (0.4, False)]
    for cfg, name in zip(train.configs, ("alpha_0", "alpha_0.1", "alpha_0.4")):
        assert cfg.run.dir == str(root / name)
        assert (cfg.seed, cfg.train.steps, cfg.algo.kl_coef) == (7, 3, 0.01)  # every override reaches every member
        assert (cfg.algo.name, cfg.algo.advantage, cfg.algo.reward) == ("length_penalty", "rloo", "length_penalty")
        assert (cfg.wandb.name, cfg.wandb.group) == (f"sw-{name}", "sw")
    md = (root / "sweep.md").read_text()
    assert "| 0 | 0.800 ± 0.050 | 0.850 ± 0.040 | 120.0 | 110.5 |" in md
    assert "| 0.1 | 0.780 ± 0.060 | 0.800 ± 0.050 | 80.2 | 70.0 |" in md  # 80.25 rounds half to even
    assert "| 0.4 | 0.500 ± 0.070 | - | 40.0 ± 2.5 | - |" in md
    assert "token error bars are 0" in md and "seed 7, 3 steps each" in md and "algo.advantage=rloo" in md
    assert plotted == [[("α=0", 120.0, 0.8, 0.05, 0.0), ("α=0.1", 80.25, 0.78, 0.06, 0.0),
                        ("α=0.4", 40.0, 0.5, 0.07, 2.5)]]
    assert (root / "pareto.png").read_bytes()[:8] == PNG_MAGIC
    report = json.loads((root / "sweep.json").read_text())
    assert report["alphas"] == [0.0, 0.1, 0.4] and (report["seed"], report["steps"]) == (7, 3)
    assert [m["status"] for m in report["members"]] == ["trained"] * 3
    assert report["members"][2]["summary"] == {"steps": 3, **SUMMARIES[0.4]}
    assert report["table"][0] == {"alpha": 0.0, "sampled_accuracy": 0.8, "sampled_accuracy_se": 0.05,
                                  "sampled_tokens_mean": 120.0, "sampled_tokens_se": None, "greedy_accuracy": 0.85,
                                  "greedy_accuracy_se": 0.04, "greedy_tokens_mean": 110.5}
    assert out["table"] == report["table"] and out["plot"] == str(root / "pareto.png")
    assert from_yaml_file(root / "sweep_config.yaml").algo.kl_coef == 0.01
    init, members, table, image, close = FakeTracker.logged
    assert init == ("init", "sw", "sw", str(root), "sweep members") and members == ("members", 3)
    assert table[:3] == ("table", "sweep/table", sweep.COLUMNS)
    assert table[3][2] == [0.4, 0.5, 0.07, 40.0, 2.5, None, None, None]
    assert image == ("image", "sweep/pareto", PNG_MAGIC, 0) and close == ("close",)


def test_sweep_continues_an_interrupted_sweep(make_cfg, tmp_path):
    root = tmp_path / "sw"
    sweep.run_sweep(make_cfg("sweep.alphas=[0.0]"), FakeTrain())  # alpha 0 finished
    cfg = make_cfg()
    # alpha 0.1 died after a checkpoint; alpha 0.4 died before its first one (metrics.jsonl only)
    for alpha, ckpt in ((0.1, True), (0.4, False)):
        m = sweep.member_config(cfg, root, alpha)
        d = Path(m.run.dir)
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(to_yaml(m))
        (d / "metrics.jsonl").write_text('{"step": -1}\n')
        if ckpt:
            (d / "checkpoints" / "step_000001").mkdir(parents=True)
            (d / "checkpoints" / "step_000001" / "trainer_state.json").write_text('{"step": 1}')
            write_manifest(d / "checkpoints" / "step_000001")
            (d / "checkpoints" / "latest").write_text("step_000001")
    train = FakeTrain()
    sweep.run_sweep(cfg, train)
    assert train.calls == [(0.1, True), (0.4, False)]
    report = json.loads((root / "sweep.json").read_text())
    assert [m["status"] for m in report["members"]] == ["reused", "resumed", "trained"]
    assert [r["sampled_accuracy"] for r in report["table"]] == [0.8, 0.78, 0.5]
    again = FakeTrain()
    sweep.run_sweep(cfg, again)  # all done: nothing retrains, the outputs are rewritten
    assert again.calls == []
    assert "| 0.1 | 0.780 ± 0.060 |" in (root / "sweep.md").read_text()


def test_sweep_refuses_a_member_trained_with_other_settings(make_cfg):
    sweep.run_sweep(make_cfg("sweep.alphas=[0.1]"), FakeTrain())
    with pytest.raises(ConfigError, match=r"alpha_0.1/config.yaml was trained with other settings \(train.steps: "
                                          r"3 there, 5 now\)"):
        sweep.run_sweep(make_cfg("sweep.alphas=[0.1]", "train.steps=5"), FakeTrain())
    again = FakeTrain()  # how the weights travel and how long to wait are not what a member trains: reused
    sweep.run_sweep(make_cfg("sweep.alphas=[0.1]", "learner.push_bucket_mib=8", "learner.collective_timeout_s=60"),
                    again)
    assert again.calls == []


def test_sweep_reuses_a_member_whose_derived_layout_was_recorded(make_cfg):
    """learner.num_ranks=0 is derived at start and the member's config.yaml records the number: asking 0 again
    reuses it; asking another number explicitly does not."""
    cfg = make_cfg("sweep.alphas=[0.1]")
    sweep.run_sweep(cfg, FakeTrain())
    member = next(Path(cfg.run.dir).glob("*/config.yaml"))
    member.write_text(member.read_text().replace("num_ranks: 0", "num_ranks: 1"))
    again = FakeTrain()
    sweep.run_sweep(make_cfg("sweep.alphas=[0.1]"), again)
    assert again.calls == []
    with pytest.raises(ConfigError, match="learner.num_ranks: 1 there, 2 now"):
        sweep.run_sweep(make_cfg("sweep.alphas=[0.1]", "learner.num_ranks=2"), FakeTrain())


@pytest.mark.parametrize("overrides, match", [
    (["algo=grpo"], "algo.reward must be length_penalty, got 'outcome'"),
    (["sweep.alphas=[0.1,1.0]"], r"sweep.alphas\[1\]=1.0 must be in \[0, 1\)"),
    (["sweep.alphas=[0.1,0.10]"], "has duplicates"),
    (["sweep.alphas=[]"], "sweep.alphas is empty"),
    (["resume=runs/x"], "not a sweep option"),
])
def test_sweep_rejects_bad_settings_before_training(make_cfg, tmp_path, overrides, match):
    train = FakeTrain()
    with pytest.raises(ConfigError, match=match):
        sweep.run_sweep(make_cfg(*overrides), train)
    assert train.calls == [] and not (tmp_path / "sw").exists()


def test_member_row_names_the_summary_that_lacks_a_metric():
    with pytest.raises(ValueError, match=r"runs/a/summary.json: the summary lacks \['eval/sampled_tokens_mean'\]"):
        sweep.member_row(0.2, {"eval/sampled_accuracy": 0.5, "eval/sampled_accuracy_se": 0.1}, "runs/a/summary.json")


def test_sweep_logs_table_and_plot_to_wandb_offline(make_cfg, tmp_path):
    sweep.run_sweep(make_cfg("wandb.mode=offline", "sweep.alphas=[0.0,0.4]"), FakeTrain())
    runs = list((tmp_path / "sw" / "wandb_files" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


def test_cli_sweep_puts_the_preset_before_the_overrides(tmp_path, monkeypatch, capsys):
    from mrt_ray.cli import main

    seen = []
    monkeypatch.setattr(sweep, "run_sweep", lambda cfg: seen.append(cfg) or {"dir": cfg.run.dir})
    assert main(["sweep", f"run.dir={tmp_path}/s", "algo.advantage=grpo"]) == 0
    assert (seen[0].algo.name, seen[0].algo.reward, seen[0].algo.advantage) == ("length_penalty", "length_penalty",
                                                                                 "grpo")
    assert json.loads(capsys.readouterr().out) == {"dir": f"{tmp_path}/s"}
    monkeypatch.undo()
    assert main(["sweep", "algo=grpo", f"run.dir={tmp_path}/s"]) == 2
    assert "algo.reward must be length_penalty" in capsys.readouterr().err
