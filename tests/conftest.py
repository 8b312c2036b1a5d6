"""Shared fixtures: a tiny random Qwen2 model with the character tokenizer (no training), a small config builder,
and one local Ray session for the tests that run the real stack (Ray + vLLM + DeepSpeed).

Tests run by speed: unmarked (fast unit tests) first, then `stack` (real stack), then `slow`, so a broken unit fails
within seconds. CI (the README's test command) runs `-m "not slow"`; `pytest tests` runs everything. A test that
uses the Ray session is `stack` automatically."""
from __future__ import annotations

import os

os.environ.setdefault("RAY_AUTH_MODE", "token")  # as `mrt-ray` does for a local cluster, before Ray is imported

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from mrt_ray.bootstrap import build_model, build_tokenizer
    from mrt_ray.config import BootstrapConfig

    path = tmp_path_factory.mktemp("tiny_model")
    tok = build_tokenizer()
    model = build_model(BootstrapConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128), len(tok),
                        320, seed=0)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return str(path)


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.stack)
    stage = {item: 2 if item.get_closest_marker("slow") else 1 if item.get_closest_marker("stack") else 0
             for item in items}
    items.sort(key=lambda item: stage[item])  # stable: file order inside a stage


SMALL = [
    "train.steps=2", "train.prompts_per_step=4", "rollout.n_samples=4", "rollout.max_new_tokens=48",
    "eval.size=8", "eval.n_samples=2", "wandb.mode=disabled", "train.save_every=0", "ray.num_cpus=4",
    "learner.num_ranks=2",  # the distributed learner path (a CPU run derives 1 rank: grpo_run keeps that default)
]


@pytest.fixture
def small_cfg(tmp_path, tiny_model):
    from mrt_ray.config import load_config

    def make(*overrides: str):
        return load_config(None, [f"model.path={tiny_model}", f"run.dir={tmp_path}/run", *SMALL, *overrides])

    return make


WANDB_FAKE_KEY = "fake-wandb-key-0123456789abcdef"  # WANDB_API_KEY of grpo_run's process; must never reach W&B


@pytest.fixture(scope="session")
def grpo_run(tiny_model, tmp_path_factory, ray_session):
    """One default GRPO run of 2 steps, shared by the tests that read what it leaves (metrics, checkpoint, W&B
    offline files): the default (derived) learner layout, W&B offline with a sample table every step, a fake W&B key
    in the environment and pasted into a config value. Returns its config and summary."""
    from mrt_ray.config import load_config
    from mrt_ray.trainer import Trainer

    run_dir = tmp_path_factory.mktemp("grpo_run") / "run"
    cfg = load_config(None, [f"model.path={tiny_model}", f"run.dir={run_dir}", *SMALL, "wandb.mode=offline",
                             "wandb.log_samples_every=1", "wandb.project=mrt-test",
                             f"task.system_prompt=pasted-{WANDB_FAKE_KEY}",  # unused by the embedded task
                             "learner.num_ranks=0"])  # the default: derived from Ray's resources (1 on CPU)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_API_KEY", WANDB_FAKE_KEY)
        summary = Trainer(cfg).run()
    return cfg, summary


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from mrt_ray.actors import init_ray
    from mrt_ray.config import Config

    cfg = Config()
    cfg.ray.num_cpus = 4  # fractional actors oversubscribe the 2 cores on purpose: each uses one thread
    init_ray(cfg)
    yield
    ray.shutdown()


def signal_processes(procs, how: str) -> None:
    """`how` ("terminate" or "kill") every psutil process in `procs`; one that is already gone is skipped."""
    import psutil

    for p in procs:
        try:
            getattr(p, how)()
        except psutil.NoSuchProcess:
            pass
