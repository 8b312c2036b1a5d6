"""Checkpoints that make a resumed run continue exactly, and prove themselves before they are used.

A checkpoint holds the policy (`hf/`, HF safetensors, loadable by transformers and vLLM), the learners' state (`ds/`:
DeepSpeed's optimizer, scheduler and module state, and each rank's RNG state, all written by
`mrt_ray.safe_state`: safetensors with a JSON tree, never a pickle) and the controller's state
(`trainer_state.json`: step, policy version, W&B run id, skipped steps). Every random draw of the data path (prompts,
sampler seeds, MRT cut points) is a pure function of (seed, step, index), so step k of a resumed run draws exactly
what step k of an uninterrupted run drew. In async mode the next step's batch was already sampled with the weights
before this update, which no checkpoint holds, so it is saved too (`prefetched_rollout.json`) and a resumed run
trains on it.

Integrity: `manifest.json` lists every file with its size and sha256. It is written last (atomically, inside the
temporary directory), the directory is then renamed into place, and `latest` is updated after that: a crash never
leaves a half checkpoint as the latest. Before resuming, `latest()` verifies the checkpoint against its manifest; a
missing, truncated or altered file (or a missing manifest) makes it fall back to the previous intact checkpoint,
with a warning naming the file. A pickle anywhere in a checkpoint is refused outright (`UnsafeCheckpointError`).
Evaluation reads only the policy (`latest_policy`)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from mrt_ray.rollout.types import CollectedRollout, Completion
from mrt_ray.safe_state import is_pickle, is_state_file
from mrt_ray.utils import atomic_dir

PREFETCHED = "prefetched_rollout.json"
MANIFEST = "manifest.json"
FORMAT = "mrt-ray-checkpoint/1"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")  # only mrt-ray state files may carry them
log = logging.getLogger("mrt_ray")


class CheckpointError(ValueError):
    """A checkpoint that fails its manifest (missing, truncated or altered file, no manifest)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holding a pickle: never loaded, never skipped silently."""


def save(run_dir: Path, step: int, learners, state: dict, prefetched: CollectedRollout | None = None) -> Path:
    final = run_dir / "checkpoints" / f"step_{step:06d}"
    with atomic_dir(final) as tmp:
        learners.call("save_state", str(tmp / "ds"), "state")
        learners.call("save_hf", str(tmp / "hf"))
        if prefetched is not None:  # floats round-trip exactly through JSON (repr)
            (tmp / PREFETCHED).write_text(json.dumps({"outs": [[asdict(c) for c in comps] for comps in prefetched.outs],
                                                      "stats": prefetched.stats}))
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step}))
        write_manifest(tmp)  # last: a directory with a valid manifest is complete
    latest = run_dir / "checkpoints" / "latest"
    tmp_latest = latest.with_suffix(".tmp")
    tmp_latest.write_text(final.name)
    os.replace(tmp_latest, latest)
    return final


def _files(ckpt: Path) -> list[str]:
    return sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file() and p.name != MANIFEST)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        os.fsync(f.fileno())  # written by other processes (the learner ranks): on disk before the manifest
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(ckpt: Path) -> None:
    """`manifest.json`: every file of the checkpoint with its size and sha256, written atomically."""
    files = {rel: {"bytes": (ckpt / rel).stat().st_size, "sha256": _sha256(ckpt / rel)} for rel in _files(ckpt)}
    tmp = ckpt / f".{MANIFEST}.tmp"
    with open(tmp, "w") as f:
        json.dump({"format": FORMAT, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckpt / MANIFEST)


def refuse_pickles(ckpt: Path) -> None:
    """UnsafeCheckpointError if any file of `ckpt` is a pickle (by its first bytes), or carries a pickle suffix
    without being an mrt-ray state file. Nothing is unpickled to find out."""
    for rel in _files(ckpt):
        path = ckpt / rel
        if is_pickle(path) or (path.suffix in PICKLE_SUFFIXES and not is_state_file(path)):
            raise UnsafeCheckpointError(
                f"{path} is a pickle or an unknown binary; mrt-ray never unpickles a checkpoint (DeepSpeed's "
                f"torch.save files of mrt-ray before 0.2 included). Resume from a checkpoint this mrt-ray wrote.")


def verify(ckpt: Path) -> None:
    """CheckpointError naming the first missing, truncated or altered file of `ckpt`, or its missing manifest."""
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt.name} is missing")
    refuse_pickles(ckpt)
    path = ckpt / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{ckpt.name} has no {MANIFEST} (incomplete, or not written by this mrt-ray)")
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"] if manifest.get("format") == FORMAT else None
    except (ValueError, KeyError, AttributeError):
        files = None
    if not isinstance(files, dict):
        raise CheckpointError(f"{ckpt.name}/{MANIFEST} is unreadable (not an {FORMAT} manifest)")
    for rel, want in files.items():
        f = ckpt / rel
        if not f.is_file():
            raise CheckpointError(f"{ckpt.name}/{rel} is missing")
        size = f.stat().st_size
        if size != want["bytes"]:
            raise CheckpointError(f"{ckpt.name}/{rel} has {size} bytes, its manifest says {want['bytes']} (truncated?)")
        if _sha256(f) != want["sha256"]:
            raise CheckpointError(f"{ckpt.name}/{rel} is corrupted (sha256 differs from its manifest)")


def latest(run_dir: Path) -> Path | None:
    """The newest intact checkpoint of a run (None: the run has none yet). `checkpoints/latest` names the newest; if
    it fails verification, older ones are tried, newest first, with a warning on logger "mrt_ray" naming the bad file.
    A pickle in a checkpoint is an UnsafeCheckpointError; no intact checkpoint at all is a CheckpointError."""
    root = run_dir / "checkpoints"
    steps = sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True)
    pointer = root / "latest"
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        steps = [named] + [p for p in steps if p.name < named.name]
    bad = []
    for ckpt in steps:
        try:
            verify(ckpt)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as e:
            bad.append(str(e))
            continue
        if bad:
            log.warning("mrt-ray: checkpoint %s; resuming from the previous intact checkpoint %s", "; ".join(bad),
                        ckpt.name)
        return ckpt
    if bad:
        raise CheckpointError(f"{run_dir}: no intact checkpoint ({'; '.join(bad)}); remove {root} to start over")
    return None


def latest_policy(run_dir: Path) -> Path:
    """The HF policy (`hf/`) of a run's newest intact checkpoint, for evaluation or as a starting point: only `hf/`
    is read then (safetensors and JSON). A checkpoint with a manifest is verified whole (`latest`). One without,
    named by `checkpoints/latest` (written before checkpoints carried manifests, so complete when `latest` was set),
    has only its `hf/` checked: no pickle there and safetensors weights present; it is used with a warning that its
    files could not be verified. Its learner state is not read, so a pickle there does not matter."""
    pointer = run_dir / "checkpoints" / "latest"
    named = run_dir / "checkpoints" / pointer.read_text().strip() if pointer.is_file() else None
    if named is None or (named / MANIFEST).is_file() or not named.is_dir():
        ckpt = latest(run_dir)
        if ckpt is None:
            raise CheckpointError(f"{run_dir}: no checkpoint yet")
        return ckpt / "hf"
    hf = named / "hf"
    refuse_pickles(hf)
    if not any(hf.glob("*.safetensors")):
        raise CheckpointError(f"{named}/hf holds no safetensors weights")
    log.warning("mrt-ray: %s has no %s (written before checkpoints carried manifests): its policy is used "
                "unverified", named, MANIFEST)
    return hf


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
