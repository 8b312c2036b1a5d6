"""Checkpoints without pickle that prove themselves (issue 18), on real files and no running stack: the safetensors +
JSON state format (`mrt_ray.safe_state`), the manifest of file hashes, the fall-back to the previous intact checkpoint
(truncated file, flipped byte, missing file, deleted manifest), and a planted malicious pickle that resuming refuses
without ever running it. The same guarantees on a real run's checkpoints: tests/test_reliability.py."""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from mrt_ray import checkpoint, safe_state


class _Marker:
    """Unpickling this writes a file: proof that a pickle ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _plant_pickle(path: Path, marker: Path, torch_format: bool = False) -> None:
    payload = {"optimizer_state_dict": _Marker(marker)}
    if torch_format:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4))


def test_state_round_trips_exactly(tmp_path):
    """What DeepSpeed's state dicts hold (int-keyed optimizer state, tuples, OrderedDicts of torch.Size, sets, dtypes,
    floats incl. NaN, tied tensors, views) comes back equal, with the same tensor bytes."""
    torch.manual_seed(0)
    flat = torch.randn(40)
    state = {
        "optimizer_state_dict": {"state": {0: {"step": torch.tensor(7.0), "exp_avg": flat, "exp_avg_sq": flat[10:20]}},
                                 "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.95), "params": [0, 1]}]},
        "param_shapes": [OrderedDict(w=torch.Size([4, 10]))], "names": {"a", "b"}, "dtype": torch.bfloat16,
        "bf16": flat.to(torch.bfloat16), "nan": float("nan"), "none": None, "tied": [flat, flat], "$key": 1,
    }
    safe_state.save(state, tmp_path / "s.pt")
    back = safe_state.load(tmp_path / "s.pt")
    osd = back["optimizer_state_dict"]
    assert list(osd["state"]) == [0] and osd["param_groups"] == state["optimizer_state_dict"]["param_groups"]
    assert torch.equal(osd["state"][0]["exp_avg"], flat) and torch.equal(osd["state"][0]["exp_avg_sq"], flat[10:20])
    assert back["param_shapes"] == state["param_shapes"] and type(back["param_shapes"][0]) is OrderedDict
    assert back["names"] == {"a", "b"} and back["dtype"] is torch.bfloat16 and back["$key"] == 1
    assert back["bf16"].dtype == torch.bfloat16 and torch.equal(back["bf16"], state["bf16"])
    assert back["tied"][0] is back["tied"][1]  # one object, as torch.load would give
    assert back["nan"] != back["nan"] and back["none"] is None
    assert safe_state.is_state_file(tmp_path / "s.pt") and not safe_state.is_pickle(tmp_path / "s.pt")


def test_state_stores_only_allowed_objects(tmp_path):
    class Scaler:
        def __init__(self):
            self.cur_scale = 1.0

    with pytest.raises(safe_state.StateError, match=r"cannot store .*Scaler at \.loss_scaler without pickle"):
        safe_state.save({"loss_scaler": Scaler()}, tmp_path / "s.pt")
    allowed = {safe_state.qualname(Scaler): Scaler}
    safe_state.save({"loss_scaler": Scaler()}, tmp_path / "s.pt", allowed)
    assert safe_state.load(tmp_path / "s.pt", allowed)["loss_scaler"].cur_scale == 1.0
    with pytest.raises(safe_state.StateError, match="not an allowed object"):  # the reader decides, not the file
        safe_state.load(tmp_path / "s.pt")


@pytest.mark.parametrize("torch_format", [False, True], ids=["pickle", "torch.save"])
def test_a_pickle_is_refused_and_never_run(tmp_path, torch_format):
    marker = tmp_path / "pickle_ran"
    path = tmp_path / "mp_rank_00_model_states.pt"
    _plant_pickle(path, marker, torch_format)
    assert safe_state.is_pickle(path)
    with pytest.raises(safe_state.StateError, match="is a pickle"):
        safe_state.load(path)
    assert not marker.exists()


def _fake_run(root: Path, steps=(1, 3)) -> Path:
    """A run directory with real checkpoint files (state files, JSON, a safetensors policy) and manifests."""
    from safetensors.torch import save_file

    for step in steps:
        ck = root / "checkpoints" / f"step_{step:06d}"
        (ck / "ds" / "state").mkdir(parents=True)
        (ck / "hf").mkdir()
        safe_state.save({"optimizer_state_dict": {"step": step, "m": torch.full((64,), float(step))}},
                        ck / "ds" / "state" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
        save_file({"w": torch.arange(32.0) * step}, str(ck / "hf" / "model.safetensors"))
        (ck / "trainer_state.json").write_text(json.dumps({"step": step, "version": step + 1}))
        checkpoint.write_manifest(ck)
    (root / "checkpoints" / "latest").write_text(f"step_{steps[-1]:06d}")
    return root


OPTIM = "ds/state/zero_pp_rank_0_mp_rank_00_optim_states.pt"


def _truncate(ck: Path) -> None:
    p = ck / OPTIM
    p.write_bytes(p.read_bytes()[:-100])


def _flip_byte(ck: Path) -> None:
    p = ck / "hf" / "model.safetensors"
    b = bytearray(p.read_bytes())
    b[-5] ^= 0x01
    p.write_bytes(bytes(b))


@pytest.mark.parametrize("damage, message", [
    (_truncate, rf"{OPTIM} has \d+ bytes, its manifest says \d+ \(truncated\?\)"),
    (_flip_byte, r"hf/model.safetensors is corrupted \(sha256 differs from its manifest\)"),
    (lambda ck: (ck / "trainer_state.json").unlink(), r"trainer_state.json is missing"),
    (lambda ck: (ck / checkpoint.MANIFEST).unlink(), r"has no manifest.json"),
], ids=["truncated", "flipped-byte", "missing-file", "no-manifest"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog, damage, message):
    run = _fake_run(tmp_path)
    assert checkpoint.latest(run).name == "step_000003" and not caplog.records
    damage(run / "checkpoints" / "step_000003")
    with caplog.at_level(logging.WARNING, logger="mrt_ray"):
        assert checkpoint.latest(run).name == "step_000001"
    [rec] = caplog.records
    assert rec.name == "mrt_ray" and re.search(f"step_000003[/ ]{message}", rec.getMessage()), rec.getMessage()
    assert "resuming from the previous intact checkpoint step_000001" in rec.getMessage()


def test_no_intact_checkpoint_is_an_error_naming_each_problem(tmp_path):
    run = _fake_run(tmp_path)
    _truncate(run / "checkpoints" / "step_000003")
    _flip_byte(run / "checkpoints" / "step_000001")
    with pytest.raises(checkpoint.CheckpointError, match=r"(?s)no intact checkpoint .*step_000003/ds.*truncated"
                                                         r".*step_000001/hf/model.safetensors is corrupted"):
        checkpoint.latest(run)
    assert checkpoint.latest(tmp_path / "fresh") is None  # no checkpoints yet: a fresh start


def test_a_planted_pickle_stops_resume_before_anything_runs(tmp_path, capsys):
    """A malicious pickle in place of a DeepSpeed state file, with the manifest rewritten to match (an attacker
    controls the whole directory): resuming refuses it with a one-line error, and the pickle never runs."""
    from mrt_ray.cli import main
    from mrt_ray.config import load_config, to_yaml

    run = _fake_run(tmp_path / "run")
    (run / "config.yaml").write_text(to_yaml(load_config(None, [f"run.dir={run}"])))
    marker = tmp_path / "pickle_ran"
    ck = run / "checkpoints" / "step_000003"
    _plant_pickle(ck / OPTIM, marker, torch_format=True)
    checkpoint.write_manifest(ck)
    with pytest.raises(checkpoint.UnsafeCheckpointError, match=rf"{OPTIM} is a pickle or an unknown binary"):
        checkpoint.latest(run)
    assert main(["train", f"resume={run}"]) == 2  # the CLI: one line, no traceback, nothing started
    err = capsys.readouterr().err.strip()
    assert err.startswith("mrt-ray: ") and "never unpickles" in err and len(err.splitlines()) == 1, err
    # an extra pickle next to intact files is refused the same way, whatever its name
    _fake_run(tmp_path / "run2")
    (tmp_path / "run2" / "checkpoints" / "step_000003" / "ds" / "notes.json").write_bytes(pickle.dumps(_Marker(marker)))
    with pytest.raises(checkpoint.UnsafeCheckpointError, match="notes.json is a pickle"):
        checkpoint.latest(tmp_path / "run2")
    assert not marker.exists()


def test_a_run_from_before_manifests_gives_its_policy_for_eval_only(tmp_path, caplog):
    """latest_policy (eval, model.path=<run dir>): a checkpoint named by `latest` without a manifest (an older
    mrt-ray, whose DeepSpeed state was torch.save pickles) gives its hf/ policy with a warning, since only hf/ is read;
    resume (`latest`) still refuses it. A pickle inside hf/ is refused for eval too; a checkpoint with a manifest
    is verified whole."""
    from mrt_ray.config import load_config
    from mrt_ray.models import resolve_model_path

    marker = tmp_path / "pickle_ran"
    run = _fake_run(tmp_path / "old")
    ck = run / "checkpoints" / "step_000003"
    (ck / checkpoint.MANIFEST).unlink()
    _plant_pickle(ck / "ds" / "state" / "mp_rank_00_model_states.pt", marker, torch_format=True)
    with caplog.at_level(logging.WARNING, logger="mrt_ray"):
        assert resolve_model_path(str(run), load_config(None, []).model) == str(ck / "hf")
    assert "step_000003 has no manifest.json" in caplog.text and "used unverified" in caplog.text
    with pytest.raises(checkpoint.UnsafeCheckpointError):
        checkpoint.latest(run)
    _plant_pickle(ck / "hf" / "extra.bin", marker, torch_format=True)
    with pytest.raises(checkpoint.UnsafeCheckpointError, match="extra.bin is a pickle"):
        checkpoint.latest_policy(run)
    new = _fake_run(tmp_path / "new")
    _flip_byte(new / "checkpoints" / "step_000003")  # verified whole: falls back to the intact step 1
    assert checkpoint.latest_policy(new) == new / "checkpoints" / "step_000001" / "hf"
    assert not marker.exists()
