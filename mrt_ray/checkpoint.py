"""Checkpoints that make a resumed run continue exactly: the policy (HF safetensors, loadable by transformers and vLLM),
DeepSpeed's optimizer/scheduler state, and the controller's state (step, policy version, W&B run id, skipped steps).
No RNG state needs saving: every random draw (prompts, sampler seeds, MRT cut points) is a pure function of (seed,
step, index), so step k of a resumed run draws exactly what step k of an uninterrupted run drew. In async mode the
next step's batch was already sampled with the weights before this update, which no checkpoint holds, so it is saved
too (`prefetched_rollout.json`) and a resumed run trains on it. Written under a temporary name and renamed, and
`latest` is updated last: a crash never leaves a half checkpoint as the latest."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from mrt_ray.rollout.types import CollectedRollout, Completion
from mrt_ray.utils import atomic_dir

PREFETCHED = "prefetched_rollout.json"


def save(run_dir: Path, step: int, learners, state: dict, prefetched: CollectedRollout | None = None) -> Path:
    final = run_dir / "checkpoints" / f"step_{step:06d}"
    with atomic_dir(final) as tmp:
        learners.call("save_state", str(tmp / "ds"), "state")
        learners.call("save_hf", str(tmp / "hf"))
        if prefetched is not None:  # floats round-trip exactly through JSON (repr)
            (tmp / PREFETCHED).write_text(json.dumps({"outs": [[asdict(c) for c in comps] for comps in prefetched.outs],
                                                      "stats": prefetched.stats}))
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step}))
    latest = run_dir / "checkpoints" / "latest"
    tmp_latest = latest.with_suffix(".tmp")
    tmp_latest.write_text(final.name)
    os.replace(tmp_latest, latest)
    return final


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    ckpt = run_dir / "checkpoints" / pointer.read_text().strip()
    if not (ckpt / "trainer_state.json").is_file():
        raise RuntimeError(f"{pointer} names {ckpt.name}, which is incomplete; remove it to resume from an older one")
    return ckpt


def load(ckpt: Path, learners) -> dict:
    learners.call("load_state", str(ckpt / "ds"), "state")
    return json.loads((ckpt / "trainer_state.json").read_text())


def load_prefetched(ckpt: Path) -> CollectedRollout | None:
    """The async batch saved with checkpoint `ckpt` (the step after it), or None (sync mode)."""
    path = ckpt / PREFETCHED
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    return CollectedRollout([[Completion(**c) for c in comps] for comps in d["outs"]], d["stats"])


def prune(run_dir: Path, keep: int = 2) -> None:
    """Keep the newest `keep` checkpoints (the latest always among them)."""
    ckpts = sorted((run_dir / "checkpoints").glob("step_*"))
    for old in ckpts[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
