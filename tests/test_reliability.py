"""Reliability (issue 8), on the real stack where it matters: exact resume after SIGKILL, a rollout worker killed
mid-step, a dead learner rank, non-finite steps, prompts longer than the context, and safe defaults (safetensors
only, no remote code, loopback dashboard, no secrets in the run directory). docs/reliability.md maps each guarantee
to its test."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import SMALL, signal_processes

REPO = Path(__file__).resolve().parents[1]
SECRET = "secret-0123456789abcdef"  # a fake W&B key: it must never reach the run directory
COMPARED = ("reward", "accuracy", "tokens_mean", "pg_loss", "grad_norm")
N_STEPS = 4
RUN = [*SMALL, f"train.steps={N_STEPS}", "train.save_every=2"]  # 4 steps, a checkpoint after step index 1

pytestmark = [pytest.mark.stack]


def _rows(run_dir: Path) -> dict[int, dict]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"a step was logged twice: {steps}"
    return {r["step"]: r for r in rows}


def _final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    hf = run_dir / "checkpoints" / f"step_{N_STEPS - 1:06d}" / "hf"
    return {k: v for f in sorted(hf.glob("*.safetensors")) for k, v in load_file(f).items()}


def _cfg(tiny_model: str, run_dir: Path, *extra: str):
    from mrt_ray.config import load_config

    return load_config(None, [f"model.path={tiny_model}", f"run.dir={run_dir}", *RUN, *extra])


@pytest.fixture(scope="module")
def uninterrupted(ray_session, tiny_model, tmp_path_factory) -> Path:
    """Run A: the 4-step reference run, in this process."""
    from mrt_ray.trainer import Trainer

    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    Trainer(_cfg(tiny_model, run_dir)).run()
    return run_dir


def _cli(*args: str, env: dict) -> subprocess.Popen:
    """`python -m mrt_ray ...` in its own session (its local Ray cluster is in that process tree)."""
    log = open(env["MRT_TEST_LOG"], "ab")
    return subprocess.Popen([sys.executable, "-m", "mrt_ray", *args], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the CLI's process group and every process it started (Ray's GCS, raylet, actors), by pid."""
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    signal_processes(tree, "kill")
    psutil.wait_procs(tree, timeout=30)


def _tail(path: str) -> str:
    return Path(path).read_text(errors="replace")[-3000:]


def test_resume_after_sigkill_is_exact(uninterrupted, tiny_model, tmp_path):
    """Killed (SIGKILL, whole process tree) after the step-1 checkpoint, then `mrt-ray train resume=DIR`: steps 2-3,
    the final evaluation and the final weights equal the uninterrupted run's, bit for bit. The same runs check that
    the W&B run id survives the resume, that checkpoints hold safetensors only and that a W&B key in the environment
    reaches neither a file of the run nor the console."""
    run_dir = tmp_path / "run"
    # WANDB_SERVICE: the W&B service this pytest process started; a subprocess that inherits it shares it, and the
    # killed run's stream would stay open there ("run ID ... is in use"). A real run's service dies with it.
    # RAY_AUTH_MODE left out as well: the CLI turns token auth on itself, as in a user's shell
    env = {**{k: v for k, v in os.environ.items() if k not in ("WANDB_SERVICE", "RAY_AUTH_MODE")},
           "WANDB_API_KEY": SECRET, "MRT_TEST_LOG": str(tmp_path / "cli.log"), "PYTHONPATH": str(REPO)}
    latest = run_dir / "checkpoints" / "latest"
    proc = _cli("train", f"model.path={tiny_model}", f"run.dir={run_dir}", *RUN, "wandb.mode=offline", env=env)
    try:
        deadline = time.monotonic() + 900
        while not (latest.is_file() and latest.read_text().strip() == "step_000001"):
            assert proc.poll() is None, f"the run ended before its first checkpoint:\n{_tail(env['MRT_TEST_LOG'])}"
            assert time.monotonic() < deadline, "no checkpoint within 900 s"
            time.sleep(0.1)
    finally:
        _kill_tree(proc)
    assert latest.read_text().strip() == "step_000001", "killed too late: the run got past step 1's checkpoint"
    assert not (run_dir / "summary.json").exists()

    resume = _cli("train", f"resume={run_dir}", env=env)
    try:
        assert resume.wait(timeout=900) == 0, _tail(env["MRT_TEST_LOG"])
    finally:
        if resume.poll() is None:
            _kill_tree(resume)

    a, b = _rows(uninterrupted), _rows(run_dir)
    assert sorted(b) == sorted(a) == [-1, 0, 1, 2, 3, N_STEPS]
    for step in range(N_STEPS):  # 0-1 from the killed process, 2-3 from the resumed one
        assert {k: b[step][k] for k in COMPARED} == {k: a[step][k] for k in COMPARED}, step
        assert b[step]["policy_version"] == step + 1
    evals = [k for k in a[N_STEPS] if k.startswith("eval/") and isinstance(a[N_STEPS][k], (int, float))]
    assert evals and {k: b[N_STEPS][k] for k in evals} == {k: a[N_STEPS][k] for k in evals}
    wa, wb = _final_weights(uninterrupted), _final_weights(run_dir)
    assert sorted(wa) == sorted(wb)
    for name in wa:
        assert wa[name].equal(wb[name]), name

    # the W&B run id is kept: the resumed process continued the killed process's W&B run
    wandb_id = json.loads((run_dir / "checkpoints" / "step_000001" / "trainer_state.json").read_text())["wandb_id"]
    runs = list((run_dir / "wandb_files" / "wandb").glob("offline-run-*"))
    assert wandb_id and len(runs) == 2 and all(r.name.endswith(f"-{wandb_id}") for r in runs), runs
    # safe defaults: safetensors only in checkpoints; the W&B key is nowhere in the run dir (offline W&B files too)
    for hf in (run_dir / "checkpoints").glob("step_*/hf"):
        names = [p.name for p in hf.iterdir()]
        assert any(n.endswith(".safetensors") for n in names), names
        assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))], names
    logs = Path(env["MRT_TEST_LOG"])  # both processes' console output
    leaks = [p for p in [logs, *run_dir.rglob("*")] if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaks, leaks


def test_rollout_worker_killed_mid_step(uninterrupted, tiny_model, tmp_path):
    """SIGKILL of the rollout worker's process while step 1's rollout is in flight: Ray restarts it, the weight group
    is rebuilt and the current version pushed (verified), its requests are re-run with the same seeds, and the run
    matches the uninterrupted one step for step (every prompt with n samples, none lost or doubled)."""
    import ray

    from mrt_ray.trainer import Trainer

    class KillDuringStep1(Trainer):
        group_sizes: list[list[int]]  # per step: samples per prompt that reached scoring

        def submit_rollout(self, step: int) -> tuple:
            if step != 1:
                return super().submit_rollout(step)
            pid = ray.get(self.workers[0].ready.remote())["pid"]
            pending = super().submit_rollout(step)  # the generate task is in flight
            os.kill(pid, signal.SIGKILL)
            return pending

        def build_batch(self, groups, step, m):
            self.group_sizes.append([len(g) for g in groups])
            return super().build_batch(groups, step, m)

    cfg = _cfg(tiny_model, tmp_path / "run")
    trainer = KillDuringStep1(cfg)
    trainer.group_sizes = []
    trainer.run()
    a, b = _rows(uninterrupted), _rows(tmp_path / "run")
    assert trainer.group_sizes == [[cfg.rollout.n_samples] * cfg.train.prompts_per_step] * N_STEPS
    assert (b[0]["worker_restarts"], b[0]["rollout_reruns"]) == (0, 0)
    for step in range(1, N_STEPS):
        assert (b[step]["worker_restarts"], b[step]["rollout_reruns"]) == (1, 1), step
    for step in range(N_STEPS):
        assert {k: b[step][k] for k in COMPARED} == {k: a[step][k] for k in COMPARED}, step
        assert b[step]["policy_version"] == step + 1 and b[step]["push_probe_diff"] < 1e-3
        assert b[step]["staleness_max"] == 0


def _trajectories(tok, n: int = 4) -> list:
    """`n` one-prompt trajectories with hand-set advantages (+1, -1, ...)."""
    from mrt_ray.rollout.types import Completion
    from mrt_ray.tasks.embedded import make_problem
    from mrt_ray.trajectory import Trajectory

    p = make_problem(0, "train", 0)
    ids = tok(p.prompt, add_special_tokens=False)["input_ids"]
    out = []
    for k in range(n):
        comp = ids[: 3 + k]  # any valid token ids
        t = Trajectory(problem=p, prompt_ids=ids, completion=Completion(comp, [-1.0] * len(comp), "", True), group=0)
        t.advantages = [1.0 if k % 2 else -1.0] * len(comp)
        out.append(t)
    return out


@pytest.mark.usefixtures("ray_session")
def test_dead_learner_rank_is_a_clear_error(small_cfg, tiny_model):
    """A learner rank killed between steps: the next step ends with an error naming that rank (and how to resume),
    not a hang. Rank 1, not 0: its death first shows as a collective error on the live rank 0."""
    from mrt_ray.actors import Placement, stop
    from mrt_ray.learner.group import LearnerGroup
    from mrt_ray.models import load_tokenizer

    cfg = small_cfg("learner.collective_timeout_s=30")
    placement = Placement(cfg, with_estimators=False)
    group = LearnerGroup(cfg, placement, tiny_model, local=True)
    try:
        pids = group.call("pid")
        os.kill(pids[1], signal.SIGKILL)
        with pytest.raises(RuntimeError, match=r"(?s)learner rank 1 .*resume"):
            group.train(_trajectories(load_tokenizer(tiny_model, cfg.model)))
    finally:
        stop(group.actors)
        placement.remove()


def _listeners(root: psutil.Process) -> dict[str, str]:
    """Every listening TCP socket of `root` and the processes under it: {"ip:port": "pid name"}."""
    out = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            conns, name = p.net_connections(kind="inet"), f"{p.pid} " + " ".join(p.cmdline()[:2])[-60:]
        except psutil.Error:  # ended meanwhile
            continue
        out.update({f"{c.laddr.ip}:{c.laddr.port}": name for c in conns if c.status == psutil.CONN_LISTEN})
    return out


RAY_DAEMONS = ("gcs_server", "raylet", "DashboardAgent", "RuntimeEnvAgent", "dashboard")


def _exposed_beyond_ray(listening: dict[str, str]) -> dict[str, str]:
    """The non-loopback listeners that are not Ray's own. Ray 2.60 binds its daemons' servers (GCS, raylet, the
    agents) and every core worker's gRPC server (the driver and each actor: one each) to the wildcard address or the
    node's address whatever ray.init is told (measured; docs/reliability.md); token authentication, which a local
    run turns on, guards them. So: a daemon's sockets are Ray's; any other process may hold ONE non-loopback
    listener (its core worker's); a second one would be ours (a rendezvous store or the dashboard) and is reported."""
    by_pid: dict[str, list[str]] = {}
    for addr, name in listening.items():
        if not addr.startswith("127.0.0.1:") and not any(d in name for d in RAY_DAEMONS):
            by_pid.setdefault(name, []).append(addr)
    return {name: addrs for name, addrs in by_pid.items() if len(addrs) > 1}


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.stack
@pytest.mark.slow
def test_learner_killed_mid_run_then_resumed_from_the_last_intact_checkpoint(uninterrupted, tiny_model, tmp_path,
                                                                              caplog):
    """A run that checkpoints every step. Right after step 2's checkpoint, while every actor is up, the job's
    processes (this driver, Ray's GCS, raylet, dashboard and agents, the learners, the rollout worker) hold no
    listener of ours outside 127.0.0.1 (Ray's own servers are the exception: `_exposed_beyond_ray`); then learner
    rank 1 is SIGKILLed. Step 3 ends the run with an error naming the rank and how to resume (no hang). Step 2's
    checkpoint is then damaged (a byte of rank 0's optimizer shard flipped): resuming warns, names the file, falls
    back to step 1's checkpoint, and steps 2-3, the final evaluation and the final weights equal the uninterrupted
    run's bit for bit."""
    import logging

    from mrt_ray.trainer import Trainer

    class KillLearnerAfterStep2(Trainer):
        listening: dict[str, str] = {}

        def _save(self, step: int) -> Path:
            path = super()._save(step)
            if step == 2:
                self.listening = _listeners(psutil.Process())
                os.kill(self.learners.call("pid")[1], signal.SIGKILL)
            return path

    run_dir = tmp_path / "run"
    trainer = KillLearnerAfterStep2(_cfg(tiny_model, run_dir, "train.save_every=1"))
    with pytest.raises(RuntimeError, match=r"(?s)learner rank 1 died during train_step.*resume=<run dir>"):
        trainer.run()
    exposed = _exposed_beyond_ray(trainer.listening)
    assert len(trainer.listening) > 5 and not exposed, exposed  # ours: loopback only; Ray's: token-guarded
    assert os.environ.get("RAY_AUTH_MODE") == "token"
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_000002"

    shard = "ds/state/zero_pp_rank_0_mp_rank_00_optim_states.pt"
    _flip_byte(run_dir / "checkpoints" / "step_000002" / shard)
    with caplog.at_level(logging.WARNING, logger="mrt_ray"):
        Trainer(_cfg(tiny_model, run_dir, f"resume={run_dir}")).run()
    warned = [r.getMessage() for r in caplog.records if r.name == "mrt_ray"]
    assert any(f"step_000002/{shard} is corrupted" in w and "previous intact checkpoint step_000001" in w
               for w in warned), warned
    a, b = _rows(uninterrupted), _rows(run_dir)
    assert sorted(b) == sorted(a)
    for step in range(N_STEPS):  # 0-1 from the first process, 2-3 recomputed after the resume
        assert {k: b[step][k] for k in COMPARED} == {k: a[step][k] for k in COMPARED}, step
    evals = [k for k in a[N_STEPS] if k.startswith("eval/") and isinstance(a[N_STEPS][k], (int, float))]
    assert evals and {k: b[N_STEPS][k] for k in evals} == {k: a[N_STEPS][k] for k in evals}
    wa, wb = _final_weights(uninterrupted), _final_weights(run_dir)
    assert sorted(wa) == sorted(wb) and all(wa[n].equal(wb[n]) for n in wa)


@pytest.mark.stack
def test_a_real_checkpoint_holds_no_pickle_and_a_planted_one_never_runs(uninterrupted, tmp_path):
    """Every file of a real run's checkpoints is JSON/text, safetensors, or an mrt-ray state file, and each
    checkpoint verifies against its manifest. A malicious torch.save pickle put in place of a DeepSpeed state file,
    manifest rewritten to match, stops `resume=` before anything starts, and never runs."""
    import shutil

    import torch

    from mrt_ray import checkpoint
    from mrt_ray.config import load_config
    from mrt_ray.trainer import Trainer

    ckpts = sorted((uninterrupted / "checkpoints").glob("step_*"))
    assert [c.name for c in ckpts] == ["step_000001", "step_000003"]
    for ck in ckpts:
        checkpoint.verify(ck)
        names = sorted(p.relative_to(ck).as_posix() for p in ck.rglob("*") if p.is_file())
        assert "manifest.json" in names and "ds/rng_rank_1.safetensors" in names, names
        assert all(n.endswith((".json", ".safetensors", ".pt", ".txt", ".jinja")) or n in ("ds/latest",)
                   for n in names), names

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pickle_ran'}",))

    planted = tmp_path / "planted"
    shutil.copytree(uninterrupted, planted)
    ck = planted / "checkpoints" / "step_000003"
    torch.save({"module": Payload()}, ck / "ds" / "state" / "mp_rank_00_model_states.pt")
    checkpoint.write_manifest(ck)
    with pytest.raises(checkpoint.UnsafeCheckpointError, match="mp_rank_00_model_states.pt is a pickle"):
        Trainer(load_config(None, [f"resume={planted}"]))
    assert not (tmp_path / "pickle_ran").exists()


@pytest.mark.usefixtures("ray_session")
def test_non_finite_steps_are_skipped_then_stop_the_run(small_cfg):
    """A reward of NaN makes every loss non-finite: step 0 is skipped and counted (no update, no push), and the
    second such step stops the run with an error naming learner.max_bad_steps."""
    from mrt_ray.rewards import REWARDS, register_reward
    from mrt_ray.trainer import Trainer

    if "nan_for_test" not in REWARDS:
        register_reward("nan_for_test")(lambda o, cfg: [math.nan] * len(o.correct))
    cfg = small_cfg("algo.reward=nan_for_test", "learner.max_bad_steps=2", "train.steps=3")
    with pytest.raises(RuntimeError, match=r"2 steps had a non-finite loss \(learner\.max_bad_steps=2\)"):
        Trainer(cfg).run()
    rows = _rows(Path(cfg.run.dir))
    assert sorted(rows) == [-1, 0]  # the initial evaluation and the skipped step 0; step 1 raised
    assert (rows[0]["skipped"], rows[0]["bad_steps"], rows[0]["policy_version"]) == (1, 1, 0)
    assert "push_seconds" not in rows[0]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_skipped_step_count_survives_resume(small_cfg, tmp_path):
    """The non-finite step counter is checkpointed: resumed from the step-0 checkpoint, step 1 counts 2, not 1."""
    import shutil

    from mrt_ray.rewards import REWARDS, register_reward
    from mrt_ray.trainer import Trainer

    if "nan_for_test" not in REWARDS:
        register_reward("nan_for_test")(lambda o, cfg: [math.nan] * len(o.correct))
    cfg = small_cfg("algo.reward=nan_for_test", "learner.max_bad_steps=5", "train.steps=2", "train.save_every=1")
    Trainer(cfg).run()
    run = Path(cfg.run.dir)
    assert [_rows(run)[k]["bad_steps"] for k in (0, 1)] == [1, 2]
    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    shutil.rmtree(cut / "checkpoints" / "step_000001")
    (cut / "checkpoints" / "latest").write_text("step_000000")
    (cut / "summary.json").unlink()
    Trainer(small_cfg(f"resume={cut}")).run()
    assert _rows(cut)[1]["bad_steps"] == 2


def test_prompt_longer_than_context_is_an_error_or_counted(tmp_path, tiny_model):
    """Task data: a prompt that leaves no room for max_new_tokens in the context (320 - 48 = 272 tokens) is an error
    naming file and line, or skipped and counted with task.on_bad_row=skip."""
    from mrt_ray.config import load_config
    from mrt_ray.models import load_tokenizer
    from mrt_ray.tasks.data import DataError
    from mrt_ray.tasks.source import PromptSource

    path = tmp_path / "long.jsonl"
    rows = [("1+1", "2"), ("9" * 300, "9"), ("2+2", "4"), ("3+3", "6")]
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows))
    base = [f"model.path={tiny_model}", "task.name=file", f"task.path={path}", "eval.size=1",
            "model.max_model_len=320", "rollout.max_new_tokens=48"]
    cfg = load_config(None, base)
    tok = load_tokenizer(tiny_model, cfg.model)
    # 300 characters + the template's newline: 301 tokens with the character tokenizer
    with pytest.raises(DataError, match=r"long\.jsonl line 2: prompt has 301 tokens > max_prompt_tokens=272"):
        PromptSource(cfg, tok)
    source = PromptSource(load_config(None, [*base, "task.on_bad_row=skip"]), tok)
    assert source.skipped == {"prompt_too_long": 1}
    assert [p.id for p in source.train + source.eval] == ["long-1", "long-3", "long-4"]


def test_remote_code_is_not_run_by_default(tmp_path):
    """trust_remote_code is off by default: a model directory that asks for its own Python code is refused, and the
    code is never imported."""
    import torch
    from safetensors.torch import save_file

    from mrt_ray.config import load_config
    from mrt_ray.models import load_causal_lm, load_tokenizer

    mc = load_config(None, []).model
    assert mc.trust_remote_code is False
    marker = tmp_path / "remote_code_ran"
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "model_type": "mrt_untrusted", "architectures": ["Untrusted"],
        "auto_map": {"AutoConfig": "untrusted.UntrustedConfig", "AutoModelForCausalLM": "untrusted.Untrusted"},
    }))
    (model / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "UntrustedTokenizer", "auto_map": {"AutoTokenizer": ["untrusted.UntrustedTokenizer", None]},
    }))
    (model / "untrusted.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    save_file({"w": torch.zeros(1)}, str(model / "model.safetensors"))
    for load in (load_causal_lm, load_tokenizer):
        with pytest.raises(ValueError, match="trust_remote_code"):
            load(str(model), mc)
    assert not marker.exists()


def test_pickled_weights_are_refused(tmp_path, tiny_model):
    """A model directory with only pickled weights (pytorch_model.bin) is refused before anything is unpickled."""
    import shutil

    from mrt_ray.config import ModelConfig
    from mrt_ray.models import load_causal_lm

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    for f in model.glob("*.safetensors"):
        f.unlink()
    (model / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors weights; mrt-ray does not unpickle"):
        load_causal_lm(str(model), ModelConfig())


@pytest.mark.usefixtures("ray_session")
def test_local_dashboard_listens_on_loopback_only():
    """The local cluster's dashboard (HTTP, job submission) binds 127.0.0.1, on no other interface."""
    import ray

    host, port = ray._private.worker.global_worker.node.address_info["webui_url"].rsplit(":", 1)
    assert host == "127.0.0.1"
    bound = {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN
             and c.laddr.port == int(port)}
    assert bound == {"127.0.0.1"}


def test_redact_masks_secret_keys_and_values(monkeypatch):
    """The config W&B receives: secret-looking keys masked, and any value holding a secret from the environment."""
    from mrt_ray.tracking import redact

    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijkl")
    cfg = {"wandb": {"api_key": "k", "project": "p", "token": ""}, "note": "uses hf_abcdefghijkl",
           "tags": ["a", "hf_abcdefghijkl"], "lr": 0.1}
    assert redact(cfg) == {"wandb": {"api_key": "***", "project": "p", "token": ""}, "note": "***",
                           "tags": ["a", "***"], "lr": 0.1}
