"""Schedules of reward parameters (`algo.schedule`): values by step, hand-computed; the per-step config; every
malformed schedule is one ConfigError naming the key; presets that schedule load and resolve."""
from __future__ import annotations

import re

import pytest

from mrt_ray.config import ConfigError, load_config
from mrt_ray.schedule import at_step, scheduled_metrics, value_at
from mrt_ray.validation import validate

POINTS = [[10, 4.0], [20, 2.0], [40, 1.0]]


@pytest.mark.parametrize(("step", "stepped", "linear"), [
    (0, 4.0, 4.0),  # before the first point: the first value
    (10, 4.0, 4.0),
    (15, 4.0, 3.0),  # halfway from 4 to 2
    (19, 4.0, 2.2),
    (20, 2.0, 2.0),
    (30, 2.0, 1.5),
    (40, 1.0, 1.0),
    (1000, 1.0, 1.0),  # after the last point: the last value
])
def test_value_at(step: int, stepped: float, linear: float) -> None:
    assert value_at(POINTS, step, "step") == stepped
    assert value_at(POINTS, step, "linear") == pytest.approx(linear)


def test_single_point_is_a_constant() -> None:
    assert [value_at([[5, 0.3]], k) for k in (0, 5, 99)] == [0.3, 0.3, 0.3]


def test_at_step_sets_the_scheduled_keys_only() -> None:
    cfg = load_config(None, ["algo.reward=thinkprune", "algo.token_limit=150",
                             "algo.schedule.token_limit=[[0,160],[20,128],[40,96]]",
                             "algo.schedule.sb_beta=[[0,0.0],[10,0.02]]", "algo.schedule_interp=linear"])
    validate(cfg)
    assert cfg.algo.token_limit == 150  # the key's own value is not what a step uses
    got = at_step(cfg, 10)
    assert (got.algo.token_limit, got.algo.sb_beta) == (144, pytest.approx(0.02))  # 160 - 16: an int key is rounded
    assert isinstance(got.algo.token_limit, int)
    assert (at_step(cfg, 5).algo.token_limit, at_step(cfg, 5).algo.sb_beta) == (152, pytest.approx(0.01))
    assert at_step(cfg, 100).algo.token_limit == 96
    assert got.algo.alpha == cfg.algo.alpha and got.rollout == cfg.rollout and got.seed == cfg.seed
    assert cfg.algo.token_limit == 150  # the run's config is not changed
    assert scheduled_metrics(got) == {"schedule/token_limit": 144, "schedule/sb_beta": pytest.approx(0.02)}
    plain = load_config(None, [])
    assert at_step(plain, 7) is plain and scheduled_metrics(plain) == {}


def test_preset_schedules_resolve() -> None:
    tp = load_config(None, ["algo=thinkprune"])
    validate(tp)
    assert [at_step(tp, k).algo.token_limit for k in (0, 39, 40, 79, 80, 119)] == [128, 128, 96, 96, 64, 64]
    kimi = load_config(None, ["algo=kimi_length", "seed=3"])
    validate(kimi)
    assert [at_step(kimi, k).algo.kimi_coef for k in (0, 19, 20, 119)] == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize(("override", "expect"), [
    ("algo.schedule.clip_eps=[[0,0.1]]", "algo.schedule.clip_eps: only reward parameters can be scheduled"),
    ("algo.schedule.no_such_key=[[0,1]]", "algo.schedule.no_such_key: only reward parameters"),
    ("algo.schedule.alpha=[]", "give a non-empty list of [step, value] pairs"),
    ("algo.schedule.alpha=[[0,0.1,3]]", "give a non-empty list of [step, value] pairs"),
    ("algo.schedule.alpha=[[10,0.1],[5,0.2]]", "steps must be strictly ascending, got [10.0, 5.0]"),
    ("algo.schedule.alpha=[[0,0.1],[0,0.2]]", "steps must be strictly ascending"),
    ("algo.schedule.alpha=[[-1,0.1]]", "steps must be whole numbers >= 0"),
    ("algo.schedule.alpha=[[1.5,0.1]]", "steps must be whole numbers >= 0"),
    ("algo.schedule.alpha=[[0,0.1],[5,1.5]]", "algo.schedule.alpha[1][1]=1.5 must be in [0, 1)"),
    ("algo.schedule.token_limit=[[0,-5]]", "algo.schedule.token_limit[0][1]=-5.0 must be >= 0"),
    ("algo.schedule.token_limit=[[0,500]]", "reaches 500 > rollout.max_new_tokens"),
])
def test_bad_schedules_are_one_line_errors(override: str, expect: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expect)) as e:
        validate(load_config(None, [override]))
    assert "\n" not in str(e.value)


def test_schedule_type_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="algo.schedule.alpha"):
        load_config(None, ["algo.schedule.alpha=5"])
