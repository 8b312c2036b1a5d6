"""`ray job submit` end to end: a Ray head started here on loopback, a two-step training job submitted to its
dashboard, the job's driver joining THAT cluster, and a complete run directory. Only the head started here is stopped
(`ray stop` would stop every Ray on the machine), also when the test fails."""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from conftest import SMALL, signal_processes

from mrt_ray.utils import free_port

BIN = Path(sys.executable).parent  # `ray` and the `python` the job runs: the venv running these tests
JOB_DEADLINE_S = 600.0  # a 2-step job takes about a minute on a quiet machine; the 2 cores are shared
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class RayHead:
    """A Ray head on 127.0.0.1 with its own temp dir, ports and auth token. `stop()` ends exactly the processes of
    this head: those whose command line names its temp dir or its GCS port, and their descendants (workers, the job).

    Token auth is on, with a token of its own: Ray 2.60's `ray start` turns it on by itself whenever
    ~/.ray/auth_token exists (any local `ray.init()` writes one), and then a client needs RAY_AUTH_MODE=token."""

    def __init__(self, num_cpus: int = 4):
        # short path under /tmp: Ray's unix sockets live below it and must stay under 108 bytes
        self.temp = Path(tempfile.mkdtemp(prefix="mrtray-", dir="/tmp"))
        self.num_cpus = num_cpus
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.dashboard_port}"
        self.token = secrets.token_hex(32)
        self.token_path = self.temp / "auth_token"
        self.token_path.write_text(self.token)
        self.token_path.chmod(0o600)

    def env(self) -> dict[str, str]:
        """The environment of `ray start` and of the CLI: no RAY_ADDRESS (nothing joins another cluster), this head's
        token, and the venv's `python` first on PATH (the job's entrypoint inherits the head's environment)."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path),
                   PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
        return env

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.url, headers={"Authorization": f"Bearer {self.token}"})

    def start(self) -> None:
        # every port explicit: defaults (10001, 52365, ...) may be held by another Ray on this machine
        ports = {f"--{name}": free_port() for name in (
            "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
            "runtime-env-agent-port", "metrics-export-port", "node-manager-port", "object-manager-port")}
        cmd = [str(BIN / "ray"), "start", "--head", f"--port={self.gcs_port}", f"--num-cpus={self.num_cpus}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
               "--node-ip-address=127.0.0.1", f"--temp-dir={self.temp}", "--disable-usage-stats",
               *(f"{k}={v}" for k, v in ports.items())]
        out = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` exited {out.returncode}:\n{out.stdout}\n{out.stderr}")

    def processes(self) -> list[psutil.Process]:
        port = re.compile(rf":{self.gcs_port}(?!\d)")
        mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
        roots = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if p.pid not in mine and (str(self.temp) in cmd or port.search(cmd)):
                roots.append(p)
        procs = {p.pid: p for p in roots}
        for p in roots:
            try:
                procs.update({c.pid: c for c in p.children(recursive=True) if c.pid not in mine})
            except psutil.NoSuchProcess:
                pass
        return list(procs.values())

    def stop(self) -> None:
        procs = self.processes()
        signal_processes(procs, "terminate")
        _, alive = psutil.wait_procs(procs, timeout=15)
        signal_processes(alive, "kill")
        psutil.wait_procs(alive, timeout=10)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture
def ray_head():
    head = RayHead()
    try:
        head.start()
        yield head
    finally:
        head.stop()
        leftover = head.processes()
        assert not leftover, f"processes of the test's Ray head survived stop(): {[p.pid for p in leftover]}"


def _wait(client, job_id: str, deadline_s: float) -> str:
    """Poll until the job is terminal; past the deadline stop it and fail with its log tail."""
    end = time.monotonic() + deadline_s
    while (status := str(client.get_job_status(job_id).value)) not in TERMINAL:
        if time.monotonic() > end:
            client.stop_job(job_id)
            pytest.fail(f"job {job_id} still {status} after {deadline_s:.0f}s; log tail:\n"
                        f"{client.get_job_logs(job_id)[-4000:]}")
        time.sleep(2.0)
    return status


@pytest.mark.stack
@pytest.mark.slow
def test_ray_job_submit_trains_on_the_submitted_cluster(ray_head, tiny_model, tmp_path):
    from mrt_ray.config import from_yaml_file

    workdir = tmp_path / "job"  # the code comes from the installed package; the working dir only has to exist
    workdir.mkdir()
    (workdir / "README").write_text("working dir of the test_deploy job\n")
    run_dir = tmp_path / "run"
    job_id = f"mrt-test-{os.getpid()}-{int(time.time())}"
    submit = [str(BIN / "ray"), "job", "submit", "--address", ray_head.url, "--submission-id", job_id,
              "--working-dir", str(workdir), "--no-wait", "--",
              "python", "-m", "mrt_ray", "train", f"model.path={tiny_model}", f"run.dir={run_dir}", *SMALL]
    out = subprocess.run(submit, env=ray_head.env(), capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, f"ray job submit failed:\n{out.stdout}\n{out.stderr}"

    client = ray_head.client()
    status = _wait(client, job_id, JOB_DEADLINE_S)
    logs = client.get_job_logs(job_id)
    assert status == "SUCCEEDED", f"job {job_id} ended {status}; log tail:\n{logs[-4000:]}"

    # the driver joined the head started here (RAY_ADDRESS set by the job), it did not start a local Ray; Ray's
    # lines are in the run's driver log, the job's console has mrt-ray's own lines only
    driver = (run_dir / "logs" / "driver.log").read_text()
    joined = re.search(r"Connecting to existing Ray cluster at address: (\S+?):(\d+)", driver)
    assert joined and int(joined.group(2)) == ray_head.gcs_port, driver[-4000:]
    assert "Started a local Ray instance" not in driver and "Connecting to existing" not in logs
    assert "mrt-ray: trained 2 steps" in logs and (run_dir / "logs" / "learner-0.log").is_file()

    cfg = from_yaml_file(run_dir / "config.yaml")
    assert cfg.run.dir == str(run_dir) and cfg.model.path == tiny_model and cfg.train.steps == 2
    rows = {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    assert {0, 1} <= set(rows), sorted(rows)
    for step in (0, 1):
        assert rows[step]["policy_version"] == step + 1 and rows[step]["push_probe_diff"] < 1e-3
        assert "reward" in rows[step] and rows[step]["tokens_mean"] > 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2
    ckpt = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    assert ckpt.name == "step_000001" and (ckpt / "trainer_state.json").is_file()
    assert Path(summary["checkpoint"]) == ckpt / "hf" and (ckpt / "hf" / "config.json").is_file()
    assert any((ckpt / "hf").glob("*.safetensors"))
