"""The learners' checkpoint (DeepSpeed's state through mrt-ray's pickle-free checkpoint engine) at every ZeRO stage, on
the real stack (2 learner ranks over gloo): save after one update, make a second update, restore into FRESH learners
and repeat the second update: its statistics and the resulting weights equal the first time's, bit for bit. fp32 and
bf16 (where DeepSpeed keeps separate fp32 master partitions) both. ZeRO-2 in fp32 is also covered end to end by the
resume tests of tests/test_reliability.py and tests/test_spine.py."""
from __future__ import annotations

import math

import pytest

pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.usefixtures("ray_session")]


def _batch(tok, sign: float) -> list:
    """Four one-prompt trajectories with hand-set advantages (+sign, -sign, ...)."""
    from mrt_ray.rollout.types import Completion
    from mrt_ray.tasks.embedded import make_problem
    from mrt_ray.trajectory import Trajectory

    out = []
    for k in range(4):
        p = make_problem(k, "train", 0)
        ids = tok(p.prompt, add_special_tokens=False)["input_ids"]
        comp = ids[: 3 + k]
        t = Trajectory(problem=p, prompt_ids=ids, completion=Completion(comp, [-1.0] * len(comp), "", True), group=k)
        t.advantages = [sign if k % 2 else -sign] * len(comp)
        out.append(t)
    return out


def _weights(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _group(cfg, tiny_model):
    from mrt_ray.actors import Placement
    from mrt_ray.learner.group import LearnerGroup

    placement = Placement(cfg, with_estimators=False)
    return placement, LearnerGroup(cfg, placement, tiny_model, local=True)


def _close(placement, group) -> None:
    from mrt_ray.actors import stop

    stop(group.actors)
    placement.remove()


@pytest.mark.parametrize("stage, dtype", [(0, "float32"), (1, "bfloat16"), (2, "bfloat16"), (3, "bfloat16"),
                                          (3, "float32")])
def test_learner_state_restores_exactly(small_cfg, tiny_model, tmp_path, stage, dtype):
    from mrt_ray import checkpoint
    from mrt_ray.models import load_tokenizer

    cfg = small_cfg(f"learner.zero_stage={stage}", f"model.dtype={dtype}", "learner.lr=0.01")
    tok = load_tokenizer(tiny_model, cfg.model)
    first, second = _batch(tok, 1.0), _batch(tok, -0.5)
    ds_dir = tmp_path / "ckpt" / "ds"
    placement, group = _group(cfg, tiny_model)
    try:
        group.train(first)
        group.call("save_state", str(ds_dir), "state")
        want = group.train(second)
        group.call("save_hf", str(tmp_path / "want"))
    finally:
        _close(placement, group)
    checkpoint.refuse_pickles(tmp_path / "ckpt")  # every file is an mrt-ray state file or plain text
    placement, group = _group(cfg, tiny_model)  # fresh processes: nothing survives but the files
    try:
        group.call("load_state", str(ds_dir), "state")
        got = group.train(second)
        group.call("save_hf", str(tmp_path / "got"))
    finally:
        _close(placement, group)
    timing = ("learn_seconds",)
    def same(d: dict) -> dict:  # NaN compares equal to NaN here
        return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items() if k not in timing}

    assert same(got) == same(want)
    a, b = _weights(tmp_path / "want"), _weights(tmp_path / "got")
    assert sorted(a) == sorted(b) and all(a[n].equal(b[n]) for n in a), [n for n in a if not a[n].equal(b[n])]
