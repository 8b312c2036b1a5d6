"""What `mrt-ray` prints (issue 17): its own lines and one progress bar; the output of vLLM, DeepSpeed, Ray and W&B
in <run>/logs/ (driver.log and one file per actor); an actor's failure as one line with the path of its log; user
errors as one line without a traceback. The stack tests run the real CLI in a subprocess, as a user does."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from browser import render
from conftest import SMALL

from mrt_ray import cli, console
from mrt_ray.actors import logged

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m mrt_ray ARGS` as a user runs it; its output as written (bytes decoded here: text mode would turn
    the bar's carriage returns into newlines)."""
    # without conftest's RAY_AUTH_MODE: the CLI must turn token auth on itself, as in a user's shell
    env = {**{k: v for k, v in os.environ.items() if k not in ("WANDB_SERVICE", console.VERBOSE_ENV, "RAY_AUTH_MODE")},
           "PYTHONPATH": str(REPO)}
    if args[0] in ("train", "eval") and not any(a.startswith("ray.dashboard_port=") for a in args):
        # a free dashboard port: another local Ray (the test session's) holding 8265 adds a console line of its own
        from mrt_ray.utils import free_port

        args = (*args, f"ray.dashboard_port={free_port()}")
    proc = subprocess.run([sys.executable, "-m", "mrt_ray", *args], capture_output=True, cwd=REPO, env=env,
                          timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                       proc.stderr.decode(errors="replace"))


class Boom:
    def __init__(self, fail_at_start: bool = False):
        if fail_at_start:
            raise OSError("no such device\nsecond line: the last one is shown")

    def work(self, x: int) -> int:
        if x < 0:
            raise ValueError(f"x={x} is negative")
        return x


def test_actor_exceptions_get_a_one_line_note(monkeypatch, tmp_path):
    """The actor class wrapper (without Ray): exceptions keep their type and get the note the CLI prints."""
    log = tmp_path / "logs" / "learner-1.log"
    log.parent.mkdir()
    log.write_text("")
    monkeypatch.setenv(console.ACTOR_ENV, "learner rank 1")
    monkeypatch.setenv(console.ACTOR_LOG_ENV, "")  # no redirection of this (pytest's) process
    actor = logged(Boom)()
    assert actor.work(3) == 3 and type(actor).__name__ == "Boom"
    with pytest.raises(ValueError) as e:
        actor.work(-1)
    assert console.failure_line(e.value) == "learner rank 1 failed during work: ValueError: x=-1 is negative."
    with pytest.raises(OSError) as e:
        logged(Boom)(True)
    wrapped = RuntimeError("learner rank 1 failed during start: <Ray's multi-line text>")
    wrapped.__cause__ = e.value
    assert console.failure_line(wrapped) == ("learner rank 1 failed during start: OSError: second line: the last one "
                                             "is shown.")
    # an actor that failed as it started reaches the driver as text only (RayActorError): the note is in it
    monkeypatch.setenv(console.ACTOR_LOG_ENV, str(log))
    with pytest.raises(ValueError) as e:
        actor.work(-2)
    text = ray.exceptions.RaySystemError(f"an actor's creation task failed:\n{e.value.__notes__[0]}\n")
    assert console.failure_line(text) == f"learner rank 1 failed during work: ValueError: x=-2 is negative. Full " \
                                         f"log: {console.shown(log)}"
    assert console.failure_line(RuntimeError("plain")) is None


def test_missing_model_path_is_one_line_before_anything_starts(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "1+1", "answer": "#### 2"}\n')
    assert cli.main(["train", "task=gsm8k", f"task.path={data}", f"run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mrt-ray: model.path is empty") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.stack
@pytest.mark.slow
def test_train_console_is_quiet_and_the_logs_hold_the_rest(tiny_model, tmp_path):
    """A 2-step `mrt-ray train`: four console lines (the run and its logs, the actors, the bar, the result); Ray, W&B
    and vLLM output in logs/; sampled traces in samples.jsonl; `mrt-ray report` renders the run in Chromium."""
    run_dir = tmp_path / "run"
    proc = _cli("train", f"model.path={tiny_model}", f"run.dir={run_dir}", *SMALL, "wandb.mode=offline",
                "wandb.log_samples_every=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.rstrip("\n").split("\n")  # the bar redraws itself in place, with \r
    assert proc.stdout == "" and len(lines) == 4, proc.stderr
    assert lines[0].startswith(f"mrt-ray: writing {run_dir}; the output of vLLM") and "logs/" in lines[0]
    assert lines[1] == "mrt-ray: starting 2 learner ranks, 1 rollout worker on Ray"
    assert lines[2].lstrip("\r").startswith("train:") and "reward=" in lines[2]  # the bar, redrawn in place
    assert lines[3].startswith("mrt-ray: trained 2 steps") and f"mrt-ray report {run_dir}" in lines[3]
    logs = run_dir / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["driver.log", "learner-0.log", "learner-1.log", "rollout-0.log"]
    driver = (logs / "driver.log").read_text()
    assert "Started a local Ray instance" in driver and "wandb: " in driver
    assert "vLLM" in (logs / "rollout-0.log").read_text() or "WARNING" in (logs / "rollout-0.log").read_text()
    samples = [json.loads(ln) for ln in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [0] * 8 + [1] * 8
    assert all("".join(t for t, _ in s["segments"]) for s in samples)

    report = _cli("report", str(run_dir), timeout=300)
    assert report.returncode == 0 and report.stderr == f"mrt-ray: wrote {run_dir / 'report.html'}\n", report.stderr
    page = render(run_dir / "report.html")
    assert len(page.images) == 3 and all(i["complete"] and i["natural"][0] > 300 for i in page.images)
    assert len(page.traces) == 8


@pytest.mark.stack
@pytest.mark.slow
def test_actor_failure_is_one_line_with_its_log(tiny_model, tmp_path):
    """Weights that cannot be read: the actors fail as they start; the console says which one, why, and where its
    traceback is, in one line; with -v the libraries' output and the traceback are back on the console."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    args = [f"model.path={broken}", *SMALL, "wandb.mode=disabled"]
    proc = _cli("train", f"run.dir={tmp_path / 'run'}", *args)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.rstrip("\n").split("\n")
    last = lines[-1]
    assert len(lines) == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith("mrt-ray: learner rank 0 failed during start: ") and " Full log: " in last, last
    log = Path(last.split(" Full log: ")[1])
    assert log == tmp_path / "run" / "logs" / "learner-0.log" and "Traceback" in log.read_text()

    verbose = _cli("train", "-v", f"run.dir={tmp_path / 'run-v'}", *args)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr and "(Learner pid=" in verbose.stderr
    assert not (tmp_path / "run-v" / "logs").exists()
