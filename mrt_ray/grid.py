"""`mrt-ray grid`: a method x seed grid, the evidence behind every method comparison.

Every (method, seed) is one training run in <run.dir>/<method>/seed<s>, configured as the command's own overrides,
then the method's (`grid.methods[<method>]`: presets first, as always), then `seed=<s>`. Seeds run in the outer loop,
so after the first seed every method has one finished run. Rerunning with the same run.dir continues an interrupted
grid (`mrt_ray.members`). Then, per seed, ONE `mrt-ray eval` of the seed's base policy and every method's final
checkpoint (<run.dir>/eval/seed<s>: the same eval problems for all of them), and the seed statistics
(`mrt_ray.grid_report`): grid.json, grid.md and plots in <run.dir>.
"""
from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path

from mrt_ray.config import Config, ConfigError, load_config, to_yaml
from mrt_ray.members import TrainFn, run_member
from mrt_ray.validation import validate


def check_grid(cfg: Config) -> list[str]:
    """The method labels to train, in grid.methods order; ConfigError for a grid that cannot mean what it says."""
    gc = cfg.grid
    if cfg.resume:
        raise ConfigError(f"resume={cfg.resume!r} is not a grid option: rerun the grid with run.dir=<grid dir> to "
                          f"continue it")
    if not gc.seeds or len(set(gc.seeds)) != len(gc.seeds):
        raise ConfigError(f"grid.seeds={list(gc.seeds)} must be non-empty and without duplicates")
    unknown = [m for m in gc.select if m not in gc.methods]
    if unknown:
        raise ConfigError(f"grid.select names {unknown}, not in grid.methods {sorted(gc.methods)}")
    labels = [m for m in gc.methods if not gc.select or m in gc.select]
    if gc.baseline not in labels:
        raise ConfigError(f"grid.baseline={gc.baseline!r} is not among the methods trained {labels}")
    bad = [m for m in labels if not m.replace("_", "").isalnum()]
    if bad:
        raise ConfigError(f"grid.methods labels {bad} must be letters, digits and '_' (they name directories)")
    return labels


def member_config(config_file: str | None, overrides: list[str], method: list[str], root: Path, label: str,
                  seed: int) -> Config:
    """One member's configuration: the grid command's overrides, then the method's, then its seed and directory."""
    m = load_config(config_file, [*overrides, *method, f"seed={seed}", f"run.dir={root / label / f'seed{seed}'}"])
    validate(m)
    m.wandb.group = m.wandb.group or root.name
    m.wandb.name = f"{label}-seed{seed}"
    return m


def run_grid(cfg: Config, config_file: str | None = None, overrides: list[str] = (),
             train_fn: TrainFn | None = None, eval_fn=None) -> dict:
    """Train every member (reusing finished ones), evaluate per seed, write the seed statistics."""
    labels = check_grid(cfg)
    if train_fn is None:
        from mrt_ray.trainer import train as train_fn  # late: Ray, DeepSpeed and vLLM load only when training
    root = Path(cfg.run.dir or f"runs/grid-{datetime.now():%Y%m%d-%H%M%S}")
    own = [o for o in overrides if not o.startswith(("run.dir=", "seed="))]
    members = {(label, s): member_config(config_file, own, cfg.grid.methods[label], root, label, s)
               for s in cfg.grid.seeds for label in labels}  # all validated before anything trains
    root.mkdir(parents=True, exist_ok=True)
    (root / "grid_config.yaml").write_text(to_yaml(cfg))
    status = {}
    for (label, s), m in members.items():
        _, status[f"{label}/seed{s}"] = run_member(m, train_fn)
    out = {"dir": str(root), "members": status}
    if cfg.grid.evaluate:
        evals = {s: evaluate_seed(cfg, root, labels, s, eval_fn) for s in cfg.grid.seeds}
        from mrt_ray.grid_report import write_report

        out.update(write_report(cfg, root, labels, evals))
    (root / "grid_status.json").write_text(json.dumps(out, indent=2))
    return out


def evaluate_seed(cfg: Config, root: Path, labels: list[str], seed: int, eval_fn=None) -> dict:
    """eval.json of one seed: the base policy and every method's final checkpoint on the same eval problems (made
    once; an existing eval.json is reused)."""
    out = root / "eval" / f"seed{seed}"
    if (out / "eval.json").is_file():
        return json.loads((out / "eval.json").read_text())
    from mrt_ray.models import resolve_model

    ecfg = copy.deepcopy(cfg)
    ecfg.seed, ecfg.run.dir = seed, str(out)
    ecfg.wandb.name = f"eval-seed{seed}"
    models = [("base", resolve_model(ecfg))] + [(label, str(root / label / f"seed{seed}")) for label in labels]
    if eval_fn is None:
        from mrt_ray.eval.runner import run_eval as eval_fn
    eval_fn(ecfg, models)
    return json.loads((out / "eval.json").read_text())
