"""What a report reads: training runs (config.yaml, metrics.jsonl, samples.jsonl, summary.json), evaluations
(eval.json of `mrt-ray eval`), runs grouped by configuration (several seeds of one config form one group), and the
statistics drawn from them: per-step series, means with 95% confidence intervals over seeds (Student's t)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from mrt_ray.config import ConfigError

# keys that differ between seeds of one configuration without making it another configuration
IGNORED = ("seed", "run.dir", "run.name", "resume", "wandb.name", "wandb.group", "wandb.tags")


@dataclass
class Run:
    dir: Path
    config: dict  # flat: {"algo.name": "mrt", ...}
    rows: list[dict]  # metrics.jsonl
    samples: list[dict] = field(default_factory=list)  # samples.jsonl (report.traces records)
    summary: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.dir.name

    def series(self, key: str, evals: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of `key`: training steps (step >= 0 rows that have step_seconds), or, with `evals`,
        the held-out evaluations at the number of updates before them (0 before training; a training row's
        evaluation follows its step's update: step + 1; the final one: train.steps)."""
        def x(r: dict) -> int:
            return r["step"] + 1 if evals and "step_seconds" in r else max(r["step"], 0)

        rows = [r for r in self.rows if isinstance(r.get(key), (int, float)) and (evals or "step_seconds" in r)]
        pts = sorted((x(r), r[key]) for r in rows)
        return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)

    def has(self, key: str) -> bool:
        return any(isinstance(r.get(key), (int, float)) for r in self.rows)

    def final(self, key: str) -> float | None:
        """The last logged value of `key` (for eval/* keys: the evaluation after training)."""
        vals = [r[key] for r in self.rows if isinstance(r.get(key), (int, float))]
        return vals[-1] if vals else None


@dataclass
class Eval:
    path: Path  # eval.json
    report: dict

    @property
    def name(self) -> str:
        return self.path.parent.name


@dataclass
class Group:
    label: str  # the settings that tell this group from the others, e.g. "algo.name=mrt"
    runs: list[Run]

    @property
    def seeds(self) -> list:
        return [r.config.get("seed") for r in self.runs]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a line torn by a killed process is skipped."""
    rows = []
    for ln in path.read_text().splitlines():
        try:
            rows.append(json.loads(ln))
        except json.JSONDecodeError:
            continue
    return rows


def load_run(d: Path) -> Run:
    for name in ("metrics.jsonl", "config.yaml"):
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d}: no {name} (not an mrt-ray training run directory)")
    try:
        config = yaml.safe_load((d / "config.yaml").read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{d / 'config.yaml'}: not valid YAML ({str(e).splitlines()[0]})") from None
    samples = _jsonl(d / "samples.jsonl") if (d / "samples.jsonl").is_file() else []
    summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").is_file() else {}
    return Run(d, _flat(config), _jsonl(d / "metrics.jsonl"), samples, summary)


def load_eval(path: Path) -> Eval:
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(report, dict) or not isinstance(report.get("models"), dict):
        raise ConfigError(f"{path}: no 'models' table (not an eval.json written by `mrt-ray eval`)")
    return Eval(path, report)


def load(paths: list[Path]) -> tuple[list[Run], list[Eval]]:
    """Runs and evaluations named by `paths`: a run directory (metrics.jsonl), an eval directory or eval.json file,
    or a directory whose subdirectories are runs (a sweep)."""
    runs, evals = [], []
    for p in paths:
        if p.is_file() and p.suffix == ".json":
            evals.append(load_eval(p))
        elif (p / "metrics.jsonl").is_file():
            runs.append(load_run(p))
        elif (p / "eval.json").is_file():
            evals.append(load_eval(p / "eval.json"))
        elif p.is_dir() and any((s / "metrics.jsonl").is_file() for s in p.iterdir()):
            runs += [load_run(s) for s in sorted(p.iterdir()) if (s / "metrics.jsonl").is_file()]
        else:
            raise FileNotFoundError(f"{p}: neither a run directory (metrics.jsonl), an eval directory (eval.json) "
                                    f"nor a directory of runs")
    return runs, evals


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs with equal configurations apart from IGNORED keys form one group (the seeds of one config). A group's
    label lists the settings in which the groups differ (at most four), or the run's name when there is one group."""
    keyed: dict[str, list[Run]] = {}
    for r in runs:
        key = json.dumps({k: v for k, v in r.config.items() if k not in IGNORED}, sort_keys=True, default=str)
        keyed.setdefault(key, []).append(r)
    groups = list(keyed.values())
    configs = [g[0].config for g in groups]
    differ = sorted(k for k in set().union(*configs) if k not in IGNORED and len({json.dumps(c.get(k), default=str)
                                                                                 for c in configs}) > 1)
    out = []
    for g, c in zip(groups, configs):
        label = ", ".join(f"{k}={c.get(k)}" for k in differ[:4]) + (" ..." if len(differ) > 4 else "")
        out.append(Group(label or (g[0].name if len(g) == 1 else f"{len(g)} seeds"), g))
    return out


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t with `df` degrees of freedom, from its exact CDF for integer df
    (Abramowitz & Stegun 26.7.3-4), by bisection."""
    def inner(t: float) -> float:  # P(|T| <= t)
        th = math.atan(t / math.sqrt(df))
        c, s = math.cos(th), math.sin(th)
        if df % 2:
            term = acc = c
            for k in range(3, df - 1, 2):
                term *= c * c * (k - 1) / k
                acc += term
            return 2 / math.pi * (th + (s * acc if df > 1 else 0.0))
        term = acc = 1.0
        for k in range(2, df - 1, 2):
            term *= c * c * (k - 1) / k
            acc += term
        return s * acc

    target, lo, hi = 2 * p - 1, 0.0, 1e4
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if inner(mid) < target else (lo, mid)
    return (lo + hi) / 2


def mean_ci(values) -> tuple[float, float]:
    """Mean over seeds and the half-width of its 95% confidence interval (t with n-1 df); 0 for one value."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), 0.0
    return float(v.mean()), float(t_quantile(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def group_series(group: Group, key: str, evals: bool = False, window: int = 1) -> tuple[np.ndarray, ...]:
    """(steps, mean, CI half-width) of `key` over the group's runs, on the steps every run logged; each run's values
    first smoothed by a trailing mean over `window` steps."""
    per_run = []
    for r in group.runs:
        x, y = r.series(key, evals)
        if len(x) == 0:
            continue
        if window > 1:
            y = np.array([y[max(0, i - window + 1):i + 1].mean() for i in range(len(y))])
        per_run.append(dict(zip(x, y)))
    if not per_run:
        return np.array([]), np.array([]), np.array([])
    steps = sorted(set.intersection(*(set(d) for d in per_run)))
    stats = [mean_ci([d[s] for d in per_run]) for s in steps]
    return np.array(steps), np.array([m for m, _ in stats]), np.array([h for _, h in stats])
