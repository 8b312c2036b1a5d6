"""`mrt-ray sweep`: the length-penalty family of models (Arora & Zanette), one model per alpha in sweep.alphas.

Every member is the same configuration (algo=length_penalty: RLOO advantages, plus the user's overrides: same seed
and steps) with only algo.alpha changed, trained sequentially by `mrt_ray.trainer.train` in <run.dir>/alpha_<a>
(run.dir default: runs/sweep-<time>). Rerunning with the same run.dir continues an interrupted sweep: a member with
summary.json is not retrained, one with a complete checkpoint resumes from it, one killed before its first checkpoint
starts again. Then <run.dir> gets sweep.json, sweep.md (the table) and pareto.png (held-out sampled accuracy against
mean completion tokens, one point per alpha, accuracy stderr bars), also logged to W&B (offline by default).
"""
from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from mrt_ray import console
from mrt_ray.config import Config, ConfigError, to_yaml
from mrt_ray.eval.plots import plot_pareto
from mrt_ray.members import TrainFn, run_member
from mrt_ray.tracking import Tracker

REQUIRED = ("eval/sampled_accuracy", "eval/sampled_accuracy_se", "eval/sampled_tokens_mean")
COLUMNS = ["alpha", "sampled_accuracy", "sampled_accuracy_se", "sampled_tokens_mean", "sampled_tokens_se",
           "greedy_accuracy", "greedy_accuracy_se", "greedy_tokens_mean"]


def member_name(alpha: float) -> str:
    return f"alpha_{alpha:g}"


def check_sweep(cfg: Config) -> None:
    """Reject a sweep that cannot mean what it says, before anything trains."""
    if cfg.resume:
        raise ConfigError(f"resume={cfg.resume!r} is not a sweep option: rerun the sweep with run.dir=<sweep dir> to "
                          f"continue it")
    if cfg.algo.reward != "length_penalty":
        raise ConfigError(f"sweep trains the length-penalty family: algo.reward must be length_penalty, got "
                          f"{cfg.algo.reward!r} (use algo=length_penalty)")
    alphas = cfg.sweep.alphas
    if not alphas:
        raise ConfigError("sweep.alphas is empty: give at least one alpha, e.g. sweep.alphas=[0.0,0.2]")
    for i, a in enumerate(alphas):
        if not 0.0 <= a < 1.0:
            raise ConfigError(f"sweep.alphas[{i}]={a} must be in [0, 1)")
    names = [member_name(a) for a in alphas]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep.alphas={list(alphas)} has duplicates (member directories {names})")


def member_config(cfg: Config, root: Path, alpha: float) -> Config:
    """The sweep's configuration (validated by load_config; check_sweep has checked alpha) with algo.alpha=alpha,
    run.dir=<root>/alpha_<a> and a W&B name and group per member."""
    m = copy.deepcopy(cfg)
    m.algo.alpha = float(alpha)
    m.run.dir = str(root / member_name(alpha))
    m.wandb.name = f"{cfg.wandb.name or root.name}-{member_name(alpha)}"
    m.wandb.group = cfg.wandb.group or root.name
    return m


def member_row(alpha: float, summary: dict, source: str) -> dict:
    """One table row from a member's summary; absent greedy metrics / tokens stderr are None."""
    missing = [k for k in REQUIRED if summary.get(k) is None]
    if missing:
        raise ValueError(f"{source}: the summary lacks {missing} (the held-out metrics of mrt_ray.eval.heldout)")
    return {
        "alpha": alpha,
        "sampled_accuracy": summary["eval/sampled_accuracy"],
        "sampled_accuracy_se": summary["eval/sampled_accuracy_se"],
        "sampled_tokens_mean": summary["eval/sampled_tokens_mean"],
        "sampled_tokens_se": summary.get("eval/sampled_tokens_se"),
        "greedy_accuracy": summary.get("eval/greedy_accuracy"),
        "greedy_accuracy_se": summary.get("eval/greedy_accuracy_se"),
        "greedy_tokens_mean": summary.get("eval/greedy_tokens_mean"),
    }


def _pm(value: float | None, se: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ± {se or 0.0:.3f}"


def _tokens(value: float | None, se: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if se is None else f"{value:.1f} ± {se:.1f}"


def markdown(rows: Sequence[dict], cfg: Config) -> str:
    """sweep.md: what was trained, the table, and the plot."""
    lines = [
        "# Length-penalty sweep",
        "",
        f"{len(rows)} models, algo.reward=length_penalty, algo.advantage={cfg.algo.advantage}, seed {cfg.seed}, "
        f"{cfg.train.steps} steps each; held-out: {cfg.eval.size} prompts, {cfg.eval.n_samples} samples each at "
        f"temperature {cfg.eval.temperature:g} (accuracy ± standard error over prompts).",
        "",
        "| alpha | sampled accuracy | greedy accuracy | mean tokens (sampled) | mean tokens (greedy) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['alpha']:g} | {_pm(r['sampled_accuracy'], r['sampled_accuracy_se'])} | "
                     f"{_pm(r['greedy_accuracy'], r['greedy_accuracy_se'])} | "
                     f"{_tokens(r['sampled_tokens_mean'], r['sampled_tokens_se'])} | "
                     f"{_tokens(r['greedy_tokens_mean'])} |")
    if any(r["sampled_tokens_se"] is None for r in rows):
        lines += ["", "The summaries record no standard error of mean tokens: the plot's token error bars are 0."]
    lines += ["", "![accuracy vs mean completion tokens](pareto.png)", ""]
    return "\n".join(lines)


def pareto_points(rows: Sequence[dict]) -> list[tuple[str, float, float, float, float]]:
    """(label, tokens, accuracy, accuracy se, tokens se or 0) per alpha, for plots.plot_pareto."""
    return [(f"α={r['alpha']:g}", r["sampled_tokens_mean"], r["sampled_accuracy"], r["sampled_accuracy_se"],
             r["sampled_tokens_se"] or 0.0) for r in rows]


def log_wandb(cfg: Config, root: Path, rows: Sequence[dict], plot: Path) -> None:
    """The table and the plot as one W&B run of the sweep's group."""
    wcfg = copy.deepcopy(cfg)
    wcfg.wandb.name = cfg.wandb.name or root.name
    wcfg.wandb.group = cfg.wandb.group or root.name
    tracker = Tracker(wcfg, root, len(rows), desc="sweep members", unit="member")
    tracker.bar.update(len(rows))
    try:
        tracker.table("sweep/table", COLUMNS, [[r[c] for c in COLUMNS] for r in rows], step=0)
        tracker.image("sweep/pareto", plot, step=0)
    finally:
        tracker.close()


def run_sweep(cfg: Config, train_fn: TrainFn | None = None) -> dict:
    """Train every member (skipping finished ones), then write sweep.json, sweep.md and pareto.png."""
    check_sweep(cfg)
    if train_fn is None:
        from mrt_ray.trainer import train as train_fn  # late: Ray, DeepSpeed and vLLM load only when training
    root = Path(cfg.run.dir or f"runs/sweep-{datetime.now():%Y%m%d-%H%M%S}")
    cfg = copy.deepcopy(cfg)
    cfg.run.dir = str(root)
    members = [member_config(cfg, root, a) for a in cfg.sweep.alphas]
    root.mkdir(parents=True, exist_ok=True)
    console.attach(root, "sweep")  # quiet console: the libraries' output to logs/ (each member: its own run's)
    (root / "sweep_config.yaml").write_text(to_yaml(cfg))
    results, rows = [], []
    for m in members:
        summary, status = run_member(m, train_fn)
        rows.append(member_row(m.algo.alpha, summary, str(Path(m.run.dir) / "summary.json")))
        results.append({"alpha": m.algo.alpha, "dir": m.run.dir, "status": status, "summary": summary})
    console.attach(root, "sweep")
    plot = plot_pareto(pareto_points(rows), root / "pareto.png")
    (root / "sweep.md").write_text(markdown(rows, cfg))
    report = {"dir": str(root), "seed": cfg.seed, "steps": cfg.train.steps, "alphas": list(cfg.sweep.alphas),
              "members": results, "table": rows, "plot": str(plot)}
    (root / "sweep.json").write_text(json.dumps(report, indent=2))
    log_wandb(cfg, root, rows, plot)
    return {"dir": str(root), "sweep_json": str(root / "sweep.json"), "sweep_md": str(root / "sweep.md"),
            "plot": str(plot), "table": rows}
