"""Loading: `conf/default.yaml` -> optional `--config FILE` -> group presets (`algo=mrt` merges `conf/algo/mrt.yaml`
into the `algo` section; a preset whose header holds Hydra's `# @package _global_` line merges at the root instead, so
it can set keys of other sections) -> dotlist overrides (`learner.lr=1e-5`). Unknown keys and wrong types raise
`ConfigError` with the key, the value and the nearest valid keys; a value outside its field's range or choices
(declared in `schema.py`) is one line naming the key. Rules that span keys or need the registries are
`mrt_ray.validation`'s, called by the composition root (the CLI) before anything starts.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from mrt_ray.config.schema import Config

CONF_DIR = Path(os.environ.get("MRT_RAY_CONF", Path(__file__).resolve().parents[2] / "conf"))
GROUPS = ("algo", "model", "task", "eval")  # `group=name` overrides load conf/<group>/<name>.yaml


class ConfigError(ValueError):
    """A user mistake in the configuration; the CLI prints it without a traceback."""

    @classmethod
    def of(cls, errors: list[str]) -> ConfigError:
        """All violations in one line: `invalid configuration: a; b`."""
        return cls("invalid configuration: " + "; ".join(errors))


# --------------------------------------------------------------------------- per-field checks


def _in_range(v: Any, lo, hi, lo_open: bool, hi_open: bool) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return True  # the type is OmegaConf's to check
    if lo is not None and (v <= lo if lo_open else v < lo):
        return False
    return not (hi is not None and (v >= hi if hi_open else v > hi))


def _range_text(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def range_error(where: str, value: Any, f: dataclasses.Field) -> str | None:
    """The message for one number outside field `f`'s declared range (None when it is inside or none is declared)."""
    if "range" not in f.metadata or _in_range(value, *f.metadata["range"]):
        return None
    return f"{where}={value!r} must be {_range_text(*f.metadata['range'])}"


def check_fields(obj: Any, prefix: str = "") -> list[str]:
    """One message per value outside its field's declared range or choices (lists and dicts element by element)."""
    errors = []
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            errors += check_fields(value, key + ".")
            continue
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            errors.append(f"{key}={value!r} is not one of {list(f.metadata['choices'])}")
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else None
        for sub, v in items if items is not None else [(None, value)]:
            where = key if sub is None else f"{key}[{sub!r}]" if isinstance(sub, str) else f"{key}[{sub}]"
            msg = range_error(where, v, f)
            if msg:
                errors.append(msg)
    return errors


# --------------------------------------------------------------------------- loading


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(node, DictConfig):
        for k in node:
            full = f"{prefix}{k}"
            out.append(full)
            out.extend(_all_keys(node[k], full + "."))
    return out


def _nearest(key: str, schema: DictConfig) -> str:
    keys = _all_keys(schema)
    near = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
    if not near:  # fall back to keys sharing the section or the last part
        last = key.split(".")[-1]
        near = [k for k in keys if k.split(".")[-1] == last][:3] or [k for k in keys if "." not in k][:8]
    return ", ".join(near)


def _merge(schema: DictConfig, base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except ConfigKeyError as e:
        key = e.full_key or str(e.key)
        raise ConfigError(f"{source}: unknown key '{key}'. Nearest valid keys: {_nearest(key, schema)}") from None
    except ValidationError as e:
        expected = type(OmegaConf.select(schema, e.full_key)).__name__ if e.full_key else "?"
        raise ConfigError(
            f"{source}: key '{e.full_key}' got value {e.value!r}, expected type {expected}"
        ) from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{source}: {e.msg if hasattr(e, 'msg') else e}") from None


def _load_yaml(path: Path, source: str) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"{source}: no such file {path}")
    try:
        return OmegaConf.load(path)
    except Exception as e:  # yaml syntax error
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def group_presets(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def is_global_preset(path: Path) -> bool:
    """Whether the preset's leading comment block holds Hydra's `# @package _global_` (merge at the root)."""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            return False
        if line[1:].strip() == "@package _global_":
            return True
    return False


def load_config(config_file: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Resolve the configuration; raises ConfigError naming the offending key or file."""
    schema = OmegaConf.structured(Config)
    cfg = _merge(schema, schema, _load_yaml(CONF_DIR / "default.yaml", "conf/default.yaml"), "conf/default.yaml")
    if config_file:
        cfg = _merge(schema, cfg, _load_yaml(Path(config_file), config_file), config_file)
    dotlist = []
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' is not of the form key=value")
        key, value = ov.split("=", 1)
        if key in GROUPS:
            names = group_presets(key)
            if value not in names:
                raise ConfigError(f"'{key}={value}': no preset conf/{key}/{value}.yaml; choose one of {names}")
            path = CONF_DIR / key / f"{value}.yaml"
            preset = _load_yaml(path, ov)
            cfg = _merge(schema, cfg, preset if is_global_preset(path) else OmegaConf.create({key: preset}),
                         f"conf/{key}/{value}.yaml")
        else:
            dotlist.append(ov)
    for ov in dotlist:
        key = ov.split("=", 1)[0]
        try:
            parsed = OmegaConf.from_dotlist([ov])
        except Exception as e:
            raise ConfigError(f"override '{ov}': {e}") from None
        if OmegaConf.select(schema, key, default=MISSING) is MISSING and not _is_dict_key(schema, key):
            raise ConfigError(f"unknown key '{key}'. Nearest valid keys: {_nearest(key, schema)}")
        cfg = _merge(schema, cfg, parsed, f"override '{ov}'")
    obj: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    errors = check_fields(obj)
    if errors:
        raise ConfigError.of(errors)
    return obj


def _is_dict_key(schema: DictConfig, key: str) -> bool:
    """`bootstrap.style_weights_easy.verbose`, `grid.methods.<label>`, `algo.schedule.token_limit` and
    `task.dataset_config.<key>` are valid: their parents are free-form dicts."""
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    node = OmegaConf.select(schema, parent, default=None) if parent else None
    return isinstance(node, DictConfig) and parent in ("bootstrap.style_weights_easy", "bootstrap.style_weights_hard",
                                                       "grid.methods", "algo.schedule", "task.dataset_config")


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]


def from_yaml_file(path: str | Path) -> Config:
    """Load a resolved config written by a run (config.yaml) back into the typed dataclass."""
    schema = OmegaConf.structured(Config)
    cfg = _merge(schema, schema, _load_yaml(Path(path), str(path)), str(path))
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]
