"""Generate docs/configuration.md from mrt_ray/config/schema.py, so the reference never drifts from the code.

Per key: the type (the dataclass annotation), the default (a fresh `Config()`, nested overrides included), and the
meaning: the field's trailing `# comment` in schema.py, else its entry in `MEANINGS` below (comment lines just above
a field are prefixed to it). Allowed values and ranges come from the fields' metadata and from the registries. The
presets table is read from conf/<group>/*.yaml. A key whose name no module reads is marked
"not read by any code yet". `tests/test_config.py` fails when the file is stale, when a key has
no meaning, and when `MEANINGS` names a key that is gone or that config.py now comments itself.

    .venv/bin/python scripts/gen_config_doc.py           # rewrite docs/configuration.md
    .venv/bin/python scripts/gen_config_doc.py --check   # exit 1 if it is out of date
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import json
import sys
import tokenize
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mrt_ray import config as C  # noqa: E402

CONFIG_PY = REPO / "mrt_ray" / "config" / "schema.py"
DOC = REPO / "docs" / "configuration.md"

# Meanings of the keys that config.py leaves uncommented (checked against the code that reads each key).
MEANINGS: dict[str, str] = {
    "seed": "run seed: prompts and the sampler seeds of rollout and MRT estimation are pure functions of (seed, "
            "step, index); it also seeds the engines, the learners' torch and the bootstrap",
    "run.name": "run name: the default run directory `runs/<name>-<timestamp>` and the W&B run name",
    "model.max_model_len": "context length (prompt + completion) of the vLLM engine and the bootstrapped model; "
                           "real-data prompts over `max_model_len - rollout.max_new_tokens` tokens are bad rows",
    "model.trust_remote_code": "let transformers and vLLM run Python code shipped with the model",
    "task.min_terms": "fewest terms in a problem",
    "task.max_terms": "most terms in a problem",
    "task.max_operand": "terms are drawn from 0..max_operand",
    "task.path": "the file or directory to read (a `.json` list of objects works too)",
    "task.split": "split to read from an HF `DatasetDict` saved with `save_to_disk`",
    "task.question_key": "row field holding the question (a dotted path such as `meta.q` reaches nested fields)",
    "task.answer_key": "row field holding the gold answer: text after the last `####`, else the last `\\boxed{}`, "
                       "else the whole string",
    "task.system_prompt": "system message, used with `chat_template=true` only (an error otherwise)",
    "task.think_open": "opening tag of the thinking region (MRT segmentation)",
    "task.think_close": "closing tag of the thinking region (MRT segmentation)",
    "bootstrap.hidden_size": "hidden size of the embedded Qwen2 base model",
    "bootstrap.num_layers": "transformer layers",
    "bootstrap.num_heads": "attention heads (also the key/value heads)",
    "bootstrap.intermediate_size": "MLP width",
    "bootstrap.steps": "SFT steps",
    "bootstrap.batch_size": "traces per SFT step",
    "bootstrap.lr": "peak AdamW learning rate (linear warm-up, then cosine decay to 0)",
    "bootstrap.warmup": "warm-up steps",
    "bootstrap.threads": "torch threads for the SFT (not part of the cache key)",
    "rollout.num_workers": "rollout workers (one inference engine each); requests are split evenly",
    "rollout.tensor_parallel_size": "vLLM tensor-parallel size per engine (GPU): its GPUs sit in the worker's one "
                                    "bundle and > 1 runs vLLM's multiprocessing executor inside the actor",
    "rollout.threads": "OMP/torch threads per rollout and estimator worker",
    "rollout.n_samples": "samples per prompt (the group of GRPO/RLOO/Dr.GRPO and of the length penalty)",
    "rollout.temperature": "sampling temperature; the learner divides its logits by it to score the same "
                           "distribution",
    "rollout.top_p": "nucleus sampling (training and sampled eval)",
    "rollout.max_new_tokens": "completion length cap; a sample cut here is truncated (counted incorrect); also "
                              "L_max of DAPO and the constant of `loss_agg=constant`",
    "rollout.gpu_memory_utilization": "vLLM's GPU memory share (GPU only)",
    "rollout.enforce_eager": "vLLM without CUDA graphs / compilation (fast start)",
    "learner.num_cpus": "Ray CPUs per rank",
    "learner.num_gpus": "Ray GPUs per rank: 0 (CPU, DS_ACCELERATOR=cpu) or 1; a share < 1 (one GPU shared with "
                        "the engines) only with learner.num_ranks=1. > 0 makes the weight push use NCCL, or gloo "
                        "when a GPU is shared",
    "learner.zero_stage": "DeepSpeed ZeRO stage",
    "learner.lr": "AdamW learning rate",
    "learner.betas": "AdamW betas",
    "learner.weight_decay": "AdamW weight decay",
    "learner.warmup_steps": "linear learning-rate warm-up over this many optimizer steps, then constant",
    "learner.ppo_epochs": "passes over each step's batch",
    "learner.collective_timeout_s": "timeout of the DeepSpeed world and the weight group; a controller call to "
                                    "the learners waits at most twice this",
    "algo.clip_eps": "PPO lower clip: ratio >= 1 - clip_eps",
    "algo.clip_eps_high": "PPO upper clip: ratio <= 1 + clip_eps_high (clip-higher when larger than clip_eps)",
    "algo.entropy_coef": "weight of the entropy bonus (subtracted from the loss)",
    "progress.segment.markers": "a paragraph starting with one of these (case-sensitive) opens a new episode",
    "progress.num_workers": "estimator workers (RolloutWorkers sampling forced answers, with the rollout.* engine "
                            "settings); methods that estimate (mrt, star) only",
    "progress.num_cpus": "Ray CPUs per estimator worker",
    "progress.num_gpus": "Ray GPUs per estimator worker: 0 (CPU), rollout.tensor_parallel_size, or a share < 1 "
                         "at TP=1",
    "progress.adaptive": "sample in rounds and stop a prefix early (all outcomes equal, or Wilson half-width "
                         "below half_width)",
    "progress.temperature": "sampling temperature of the forced answers",
    "progress.max_answer_tokens": "token cap of a forced answer",
    "train.steps": "training steps",
    "train.prompts_per_step": "prompts per step (each sampled rollout.n_samples times)",
    "train.save_every": "checkpoint every this many steps (0: only at the end); the newest two are kept",
    "train.async_rollout": "generation is synchronous in this version; true only adds the truncated importance "
                           "weight exp(logp_old - logp_rollout) (capped at is_clip) to the policy-gradient term",
    "eval.n_samples": "samples per held-out prompt for sampled pass@1",
    "eval.temperature": "sampling temperature of the sampled eval",
    "eval.budgets": "thinking-token budgets for budget forcing and regret",
    "eval.continue_marker": "text appended to think past the natural end under budget forcing",
    "eval.episode_curve": "report J by episode",
    "wandb.project": "W&B project",
    "wandb.entity": "W&B entity (empty: the account default)",
    "wandb.group": "W&B group",
    "wandb.tags": "W&B tags",
    "wandb.name": "W&B run name (empty: run.name)",
    "wandb.log_samples_every": "every this many steps, 8 sampled traces go to <run>/samples.jsonl (the report's trace "
                               "viewer) and to a W&B table whose HTML cells colour each episode by its progress "
                               "(0: never)",
    "ray.dashboard_port": "dashboard port of a local cluster (listens on 127.0.0.1 only)",
    "ray.placement_timeout_s": "how long to wait for the placement group holding every actor's resources",
}

INTRO = """\
# Configuration reference

<!-- Generated by scripts/gen_config_doc.py from mrt_ray/config/schema.py and conf/; do not edit by hand. -->

Every key lives in a typed dataclass in `mrt_ray/config/schema.py`; `conf/default.yaml` mirrors it key for key
(`tests/test_config.py` checks both, and that this file is current).

## Loading order

Later sources win:

1. `conf/default.yaml` (the dataclass defaults),
2. `--config FILE`: any subset of the same keys, merged over it,
3. group presets given as `group=name` on the command line: `algo=`, `model=`, `task=` merge
   `conf/<group>/<name>.yaml` into that section, in command-line order (a preset whose header holds Hydra's
   `# @package _global_` line merges at the root: `task=embedded_backtrack` also sets the segmentation and lengths),
4. dotlist overrides `section.key=value` (OmegaConf syntax, e.g. `learner.betas=[0.9,0.99]`), in command-line
   order. Presets are applied before every dotlist override wherever they stand on the command line, so
   `algo.alpha=0.3 algo=length_penalty` ends with alpha 0.3.

```bash
.venv/bin/mrt-ray train --dry-run --config my.yaml algo=mrt learner.lr=1e-5   # print the resolved YAML, exit 0
```

`python -m mrt_ray` is the same CLI (`train`, `bootstrap`). A run writes the resolved configuration to
`<run dir>/config.yaml`; `resume=<run dir>` reloads that file and ignores the other keys given.

## Errors

Every mistake raises `ConfigError` before Ray or any actor starts; the CLI prints one line (no traceback) and exits 2.

- unknown key (in the YAML file, a preset or an override): names the key and the nearest valid keys,
  e.g. `unknown key 'rollout.n_sample'. Nearest valid keys: rollout.n_samples, ...`;
- wrong type: names the source, the key, the value and the expected type,
  e.g. `override 'learner.lr=abc': key 'learner.lr' got value 'abc', expected type float`;
- an unknown preset lists the presets of that group; a missing or malformed YAML file names the file;
- a value outside its key's allowed set or range (the "Allowed" and "Range" of each key below; lists and dicts
  element by element), all reported together while loading (`mrt_ray/config/load.py`), e.g.
  `train.steps=-5 must be > 0`;
- impossible combinations, all reported together by `validate()` (`mrt_ray/validation.py`, run by the CLI before
  anything starts): `algo.advantage` / `algo.reward` / `algo.loss` not registered, a group advantage
  (grpo/rloo/drgrpo) with `rollout.n_samples < 2`, `task.name=file` without `task.path`, `task.min_terms >
  task.max_terms`, `algo.clip_eps_high < algo.clip_eps`, `model.max_model_len < rollout.max_new_tokens + 16`,
  async rollout with MRT, and actors asking for more CPUs than `ray.num_cpus` (when it is set; estimators count
  with `algo.name=mrt` or `star` only).
"""


def field_comments(source: str) -> dict[tuple[str, str], tuple[str, str]]:
    """{(class name, field name): (comment lines directly above the field, comment on its own line(s))} for the
    annotated fields of the classes in `source`; fields with neither are left out."""
    lines = source.splitlines()
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    out = {}
    for cls in ast.parse(source).body:
        if not isinstance(cls, ast.ClassDef):
            continue
        for stmt in cls.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            own = "; ".join(comments[n] for n in range(stmt.lineno, stmt.end_lineno + 1) if n in comments)
            above, n = [], stmt.lineno - 1
            while n in comments and lines[n - 1].lstrip().startswith("#"):
                above.insert(0, comments[n])
                n -= 1
            if own or above:
                out[(cls.name, stmt.target.id)] = (" ".join(above), own)
    return out


def walk(obj: Any, prefix: str = "") -> list[tuple[str, str, dataclasses.Field, Any]]:
    """(dotted key, owning class name, field, default value) of every leaf key, in declaration order; nested
    dataclasses are walked, not listed."""
    rows = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            rows.extend(walk(value, f"{prefix}{f.name}."))
        else:
            rows.append((f"{prefix}{f.name}", type(obj).__name__, f, value))
    return rows


def registries() -> dict[str, list[str]]:
    from mrt_ray.algos.advantages import ADVANTAGES
    from mrt_ray.algos.losses import LOSSES
    from mrt_ray.methods import METHODS, MRT_VARIANTS
    from mrt_ray.rewards import REWARDS

    return {reg.key: sorted(reg) for reg in (METHODS, MRT_VARIANTS, ADVANTAGES, REWARDS, LOSSES)}


def unread_keys() -> set[str]:
    """Keys whose field name is never read as an attribute (`cfg.x.<name>`) in mrt_ray/ outside mrt_ray/config/."""
    names = set()
    for path in (REPO / "mrt_ray").rglob("*.py"):
        if path.parent != CONFIG_PY.parent:
            names |= {n.attr for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)}
    return {key for key, _, f, _ in walk(C.Config()) if f.name not in names}


def meanings() -> dict[str, str]:
    """Meaning of every leaf key; ValueError when a key has none, or MEANINGS is stale or duplicates a comment."""
    commented = field_comments(CONFIG_PY.read_text())
    rows = walk(C.Config())
    keys = {key for key, *_ in rows}
    out, problems = {}, []
    for key, cls, f, _ in rows:
        above, own = commented.get((cls, f.name), ("", ""))
        extra = MEANINGS.get(key, "")
        if own and extra:
            problems.append(f"{key}: commented in config.py, remove it from MEANINGS")
        elif not (own or extra):
            problems.append(f"{key}: no meaning; add a trailing comment in config.py or an entry in MEANINGS")
        out[key] = f"{above}: {own or extra}" if above else own or extra
    problems += [f"{key}: in MEANINGS but not a config key" for key in sorted(set(MEANINGS) - keys)]
    if problems:
        raise ValueError("scripts/gen_config_doc.py:\n  " + "\n  ".join(problems))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _value(v: Any) -> str:
    return "`" + _cell(json.dumps(v)) + "`"


def _range(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def section_tables(means: dict[str, str]) -> str:
    allowed = registries()
    ranges = {}
    for key, _, f, _ in walk(C.Config()):
        if "choices" in f.metadata:
            allowed[key] = list(f.metadata["choices"])
        if "range" in f.metadata:
            ranges[key] = _range(*f.metadata["range"])
    docs = {node.name: ast.get_docstring(node) for node in ast.parse(CONFIG_PY.read_text()).body
            if isinstance(node, ast.ClassDef)}
    unread = unread_keys()
    out, current = [], None
    for key, cls, f, value in walk(C.Config()):
        section = key.rsplit(".", 1)[0] if "." in key else ""
        if section != current:
            current = section
            out.append(f"\n### `{section}`\n" if section else "\n### Top level\n")
            if section and docs.get(cls):
                out.append(docs[cls] + "\n")
            out.append("| key | type | default | meaning |\n| --- | --- | --- | --- |")
        meaning = means[key]
        if key in unread:
            meaning += " (not read by any code yet)"
        if key in allowed:
            meaning += ". Allowed: " + ", ".join(f"`{a}`" for a in allowed[key])
        if key in ranges:
            meaning += f". Range: {ranges[key]}"
        out.append(f"| `{key}` | `{_cell(str(f.type))}` | {_value(value)} | {_cell(meaning)} |")
    return "\n".join(out) + "\n"


def preset_header(path: Path) -> str:
    lines = [ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")]
    return " ".join(ln for ln in lines if ln != "@package _global_")


def presets_table() -> str:
    from omegaconf import OmegaConf

    out = ["\n## Presets\n", "`group=name` merges `conf/<group>/<name>.yaml` into that section (a preset headed "
           "`# @package _global_` merges at the root and names its sections).\n",
           "| preset | what it is | keys it sets |", "| --- | --- | --- |"]
    for group in C.GROUPS:
        for path in sorted((C.CONF_DIR / group).glob("*.yaml")):
            flat = OmegaConf.to_container(OmegaConf.load(path))
            where = "" if C.is_global_preset(path) else f"{group}."
            sets = [f"`{where}{k}={_cell(json.dumps(v))}`" for k, v in _flatten(flat)]
            out.append(f"| `{group}={path.stem}` | {_cell(preset_header(path))} | {' '.join(sets)} |")
    return "\n".join(out) + "\n"


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for k, v in d.items():
        rows.extend(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)])
    return rows


def render() -> str:
    notation = "\nDefaults and preset values are written in JSON notation (strings quoted, `\\n` a newline).\n"
    return INTRO + presets_table() + "\n## Keys\n" + notation + section_tables(meanings())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/configuration.md is out of date")
    text = render()
    if ap.parse_args().check:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC} is out of date: run .venv/bin/python scripts/gen_config_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
