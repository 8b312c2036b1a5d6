"""W&B offline run of a 2-step training, read back with wandb's own reader of the run's transaction log
(`wandb leet inspect`, wandb 0.31; the old Python `datastore` reader is gone): per-step metrics equal
metrics.jsonl's, the logged config has secrets redacted and nothing else, and the sample table is there."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import WANDB_FAKE_KEY

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.stack]

SAMPLE_COLUMNS = ["prompt", "completion", "reward", "length", "episodes", "progress", "trace"]


def _inspect(run: Path, *flags: str) -> str:
    """stdout of `wandb leet inspect --json [flags] RUN` (RUN: an offline run directory)."""
    env = {**os.environ, "WANDB_MODE": "offline"}  # offline: the reader reports nothing anywhere
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, str(run)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, f"wandb leet inspect {run} exited {out.returncode}:\n{out.stderr}"
    return out.stdout


def _history_by_step(records: list[dict]) -> dict[int, dict]:
    """History rows merged per value of our `step` metric (one train step can span several wandb.log calls)."""
    out: dict[int, dict] = {}
    for r in records:
        if r["type"] == "history":
            item = r["history"]["item"]
            out.setdefault(item["step"], {}).update(item)
    return out


def test_offline_run_reads_back(grpo_run, tiny_model):
    cfg, _ = grpo_run  # W&B offline, samples every step, WANDB_API_KEY=WANDB_FAKE_KEY, also pasted in a config value
    run_dir = Path(cfg.run.dir)
    offline = sorted((run_dir / "wandb_files" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, offline

    raw = _inspect(offline[0])
    records = [json.loads(ln) for ln in raw.splitlines() if ln.strip()]
    assert WANDB_FAKE_KEY not in raw  # not in the config, nor in any other record (console output included)

    # every row of metrics.jsonl (step -1: evaluation before training; 2: final evaluation) is in W&B, value for value
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [-1, 0, 1, 2]
    history = _history_by_step(records)
    for row in rows:
        logged = history[row["step"]]
        for key, value in row.items():
            if value is not None:
                assert logged[key] == pytest.approx(value, rel=1e-12, abs=0), (row["step"], key)
    for step in (0, 1):
        assert {"reward", "tokens_mean", "push_seconds", "generate_seconds", "learn_seconds"} <= set(history[step])

    # the sample table, every step (log_samples_every=1): 4 prompts x 2 samples, the columns the trainer names
    for step in (0, 1):
        logged = history[step]
        assert logged["samples._type"] == "table-file"
        assert (logged["samples.nrows"], logged["samples.ncols"]) == (8, len(SAMPLE_COLUMNS))
        table = json.loads((offline[0] / "files" / logged["samples.path"]).read_text())
        assert table["columns"] == SAMPLE_COLUMNS and len(table["data"]) == 8
        assert all(isinstance(r[2], (int, float)) and r[3] > 0 for r in table["data"])  # reward, length
    # the trace viewer's cells (report.traces.trace_html): the run's table artifact, which W&B's table view reads,
    # holds every trace as an HTML file (the run-file copy above names media cells only by type)
    files = {e["path"]: Path(e["local_path"]) for r in records if r["type"] == "artifact"
             for e in r["artifact"]["manifest"]["contents"] if e["path"].startswith(("samples", "media/html/"))}
    tables = [json.loads(p.read_text()) for name, p in files.items() if name.startswith("samples")]
    assert tables and all(t["columns"] == SAMPLE_COLUMNS and len(t["data"]) == 8 for t in tables)
    for row in (r for t in tables for r in t["data"]):
        assert row[6]["_type"] == "html-file" and 'class="trace"' in files[row[6]["path"]].read_text()

    # the config as W&B holds it: secrets masked, the rest verbatim (no over-eager masking of e.g. *_tokens)
    summary = json.loads(_inspect(offline[0], "--summary"))
    assert summary["state"] == "finished" and summary["project"] == "mrt-test"
    config = summary["config"]
    assert config["task"]["system_prompt"] == "***"
    assert config["rollout"]["max_new_tokens"] == 48 and config["progress"]["max_answer_tokens"] == 8
    assert config["task"]["question_key"] == "question" and config["task"]["answer_key"] == "answer"
    assert config["model"]["path"] == tiny_model and config["train"]["steps"] == 2
