"""Where a run reports: `metrics.jsonl` (one JSON object per step), the console (a progress bar with the headline
numbers) and W&B (offline by default; online with `wandb.mode=online`, or `auto` with WANDB_API_KEY set).
Secrets never reach the config that is logged."""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from tqdm import tqdm

from mrt_ray import console
from mrt_ray.config import Config, to_dict
from mrt_ray.report.traces import scale, trace_html

# secret-looking names (config keys and env vars); not `max_new_tokens` or `question_key`, which are no secrets
SECRET = re.compile(r"(api_?key|access_?key|private_?key|secret|passw(or)?d|credential|^(key|token)$|_token$)", re.I)
HEADLINE = ("reward", "accuracy", "tokens_mean", "kl", "step_seconds")
SAMPLE_COLUMNS = ["prompt", "completion", "reward", "length", "episodes", "progress", "trace"]


def redact(obj):
    """Copy of a config dict with secret-looking keys masked (and any value equal to a secret env var)."""
    secrets = {v for k, v in os.environ.items() if SECRET.search(k) and len(v) >= 8}
    if isinstance(obj, dict):
        return {k: ("***" if SECRET.search(str(k)) and v not in ("", None) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, str) and any(s in obj for s in secrets):
        return "***"
    return obj


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


class Tracker:
    def __init__(self, cfg: Config, run_dir: Path, total_steps: int, start_step: int = 0, wandb_id: str = "",
                 desc: str = "train", unit: str = "step"):
        self.cfg, self.dir = cfg, run_dir
        self.metrics_path = run_dir / "metrics.jsonl"
        self.samples_path = run_dir / "samples.jsonl"
        self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, unit=unit, dynamic_ncols=True,
                        file=console.term())
        self.wandb = None
        self.wandb_id = wandb_id
        mode = cfg.wandb.mode
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        if mode != "disabled":
            self._start_wandb(mode)

    def _start_wandb(self, mode: str) -> None:
        import wandb

        wc = self.cfg.wandb
        wdir = self.dir / "wandb_files"
        wdir.mkdir(parents=True, exist_ok=True)
        for var, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"),
                         ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts")):
            os.environ[var] = str(wdir / sub)  # this run's own dirs (a sweep runs several in one process)
        kwargs = dict(
            project=wc.project, entity=wc.entity or None, group=wc.group or None, tags=list(wc.tags) or None,
            name=wc.name or self.cfg.run.name, dir=str(wdir), mode=mode, config=redact(to_dict(self.cfg)),
            id=self.wandb_id or None, resume="allow" if self.wandb_id else None,
        )
        self.wandb = wandb.init(**kwargs)
        self.wandb_id = self.wandb.id
        # W&B's own step starts at 0 and only increases, so it would drop step -1 (the evaluation before training)
        # and the steps a resumed run logs again: every metric is plotted against our `step` instead
        self.wandb.define_metric("step")
        self.wandb.define_metric("*", step_metric="step")

    def truncate(self, last_step: int) -> None:
        """Drop metrics and sampled traces past `last_step` (a resumed run rewrites them)."""
        for path in (self.metrics_path, self.samples_path):
            if not path.exists():
                continue
            keep = []
            for ln in path.read_text().splitlines():
                try:
                    row = json.loads(ln)
                except json.JSONDecodeError:  # a line torn by a killed process
                    continue
                if row.get("step", -1) <= last_step:
                    keep.append(ln)
            path.write_text("".join(ln + "\n" for ln in keep))

    def log(self, step: int, metrics: dict, advance: bool = True) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if v is not None})
        if advance:
            self.bar.update(1)
            shown = {k: f"{metrics[k]:.3g}" for k in HEADLINE if isinstance(metrics.get(k), (int, float))}
            self.bar.set_postfix(shown, refresh=False)

    def table(self, name: str, columns: list[str], rows: list[list], step: int) -> None:
        if self.wandb is not None:
            import wandb

            self.wandb.log({"step": step, name: wandb.Table(columns=columns, data=rows)})

    def samples(self, step: int, records: list[dict]) -> None:
        """Sampled traces (`report.traces.trace_records`): appended to samples.jsonl for the report's trace viewer
        and, with W&B, a table whose `trace` cells show each trace with its episodes coloured by progress."""
        with self.samples_path.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        if self.wandb is not None:
            import wandb

            vmax = scale(records)
            rows = [[r["prompt"], "".join(text for text, _ in r["segments"]), r["reward"], r["length"],
                     json.dumps(r["spans"]), json.dumps(r["progress"]), wandb.Html(trace_html(r, vmax), inject=False)]
                    for r in records]
            self.table("samples", SAMPLE_COLUMNS, rows, step)

    def image(self, name: str, path: Path, step: int | None = None) -> None:
        if self.wandb is not None:
            import wandb

            self.wandb.log({name: wandb.Image(str(path)), **({} if step is None else {"step": step})})

    def close(self) -> None:
        self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()
