"""`mrt-ray grid`: a method x seed grid, the evidence behind every method comparison.

Every (method, seed) is one training run in <run.dir>/<method>/seed<s>, configured as the command's own overrides,
then the method's (`grid.methods[<method>]`: presets first, as always), then `seed=<s>`. Seeds run in the outer loop,
so after the first seed every method has one finished run. Each member is evaluated as soon as it is trained (one
`mrt-ray eval` per model in <run.dir>/eval/seed<s>/<model>, the seed's base policy first: the eval problems and their
sampling seeds depend on the seed alone, so every model of a seed answers the same problems with the same seeds),
and the seed statistics (`mrt_ray.grid_report`: grid.json, grid.md and plots in <run.dir>) are rewritten after every
member over what is finished. Rerunning with the same run.dir continues an interrupted grid (`mrt_ray.members`;
finished evals are reused), and a grid given more methods or seeds trains and evaluates only the new members.
"""
from __future__ import annotations

import copy
import json
from datetime import datetime
from pathlib import Path

from mrt_ray import console
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
    bad = [m for m in labels if not m.replace("_", "").isalnum() or m == "base"]
    if bad:
        raise ConfigError(f"grid.methods labels {bad} must be letters, digits and '_' (they name directories), and "
                          f"not 'base' (the base policy's own label)")
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
    """Train (reusing finished members) and evaluate every member, rewriting the seed statistics after each."""
    labels = check_grid(cfg)
    from mrt_ray.grid_report import write_report  # late: matplotlib loads only when a grid runs

    if train_fn is None:
        from mrt_ray.trainer import train as train_fn  # late: Ray, DeepSpeed and vLLM load only when training
    root = Path(cfg.run.dir or f"runs/grid-{datetime.now():%Y%m%d-%H%M%S}")
    own = [o for o in overrides if not o.startswith(("run.dir=", "seed="))]
    members = {(label, s): member_config(config_file, own, cfg.grid.methods[label], root, label, s)
               for s in cfg.grid.seeds for label in labels}  # all validated before anything trains
    root.mkdir(parents=True, exist_ok=True)
    (root / "grid_config.yaml").write_text(to_yaml(cfg))
    out: dict = {"dir": str(root), "members": {}}
    evals = {s: {"seed": s, "models": {n: _read_eval(root, n, s) for n in ("base", *labels)
                                       if _eval_file(root, n, s).is_file()}}
             for s in cfg.grid.seeds}  # seed -> {"models": {label: one model's eval results}}; finished ones first
    for i, ((label, s), m) in enumerate(members.items(), 1):
        console.log.info("grid member %d/%d: %s seed %d", i, len(members), label, s)
        _, out["members"][f"{label}/seed{s}"] = run_member(m, train_fn)
        if cfg.grid.evaluate:
            models = evals[s]["models"]
            for name in [n for n in ("base", label) if n not in models]:
                models[name] = evaluate_member(cfg, root, name, s, eval_fn)
            (root / "eval" / f"seed{s}" / "eval.json").write_text(json.dumps(evals[s], indent=2))
            out.update(write_report(cfg, root, labels, evals))
        (root / "grid_status.json").write_text(json.dumps(out, indent=2))
    return out


def _eval_file(root: Path, label: str, seed: int) -> Path:
    return root / "eval" / f"seed{seed}" / label / "eval.json"


def _read_eval(root: Path, label: str, seed: int) -> dict:
    return json.loads(_eval_file(root, label, seed).read_text())["models"][label]


def evaluate_member(cfg: Config, root: Path, label: str, seed: int, eval_fn=None) -> dict:
    """One model's eval results for one seed: the seed's base policy ("base") or a member's final checkpoint, from
    <root>/eval/seed<s>/<label>/eval.json (made once; a finished one is reused)."""
    if not _eval_file(root, label, seed).is_file():
        from mrt_ray.models import resolve_model

        ecfg = copy.deepcopy(cfg)
        ecfg.seed, ecfg.run.dir = seed, str(_eval_file(root, label, seed).parent)
        ecfg.wandb.name = f"eval-{label}-seed{seed}"
        path = resolve_model(ecfg) if label == "base" else str(root / label / f"seed{seed}")
        if eval_fn is None:
            from mrt_ray.eval.runner import run_eval as eval_fn
        eval_fn(ecfg, [(label, path)])
    return _read_eval(root, label, seed)
