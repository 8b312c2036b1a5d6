"""Typed configuration: each dataclass mirrors one section of `conf/default.yaml`, key for key.

Every numeric key declares its range and every closed-set key its choices on the field itself (`num`, `pos`,
`frac`, `choice` below), so `config.load` checks a key with no other module: a value out of range is one error
naming the key. Cross-key rules and registry names are `mrt_ray.validation`'s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _field(default: Any, meta: dict) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def num(default: Any, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
        hi_open: bool = False) -> Any:
    """A number (or each number of a list / dict) in [lo, hi]; `lo_open` / `hi_open` exclude the bound."""
    return _field(default, {"range": (lo, hi, lo_open, hi_open)})


def pos(default: Any) -> Any:
    """A number > 0 (an int: >= 1)."""
    return num(default, 0, None, lo_open=True)


def nonneg(default: Any) -> Any:
    return num(default, 0)


def frac(default: Any, lo_open: bool = False, hi_open: bool = False) -> Any:
    """A number in [0, 1] (bounds excluded as asked)."""
    return num(default, 0, 1, lo_open, hi_open)


def choice(default: Any, *choices: Any) -> Any:
    return _field(default, {"choices": choices})


@dataclass
class RunConfig:
    dir: str = ""  # empty: runs/<name>-<timestamp>
    name: str = "mrt"


@dataclass
class ModelConfig:
    path: str = ""  # HF causal-LM directory or .gguf file; empty: the embedded base policy (`mrt-ray bootstrap`)
    dtype: str = choice("float32", "float32", "bfloat16", "float16")  # used by learner AND rollout so log-probs agree
    max_model_len: int = pos(320)
    trust_remote_code: bool = False
    gguf_file: str = ""  # a GGUF file inside `path` (or give path=FILE.gguf): converted once to safetensors
    package: str = ""  # an installed Python package whose folder holds the model (with gguf_file); when path is empty
    convert_dir: str = "runs/models"  # where GGUF files are converted (cached by path, size, mtime, dtype)


@dataclass
class TaskConfig:
    name: str = choice("embedded", "embedded", "file", "reasoning_gym")  # embedded | file | reasoning_gym
    grader: str = choice("exact", "exact", "math", "reasoning_gym")  # exact (embedded) | math | reasoning_gym scorer
    answer_marker: str = ""  # math grader: the answer follows the last occurrence of this text; empty: \boxed/####
    grader_timeout: float = pos(5.0)  # seconds per math-verify grading; a timeout scores 0
    # embedded chain-arithmetic task
    min_terms: int = pos(2)
    max_terms: int = pos(6)
    max_operand: int = pos(9)
    max_value: int = pos(19)  # the running value stays in [0, max_value]
    # reasoning-gym generators (name=reasoning_gym, the `gym` extra): problems generated from (seed, split, index)
    dataset: str = ""  # the generator's name, e.g. chain_sum, basic_arithmetic, gsm_symbolic
    dataset_config: dict[str, Any] = field(default_factory=dict)  # the generator's own config keys (not seed/size)
    # real data (name=file): JSONL, Parquet or an HF dataset saved with save_to_disk
    path: str = ""
    split: str = "train"
    question_key: str = "question"
    answer_key: str = "answer"
    # reasoning_gym: a field of the problems' metadata (e.g. chain_sum's `num_terms`)
    difficulty_key: str = ""  # row field with the problem's difficulty (e.g. MATH's `level`) for per-difficulty eval
    template: str = "{question}\n"  # plain template; `{question}` is replaced
    chat_template: bool = False  # wrap with the tokenizer's chat template instead
    system_prompt: str = ""
    on_bad_row: str = choice("error", "error", "skip")  # error | skip (skipped rows are counted and reported)
    eval_path: str = ""  # held-out file; empty: the last `eval.size` rows are held out
    think_open: str = "<think>"
    think_close: str = "</think>"
    # r1: episodes open with "Wait"; backtrack: a linearised search, "Node k:" steps and attempts separated by
    # "Backtrack to ..." lines (task=embedded_backtrack)
    traces: str = choice("r1", "r1", "backtrack")  # the embedded task's trace family (what the bootstrap trains on)


@dataclass
class BootstrapConfig:
    """Supervised warm start of the embedded base policy (a small Qwen2 with a character tokenizer)."""

    hidden_size: int = pos(128)
    num_layers: int = pos(4)
    num_heads: int = pos(4)
    intermediate_size: int = pos(384)
    steps: int = pos(600)
    batch_size: int = pos(32)
    lr: float = pos(5e-3)
    warmup: int = nonneg(50)
    threads: int = pos(2)
    # trace-style mix (concise, stepwise, confirm, verbose, repair, recheck, estimate; weights need not sum to 1),
    # linear in difficulty
    style_weights_easy: dict[str, float] = nonneg(
        {"concise": 0.1, "stepwise": 0.1, "confirm": 0.8, "estimate": 0.0})  # at task.min_terms
    style_weights_hard: dict[str, float] = nonneg(
        {"concise": 0.1, "stepwise": 0.3, "confirm": 0.2, "estimate": 0.4})  # at task.max_terms
    # full: the whole completion; suffix (backtrack traces only): the attempt after the last backtrack line, the
    # rest is context (the MRT reference's sft_suffix)
    sft_loss: str = choice("full", "full", "suffix")  # the completion tokens the SFT loss covers
    # L1 budget cues in the SFT prompts (r1 traces): this share of prompts carries a cue drawn like algo.budget's,
    # independent of its trace, so the base reads a cue without following it (its RL must teach that); 0: no cues
    budget_share: float = frac(0.0)  # share of SFT prompts with a budget cue
    budget_min_tokens: int = pos(16)  # smallest cue budget
    budget_max_tokens: int = pos(160)  # largest cue budget (inclusive)
    budget_max_share: float = frac(0.5)  # share of cues that ask for a maximum (" [<N]") rather than a target
    cache_dir: str = "runs/base"  # the model is cached at <cache_dir>/<config hash>


@dataclass
class RolloutConfig:
    backend: str = choice("vllm", "vllm", "hf")  # vllm | hf
    num_workers: int = pos(1)
    num_cpus: float = nonneg(0.5)  # Ray CPUs per worker
    num_gpus: float = nonneg(0.0)  # Ray GPUs per worker: 0 (CPU), tensor_parallel_size, or a share < 1 at TP=1
    tensor_parallel_size: int = pos(1)
    threads: int = pos(1)
    n_samples: int = pos(8)
    temperature: float = nonneg(1.0)
    top_p: float = frac(1.0, lo_open=True)
    max_new_tokens: int = pos(192)
    kv_cache_gib: float = pos(0.25)  # KV cache per engine on CPU, and on a GPU shared with other actors
    max_num_seqs: int = pos(256)  # vLLM: sequences decoded together (CPU: also sizes the prefill budget)
    gpu_memory_utilization: float = frac(0.5, lo_open=True)
    enforce_eager: bool = True
    max_restarts: int = nonneg(2)  # Ray restarts a dead worker process (max_restarts times)
    startup_timeout_s: float = pos(1200.0)  # an engine's start or restart: load, compile, CUDA-graph capture


@dataclass
class LearnerConfig:
    num_ranks: int = nonneg(0)  # DeepSpeed ranks; 0: derived at start: one per GPU left free, else 1
    num_cpus: float = nonneg(0.5)
    num_gpus: float = nonneg(0.0)
    threads: int = nonneg(0)  # torch threads per rank; 0: derived: on CPU in sync mode the cores over the ranks, else 1
    zero_stage: int = choice(2, 0, 1, 2, 3)
    lr: float = pos(1e-4)
    betas: list[float] = frac([0.9, 0.95], hi_open=True)
    weight_decay: float = nonneg(0.0)
    grad_clip: float = nonneg(1.0)  # global gradient-norm clip; 0: off
    warmup_steps: int = nonneg(0)
    micro_batch_size: int = pos(64)  # sequences per forward/backward on one rank
    ppo_epochs: int = pos(1)
    max_bad_steps: int = pos(3)  # NaN/inf steps skipped before the run stops
    collective_timeout_s: float = pos(300.0)
    startup_timeout_s: float = pos(1200.0)  # the ranks' start: model load and the DeepSpeed world
    push_bucket_mib: float = nonneg(0.0)  # weight push: MiB per bucket (receivers hold two); 0: 32 gloo, 256 NCCL
    gradient_checkpointing: bool = False  # recompute activations in backward (long sequences of large models)


@dataclass
class MRTConfig:
    variant: str = "bonus"  # registry key (mrt_ray.methods.MRT_VARIANTS): bonus | termination_baseline | online
    progress_coef: float = nonneg(1.0)  # alpha in l_FT + alpha * sum_j progress_j
    cut_prefixes: int = pos(2)  # termination_baseline, online: prefixes cut per step per prompt
    continuations: int = pos(2)  # termination_baseline, online: continuations (online: and terminations) per prefix
    star_keep: float = frac(0.5, lo_open=True)  # MRT-STaR (algo=star): fraction of correct traces kept per step


@dataclass
class BudgetConfig:
    """Token budgets in the prompt (L1/LCPO): one per prompt, drawn from [min_tokens, max_tokens]."""

    min_tokens: int = nonneg(0)  # smallest budget drawn for a training prompt
    max_tokens: int = nonneg(0)  # largest budget drawn (inclusive); 0: prompts carry no budget
    max_share: float = frac(0.0)  # share of prompts whose budget is a maximum (max_cue), not a target (L1-Max)
    cue: str = "Think for {n} tokens."  # real data: appended to the question; {n} is the budget
    max_cue: str = "Think for maximum {n} tokens."  # real data: the cue of a maximum budget


@dataclass
class AlgoConfig:
    name: str = "grpo"  # the method, a registry key (mrt_ray.methods.METHODS): what a step trains on
    advantage: str = "grpo"  # registry key: grpo | rloo | drgrpo
    reward: str = "outcome"  # registry key (docs/algorithms.md lists them)
    alpha: float = frac(0.0, hi_open=True)  # length-penalty strength
    overlong_cache: int = nonneg(32)  # DAPO: L_cache (penalty ramps over the last tokens before max_new_tokens)
    l1_alpha: float = nonneg(0.0003)  # L1: penalty per token of |budget - used| (exact) or of overshoot (max)
    l1_delta: float = frac(0.5)  # L1-Max: reward of a correct sample that uses exactly its maximum budget
    kimi_coef: float = nonneg(1.0)  # Kimi 1.5: weight of the length reward added to the 0/1 outcome
    sb_alpha: float = pos(2.0)  # ShorterBetter: reward of a correct sample
    sb_beta: float = nonneg(0.001)  # ShorterBetter: penalty per token of |len - shortest correct length|
    token_limit: int = nonneg(0)  # ThinkPrune: hard limit; sampling stops here and a longer sample earns 0 (0: off)
    # a reward parameter's value by step; a scheduled key's own value is not used (mrt_ray/schedule.py)
    schedule: dict[str, list[list[float]]] = field(default_factory=dict)  # key -> [[step, value], ...], ascending
    schedule_interp: str = choice("step", "step", "linear")  # step: hold each value until the next point | linear
    loss: str = "ppo_clip"  # registry key
    loss_agg: str = choice("token_mean", "token_mean", "seq_mean", "constant")  # token_mean | seq_mean | constant
    clip_eps: float = frac(0.2, hi_open=True)
    clip_eps_high: float = nonneg(0.2)
    kl_coef: float = nonneg(0.0)  # KL(pi || ref) term in the loss (kl_estimator)
    kl_estimator: str = choice("k3", "k1", "k3")  # k1 | k3
    kl_in_reward: float = nonneg(0.0)  # beta of a k1 KL penalty inside the reward, as reward-to-go (A&Z: 0.001)
    entropy_coef: float = nonneg(0.0)
    whiten: bool = False  # whiten the token advantages over all completion tokens of the batch
    drop_uniform_groups: bool = False  # DAPO dynamic sampling: drop groups whose rewards are all equal
    budget: BudgetConfig = field(default_factory=BudgetConfig)
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
    # markers: a paragraph that starts with one of `markers` opens an episode (R1-style traces); paragraph: every
    # paragraph does (models that never write "Wait", e.g. SmolLM2)
    boundary: str = choice("markers", "markers", "paragraph")  # which paragraphs open an episode
    min_gap: int = nonneg(2)  # a boundary within min_gap paragraphs of the previous one is skipped
    max_steps: int = nonneg(49)  # at most this many boundaries, so max_steps + 1 episodes (the reference's max_steps)
    group_size: int = pos(1)  # merge consecutive episodes in groups of this size
    # double_newline: split on exactly "\n\n", markers match the raw paragraph (the reference's rule);
    # blank_lines: any run of blank lines separates, markers match after leading whitespace;
    # lines: split on exactly "\n", markers match at a line start (the backtracking-search traces)
    separator: str = choice("double_newline", "double_newline", "blank_lines", "lines")  # paragraph rule


@dataclass
class ProgressConfig:
    """The Monte Carlo estimator pool for J(c_j) (MRT)."""

    num_workers: int = pos(1)
    num_cpus: float = nonneg(0.5)
    num_gpus: float = nonneg(0.0)
    samples: int = pos(8)  # K: max forced answers per prefix
    round_size: int = pos(4)  # adaptive: samples per round
    adaptive: bool = True
    half_width: float = frac(0.25, lo_open=True)  # stop when the 95% half-width falls below this
    temperature: float = nonneg(0.7)
    top_p: float = frac(1.0, lo_open=True)  # top-p of the forced answers (the MRT reference: 0.95)
    max_answer_tokens: int = pos(8)
    # cue: append the answer cue (force_text; the embedded task's own "\n</think>\n#### "); time_is_up: the MRT
    # reference's prompt ("Time is up. Given the time I've spent ...", the close tag, then answer_start)
    meta_prover: str = choice("cue", "cue", "time_is_up")  # how an answer is forced after a thinking prefix
    force_text: str = "\n</think>\n#### "  # cue: appended after a prefix to force the answer (real data)
    answer_start: str = "**Step-by-Step Explanation and Answer:**\n\n1. **"  # time_is_up: the answer's first words
    segment: SegmentConfig = field(default_factory=lambda: SegmentConfig(min_gap=0))


@dataclass
class TrainConfig:
    steps: int = pos(50)
    prompts_per_step: int = pos(16)
    save_every: int = nonneg(20)
    eval_every: int = nonneg(0)  # 0: evaluate at the start and the end only
    # async: the next step's rollout is sampled while the learner updates, one policy version behind
    async_rollout: bool = False
    is_clip: float = pos(2.0)  # async: truncated importance ratio


@dataclass
class EndpointConfig:
    """Served models (`mrt-ray eval model=LABEL:openai:http://HOST:PORT/v1`): the client of their completions API."""

    tokenizer: str = ""  # the served model's tokenizer directory; empty: the server's /tokenize and /detokenize
    model: str = ""  # served model name sent with each request; empty: the first one the server lists
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the API key (sent as a Bearer token)
    max_concurrency: int = pos(16)  # requests in flight per served model
    timeout_s: float = pos(600.0)  # seconds for one request (a whole completion: it is not streamed)
    max_retries: int = nonneg(5)  # retries of a request after HTTP 429/5xx, a timeout or a lost connection
    backoff_s: float = pos(1.0)  # wait before the first retry, doubled at each next one (or the server's Retry-After)


@dataclass
class EvalConfig:
    size: int = pos(200)  # held-out prompts
    n_samples: int = pos(4)
    temperature: float = nonneg(1.0)
    top_p: float = frac(1.0, lo_open=True)  # top-p of the sampled eval traces
    greedy: bool = True  # also report greedy accuracy
    budgets: list[int] = pos([16, 32, 64, 96, 128, 192])
    continue_marker: str = "\n\nWait"
    episode_curve: bool = True
    target_accuracy: float = frac(0.0)  # token efficiency: tokens to reach this accuracy (0: skip)
    # extrapolation (the MRT reference's protocol): forcing steps past the natural end, each "\n" + the next cue
    extrapolation_steps: int = nonneg(0)  # forcing steps W (0: skip the stage)
    extrapolation_cues: list[str] = field(
        default_factory=lambda: ["Wait", "But wait", "Alternatively", "But hold on"])  # cycled, one per step
    extrapolation_step_tokens: int = pos(32)  # token cap of one forcing step (the reference: 2048)
    extrapolation_every: int = pos(2)  # sample free continuations after every this many steps (and before any)
    extrapolation_samples: int = pos(4)  # free continuations per trace at each of those points (the reference: 8)
    extrapolation_traces: int = pos(100)  # the stage runs on the first this many sampled traces
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    targets: list[int] = pos([])  # budget adherence: token budgets put in the prompt, one pass each (empty: skip)
    target_kind: str = choice("exact", "exact", "max")  # budget adherence: the cue of a target or of a maximum


@dataclass
class WandbConfig:
    mode: str = choice("offline", "offline", "online", "disabled", "auto")  # auto: online when WANDB_API_KEY is set
    project: str = "mrt-ray"
    entity: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    name: str = ""
    log_samples_every: int = nonneg(10)


@dataclass
class SweepConfig:
    """`mrt-ray sweep`: the length-penalty family, one model per alpha (same seed and steps)."""

    alphas: list[float] = frac([0.0, 0.05, 0.1, 0.2, 0.4], hi_open=True)  # one model per algo.alpha


def _grid_methods() -> dict[str, list[str]]:
    return {
        "grpo": ["algo=grpo"],
        "lp01": ["algo=length_penalty", "algo.alpha=0.1"],
        "lp02": ["algo=length_penalty", "algo.alpha=0.2"],
        "lp04": ["algo=length_penalty", "algo.alpha=0.4"],
        "mrt": ["algo=mrt"],
        "mrt_tb": ["algo=mrt", "algo.mrt.variant=termination_baseline"],
        "star": ["algo=star"],
        "l1_exact": ["algo=l1_exact"],
        "l1_max": ["algo=l1_max"],
        "kimi": ["algo=kimi_length"],
        "sb": ["algo=shorter_better"],
        # ThinkPrune's three limits within a 50-step grid run (the preset tightens at steps 40 and 80)
        "thinkprune": ["algo=thinkprune", "algo.schedule.token_limit=[[0,128],[17,96],[34,64]]"],
    }


@dataclass
class GridConfig:
    """`mrt-ray grid`: every method x every seed is one training run (the command's own overrides, then the method's,
    then seed=<s>), evaluated as soon as it is trained beside its seed's base policy (same eval problems and sampling
    seeds); the seed statistics (mean +- 95% CI, paired differences against the baseline on the same seeds) are
    rewritten after every member."""

    seeds: list[int] = nonneg([0, 1, 2])  # run seeds (each also bootstraps its own embedded base policy)
    methods: dict[str, list[str]] = field(default_factory=_grid_methods)  # label -> that method's config overrides
    select: list[str] = field(default_factory=list)  # train only these method labels (empty: all)
    baseline: str = "grpo"  # the method every other one is compared with, seed by seed
    evaluate: bool = True  # evaluate each member and aggregate (false: train only)


@dataclass
class RayConfig:
    address: str = ""  # empty: RAY_ADDRESS, else a local cluster on 127.0.0.1
    num_cpus: int = nonneg(0)  # local cluster only; 0: all cores
    dashboard_port: int = num(8265, 0, 65535)
    placement_timeout_s: float = pos(300.0)
    role_label: str = ""  # node-label key whose value names a node's role (KubeRay group labels); empty: any node


@dataclass
class Config:
    seed: int = nonneg(0)
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
    grid: GridConfig = field(default_factory=GridConfig)
    ray: RayConfig = field(default_factory=RayConfig)
