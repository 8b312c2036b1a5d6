"""Configuration: conf/default.yaml mirrors the dataclasses, presets load, mistakes are ConfigErrors that name the key,
impossible combinations are rejected before anything starts, the CLI's --dry-run, and docs/configuration.md is
current."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from mrt_ray import cli
from mrt_ray.config import (
    CONF_DIR,
    GROUPS,
    Config,
    ConfigError,
    from_yaml_file,
    is_global_preset,
    load_config,
    to_yaml,
)
from mrt_ray.validation import validate

REPO = Path(__file__).resolve().parent.parent


def _mirror_diff(schema: Any, yaml_node: Any, prefix: str = "") -> list[str]:
    """Differences between a dataclass instance and the YAML mapping that should mirror it, by dotted key."""
    if not isinstance(yaml_node, dict):
        return [f"{prefix or '<root>'}: YAML has {yaml_node!r}, the dataclass a section"]
    fields = {f.name: getattr(schema, f.name) for f in dataclasses.fields(schema)}
    out = [f"{prefix}{k}: in the dataclass, missing from the YAML" for k in fields if k not in yaml_node]
    out += [f"{prefix}{k}: in the YAML, not a dataclass field" for k in yaml_node if k not in fields]
    for name, default in fields.items():
        if name not in yaml_node:
            continue
        if dataclasses.is_dataclass(default):
            out += _mirror_diff(default, yaml_node[name], f"{prefix}{name}.")
        elif yaml_node[name] != default:
            out.append(f"{prefix}{name}: YAML default {yaml_node[name]!r} != dataclass default {default!r}")
    return out


def test_default_yaml_mirrors_config_key_for_key() -> None:
    loaded = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "default.yaml"))
    assert _mirror_diff(Config(), loaded) == []


def test_mirror_check_reports_missing_extra_and_changed_keys() -> None:
    loaded = OmegaConf.to_container(OmegaConf.structured(Config()))
    del loaded["task"]["max_value"]
    loaded["algo"]["mrt"]["extra"] = 1
    loaded["rollout"]["n_samples"] = 3
    assert sorted(_mirror_diff(Config(), loaded)) == [
        "algo.mrt.extra: in the YAML, not a dataclass field",
        "rollout.n_samples: YAML default 3 != dataclass default 8",
        "task.max_value: in the dataclass, missing from the YAML",
    ]


def _preset_overrides(group: str, name: str) -> list[str]:
    extra = ["task.path=data/train.jsonl"] if group == "task" and name in ("gsm8k", "math") else []
    return [f"{group}={name}", *extra]


PRESETS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


def test_every_group_has_presets() -> None:
    assert {g for g, _ in PRESETS} == set(GROUPS)


@pytest.mark.parametrize(("group", "name"), PRESETS, ids=[f"{g}={n}" for g, n in PRESETS])
def test_preset_loads_and_sets_its_keys(group: str, name: str) -> None:
    cfg = load_config(None, _preset_overrides(group, name))
    path = CONF_DIR / group / f"{name}.yaml"
    resolved = OmegaConf.to_container(OmegaConf.structured(cfg))
    resolved = resolved if is_global_preset(path) else resolved[group]  # a global preset names its sections
    preset = OmegaConf.to_container(OmegaConf.load(path))

    def check(want: dict, got: dict, where: str) -> None:
        for k, v in want.items():
            if isinstance(v, dict):
                check(v, got[k], f"{where}{k}.")
            else:
                assert got[k] == v, f"{where}{k}: preset says {v!r}, resolved {got[k]!r}"

    check(preset, resolved, "" if is_global_preset(path) else group)


def test_loading_order_file_then_presets_then_dotlist(tmp_path: Path) -> None:
    f = tmp_path / "my.yaml"
    f.write_text("algo:\n  alpha: 0.1\n  clip_eps: 0.3\nlearner:\n  lr: 1.0e-5\n")
    cfg = load_config(str(f), [])
    assert (cfg.algo.alpha, cfg.algo.clip_eps, cfg.learner.lr) == (0.1, 0.3, 1e-5)
    cfg = load_config(str(f), ["algo=length_penalty"])  # the preset (alpha 0.2) beats the file
    assert (cfg.algo.alpha, cfg.algo.clip_eps, cfg.algo.reward) == (0.2, 0.3, "length_penalty")
    cfg = load_config(str(f), ["algo.alpha=0.3", "algo=length_penalty"])  # a dotlist override beats both
    assert (cfg.algo.alpha, cfg.algo.advantage) == (0.3, "rloo")


def test_free_form_dict_key_can_be_overridden() -> None:
    cfg = load_config(None, ["bootstrap.style_weights_easy.verbose=0.5"])
    assert cfg.bootstrap.style_weights_easy == {"concise": 0.1, "stepwise": 0.1, "confirm": 0.8, "estimate": 0.0,
                                                "verbose": 0.5}


def test_resolved_yaml_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["algo=mrt", "learner.betas=[0.8,0.9]", "progress.force_text=\\n#### "])
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    assert from_yaml_file(tmp_path / "config.yaml") == cfg


# ------------------------------------------------------------------------------------------------ user mistakes


def _error(config_file: str | None, overrides: list[str]) -> str:
    """The message the CLI prints: loading (per-key checks) then validate() (cross-key rules)."""
    with pytest.raises(ConfigError) as e:
        validate(load_config(config_file, overrides))
    return str(e.value)


def test_unknown_override_key_names_it_and_near_keys() -> None:
    msg = _error(None, ["rollout.n_sample=3"])
    assert "unknown key 'rollout.n_sample'" in msg
    assert "rollout.n_samples" in msg


def test_unknown_key_in_config_file_names_it_and_near_keys(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("learner:\n  lrr: 0.1\n")
    msg = _error(str(f), [])
    assert str(f) in msg and "unknown key 'learner.lrr'" in msg
    assert "learner.lr" in msg


def test_unknown_section_falls_back_to_the_sections() -> None:
    msg = _error(None, ["no_such.key=1"])
    assert "'no_such.key'" in msg
    assert "rollout" in msg and "learner" in msg


@pytest.mark.parametrize(("override", "key", "value", "expected"), [
    ("learner.lr=abc", "learner.lr", "abc", "float"),
    ("rollout.n_samples=many", "rollout.n_samples", "many", "int"),
    ("algo.whiten=perhaps", "algo.whiten", "perhaps", "bool"),
])
def test_wrong_type_names_key_value_and_type(override: str, key: str, value: str, expected: str) -> None:
    msg = _error(None, [override])
    assert f"key '{key}'" in msg and repr(value) in msg and f"expected type {expected}" in msg


def test_wrong_type_in_config_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  steps: lots\n")
    msg = _error(str(f), [])
    assert str(f) in msg and "key 'train.steps'" in msg and "'lots'" in msg and "expected type int" in msg


def test_unknown_preset_lists_the_group() -> None:
    msg = _error(None, ["algo=ppo"])
    assert "conf/algo/ppo.yaml" in msg
    assert "'grpo'" in msg and "'mrt'" in msg


def test_missing_config_file_and_bad_override_syntax(tmp_path: Path) -> None:
    assert "no such file" in _error(str(tmp_path / "absent.yaml"), [])
    assert "not of the form key=value" in _error(None, ["learner.lr"])


@pytest.mark.parametrize(("overrides", "expect"), [
    (["learner.zero_stage=4"], "learner.zero_stage=4 is not one of [0, 1, 2, 3]"),
    (["algo.alpha=1.5"], "algo.alpha=1.5 must be in [0, 1)"),
    (["algo.alpha=-0.1"], "algo.alpha=-0.1 must be in [0, 1)"),
    (["train.steps=-5"], "train.steps=-5 must be > 0"),
    (["learner.betas=[0.9,1.5]"], "learner.betas[1]=1.5 must be in [0, 1)"),
    (["algo.clip_eps_high=0.1"], "algo.clip_eps_high=0.1 must be >= algo.clip_eps=0.2"),
    (["task.min_terms=7"], "task.min_terms=7 must be <= task.max_terms=6"),
    (["rollout.n_samples=1"], "algo.advantage=grpo needs rollout.n_samples >= 2"),
    (["algo=rloo", "rollout.n_samples=1"], "algo.advantage=rloo needs rollout.n_samples >= 2"),
    (["ray.num_cpus=1", "learner.num_ranks=2"], "the actors ask for 1.5 CPUs (rollout 1x0.5, learner 2x0.5) but "
                                                "ray.num_cpus=1"),
    (["ray.num_cpus=1", "rollout.num_cpus=1"], "(rollout 1x1, learner 1x0.5)"),  # derived ranks: at least 1
    (["ray.num_cpus=2", "algo=mrt", "progress.num_cpus=1", "learner.num_ranks=2"], "the actors ask for 2.5 CPUs"),
    (["task.name=file"], "task.name=file needs task.path"),
    (["algo.advantage=ppo"], "algo.advantage='ppo' is not registered; choose one of ['drgrpo', 'grpo', 'rloo']"),
    (["algo.reward=shorter"], "algo.reward='shorter' is not registered"),
    (["algo.loss=dpo"], "algo.loss='dpo' is not registered"),
    (["rollout.backend=sglang"], "rollout.backend='sglang' is not one of ['vllm', 'hf']"),
    (["train.prompts_per_step=0"], "train.prompts_per_step=0 must be > 0"),
    (["model.max_model_len=100"], "model.max_model_len=100 leaves no room for prompts"),
])
def test_impossible_combinations_are_rejected(overrides: list[str], expect: str) -> None:
    assert expect in _error(None, overrides)


def test_cpu_budget_that_fits_is_accepted() -> None:
    assert load_config(None, ["ray.num_cpus=2"]).ray.num_cpus == 2  # 0.5 + 2 x 0.5 = 1.5 CPUs
    # with algo=mrt the estimator's 0.5 CPU counts too: 2.0 <= 2
    assert load_config(None, ["ray.num_cpus=2", "algo=mrt"]).algo.name == "mrt"


def test_all_violations_are_reported_together() -> None:
    msg = _error(None, ["learner.zero_stage=4", "algo.alpha=1.5", "train.steps=0"])  # per-key, while loading
    assert msg.startswith("invalid configuration:") and "\n" not in msg
    assert "learner.zero_stage" in msg and "algo.alpha" in msg and "train.steps" in msg
    msg = _error(None, ["task.name=file", "rollout.n_samples=1"])  # cross-key, in validate()
    assert "task.path" in msg and "rollout.n_samples >= 2" in msg


def _leaves(obj: Any, prefix: str = ""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, value


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def test_every_numeric_key_declares_its_range_or_choices() -> None:
    for key, f, value in _leaves(Config()):
        numeric = _is_number(value) or (isinstance(value, (list, dict)) and value
                                         and all(map(_is_number, value.values() if isinstance(value, dict) else value)))
        if numeric:
            assert "range" in f.metadata or "choices" in f.metadata, f"{key} has no declared range"


def _bad_values() -> list[tuple[str, str]]:
    """One out-of-range or out-of-set value for every key that declares a range or choices."""
    out = []
    for key, f, value in _leaves(Config()):
        if "choices" in f.metadata:
            out.append((key, "99" if _is_number(value) else "no_such_choice"))
        elif "range" in f.metadata:
            lo, hi, lo_open, hi_open = f.metadata["range"]
            bad = lo if lo_open else lo - 1
            elem = f"{bad:g}" if not isinstance(value, (list, dict)) else None
            if isinstance(value, list):
                elem = f"[{bad:g}]"
            elif isinstance(value, dict):
                k = next(iter(value), "x")
                key, elem = f"{key}.{k}", f"{bad:g}"
            out.append((key, elem))
            if hi is not None and not isinstance(value, (list, dict)):
                out.append((key, f"{hi if hi_open else hi + 1:g}"))
    return out


@pytest.mark.parametrize(("key", "value"), _bad_values())
def test_every_bad_value_is_one_line_naming_the_key(key: str, value: str) -> None:
    msg = _error(None, [f"{key}={value}"])
    assert "\n" not in msg and msg.startswith("invalid configuration: ")
    assert key.rsplit(".", 1)[0] in msg


def test_invalid_config_stops_train_before_anything_starts(monkeypatch, capsys) -> None:
    def must_not_run(cfg: Config) -> dict:
        raise AssertionError("train() was called with an invalid configuration")

    monkeypatch.setitem(sys.modules, "mrt_ray.trainer", types.SimpleNamespace(train=must_not_run))
    assert cli.main(["train", "learner.zero_stage=4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mrt-ray: invalid configuration:") and "learner.zero_stage=4" in err


# ------------------------------------------------------------------------------------------------ CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mrt_ray", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def test_cli_dry_run_prints_the_resolved_yaml() -> None:
    proc = _cli("train", "--dry-run", "algo=mrt", "learner.lr=1e-5")
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed == OmegaConf.to_container(OmegaConf.structured(load_config(None, ["algo=mrt", "learner.lr=1e-5"])))
    assert printed["algo"]["name"] == "mrt" and printed["learner"]["lr"] == 1e-5


def test_cli_dry_run_unknown_key_exits_2_without_traceback() -> None:
    proc = _cli("train", "--dry-run", "no_such.key=1")
    assert proc.returncode == 2
    assert "no_such.key" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


# ------------------------------------------------------------------------------------------------ the generated doc


def _gen_doc_module():
    spec = importlib.util.spec_from_file_location("gen_config_doc", REPO / "scripts" / "gen_config_doc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_configuration_doc_is_up_to_date() -> None:
    gen = _gen_doc_module()
    assert (REPO / "docs" / "configuration.md").read_text() == gen.render(), (
        "docs/configuration.md is stale: run .venv/bin/python scripts/gen_config_doc.py")


def test_every_key_has_a_documented_meaning() -> None:
    gen = _gen_doc_module()
    means = gen.meanings()  # raises on a key without meaning and on stale or duplicate MEANINGS entries
    assert set(means) == {key for key, *_ in gen.walk(Config())}
    assert all(means.values())


def test_field_comments_parser() -> None:
    gen = _gen_doc_module()
    source = (
        "class A:\n"
        "    x: int = 1  # the x\n"
        "    # a group\n"
        "    y: str = \"#### \"  # after a string holding '#'\n"
        "    z: int = 0\n"
        "    # two\n"
        "    # lines\n"
        "    w: list[int] = field(\n"
        "        default_factory=list\n"
        "    )\n"
    )
    assert gen.field_comments(source) == {
        ("A", "x"): ("", "the x"),
        ("A", "y"): ("a group", "after a string holding '#'"),
        ("A", "w"): ("two lines", ""),
    }


COMMANDS = ("train", "bootstrap", "eval", "sweep", "star", "grid", "report")


@pytest.mark.parametrize("argv", [["--help"], *[[cmd, "--help"] for cmd in COMMANDS]])
def test_help_prints_for_every_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.run(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "%%" not in out  # a help string is %-formatted, a description is not


def test_a_local_run_turns_on_ray_token_auth_before_ray_is_imported(monkeypatch) -> None:
    """Ray reads RAY_AUTH_MODE once, at import: the CLI sets it for a local cluster before any command imports Ray,
    and leaves it alone when the run joins a cluster (RAY_ADDRESS / ray.address) or the user chose a mode."""
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cli.run(["train", "--dry-run"]) == 0 and os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.delenv("RAY_AUTH_MODE")
    assert cli.run(["train", "--dry-run", "ray.address=auto"]) == 0 and "RAY_AUTH_MODE" not in os.environ
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert cli.run(["train", "--dry-run"]) == 0 and os.environ["RAY_AUTH_MODE"] == "disabled"


@pytest.mark.parametrize("command", ["train", "grid", "sweep", "eval"])
def test_ray_is_first_imported_with_token_auth_on(command) -> None:
    """A fresh `mrt-ray COMMAND` process: the moment anything first imports Ray, RAY_AUTH_MODE is already "token"
    (Ray reads it then; a driver that read "disabled" cannot join the local cluster it starts, whose processes
    inherit "token": every local run failed with InvalidAuthToken)."""
    probe = ("import os, sys\n"
             "seen = []\n"
             "class Hook:\n"
             "    def find_spec(self, name, path, target=None):\n"
             "        if name == 'ray' and not seen:\n"
             "            seen.append(os.environ.get('RAY_AUTH_MODE'))\n"
             "sys.meta_path.insert(0, Hook())\n"
             "from mrt_ray import cli\n"
             f"assert cli.run([{command!r}, '--dry-run']) == 0\n"
             "print('RAY_AUTH_MODE at import:', seen, file=sys.stderr)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "RAY_AUTH_MODE at import: ['token']" in out.stderr, out.stderr[-2000:]
