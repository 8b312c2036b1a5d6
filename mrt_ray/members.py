"""Members of a multi-run command (`mrt-ray sweep`, `mrt-ray grid`): each member is one training run in its own
directory, and rerunning the command with the same run.dir continues where it stopped. A member with summary.json
is reused, one with a complete checkpoint resumes from it, one killed before its first checkpoint starts again; a
directory trained with other settings is refused."""
from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

from mrt_ray import checkpoint
from mrt_ray.config import Config, ConfigError, from_yaml_file, to_dict

TrainFn = Callable[[Config], dict]  # mrt_ray.trainer.train: config -> summary (held-out metrics under eval/...)
# keys that change how a run moves its data, not what it trains: a member may continue under another value (e.g. a
# new default bucket size for the weight push)
TRANSPORT_ONLY = ("learner.push_bucket_mib",)
DERIVED = ("learner.num_ranks",)  # 0 asks for a value derived at start; a member's config.yaml holds the derived one


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _check_same(path: Path, expected: Config) -> None:
    """A member directory left by an earlier run of the same command must hold the configuration it would train now
    (the sweep and grid sections do not change a member: their lists may grow between runs; nor do the time-outs
    and TRANSPORT_ONLY keys; a DERIVED key asked as 0 matches the value derived then)."""
    old, new = _flat(to_dict(from_yaml_file(path))), _flat(to_dict(expected))
    diff = sorted(k for k in old.keys() | new.keys()
                  if old.get(k) != new.get(k) and not k.startswith(("sweep.", "grid."))
                  and k not in TRANSPORT_ONLY and not k.endswith("timeout_s")
                  and not (k in DERIVED and new.get(k) == 0))
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in diff[:5])
        raise ConfigError(f"{path} was trained with other settings ({shown}); rerun with the same overrides to "
                          f"continue, or choose another run.dir")


def run_member(m: Config, train_fn: TrainFn) -> tuple[dict, str]:
    """Train (or reuse, or resume) one member; returns its summary and 'reused' | 'resumed' | 'trained'."""
    d = Path(m.run.dir)
    if (d / "config.yaml").is_file():
        _check_same(d / "config.yaml", m)
    if (d / "summary.json").is_file():
        return json.loads((d / "summary.json").read_text()), "reused"
    if checkpoint.latest(d) is not None:
        resumed = copy.deepcopy(m)
        resumed.resume = str(d)
        return train_fn(resumed), "resumed"
    (d / "metrics.jsonl").unlink(missing_ok=True)  # killed before its first checkpoint: nothing to continue from
    return train_fn(m), "trained"


