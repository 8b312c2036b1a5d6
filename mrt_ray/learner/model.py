"""Loading HF causal LMs and tokenizers safely: safetensors only (no pickle), remote code only when asked."""
from __future__ import annotations

from pathlib import Path

import torch

from mrt_ray.config import ModelConfig


def _check_dir(path: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"model.path={path!r} is not a directory (an HF causal-LM directory is expected)")
    return p


def load_tokenizer(path: str, mc: ModelConfig):
    from transformers import AutoTokenizer

    _check_dir(path)
    kwargs = {"gguf_file": mc.gguf_file} if mc.gguf_file else {}
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=mc.trust_remote_code, **kwargs)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, mc: ModelConfig):
    from transformers import AutoModelForCausalLM

    p = _check_dir(path)
    kwargs = {"gguf_file": mc.gguf_file} if mc.gguf_file else {"use_safetensors": True}
    if not mc.gguf_file and not any(p.glob("*.safetensors")):
        raise FileNotFoundError(
            f"{path}: no *.safetensors weights; mrt-ray does not unpickle .bin checkpoints (convert them first)"
        )
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, mc.dtype), trust_remote_code=mc.trust_remote_code, **kwargs
    )
