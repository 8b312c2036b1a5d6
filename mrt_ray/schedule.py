"""Schedules for reward parameters: `algo.schedule` maps a key of `REWARD_PARAMS` to [[step, value], ...].

The value at step k (`value_at`): before the first point, the first value; `algo.schedule_interp=step` holds each
value until the next point (piecewise constant, ThinkPrune's rounds of a tightening limit); `linear` interpolates
between neighbouring points. After the last point the last value holds. An integer key gets the value rounded to the
nearest integer. `at_step(cfg, k)` is the config of step k: `cfg` with every scheduled key set, so a resumed run
resolves exactly what an uninterrupted one did (the schedule is a pure function of the step).

Only reward parameters can be scheduled: they are read in the driver at every step, while the learner actors read
their keys (clip_eps, kl_coef, ...) once, when they start.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from mrt_ray.config import AlgoConfig, Config
from mrt_ray.config.load import range_error
from mrt_ray.rewards.shaping import REWARD_PARAMS

_FIELDS = {f.name: f for f in dataclasses.fields(AlgoConfig)}


def value_at(points: Sequence[Sequence[float]], step: int, interp: str = "step") -> float:
    """The scheduled value at `step` (see the module doc); `points` are [step, value] pairs with steps ascending."""
    if step <= points[0][0]:
        return float(points[0][1])
    for (s0, v0), (s1, v1) in zip(points, points[1:]):
        if step < s1:
            return float(v0) if interp == "step" else v0 + (step - s0) * (v1 - v0) / (s1 - s0)
    return float(points[-1][1])


def at_step(cfg: Config, step: int) -> Config:
    """`cfg` with every key of `algo.schedule` set to its value at `step` (`cfg` itself when nothing is scheduled)."""
    a = cfg.algo
    if not a.schedule:
        return cfg
    values = {}
    for key, points in a.schedule.items():
        v = value_at(points, step, a.schedule_interp)
        values[key] = int(round(v)) if isinstance(getattr(a, key), int) else v
    return dataclasses.replace(cfg, algo=dataclasses.replace(a, **values))


def scheduled_metrics(cfg: Config) -> dict[str, float]:
    """`schedule/<key>`: the value of every scheduled key in `cfg` (a config `at_step` resolved), for the step log."""
    return {f"schedule/{k}": getattr(cfg.algo, k) for k in cfg.algo.schedule}


def schedule_errors(cfg: Config) -> list[str]:
    """One message per bad schedule entry: a key that is not a reward parameter, malformed or unordered points, a
    value outside the key's range."""
    errors = []
    for key, points in cfg.algo.schedule.items():
        where = f"algo.schedule.{key}"
        if key not in REWARD_PARAMS:
            errors.append(f"{where}: only reward parameters can be scheduled (the learners read the other algo keys "
                          f"once, at start); choose from {list(REWARD_PARAMS)}")
            continue
        if not points or any(len(p) != 2 for p in points):
            errors.append(f"{where}={points!r}: give a non-empty list of [step, value] pairs")
            continue
        steps = [p[0] for p in points]
        if any(s < 0 or s != int(s) for s in steps):
            errors.append(f"{where}: steps must be whole numbers >= 0, got {steps}")
        elif any(b <= a for a, b in zip(steps, steps[1:])):
            errors.append(f"{where}: steps must be strictly ascending, got {steps}")
        errors += [m for i, p in enumerate(points) if (m := range_error(f"{where}[{i}][1]", p[1], _FIELDS[key]))]
    return errors
