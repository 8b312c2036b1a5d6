"""Pure planning for `mrt-ray eval` (no Ray, no model): the command's own arguments, the natural thinking length of
a trace, the thinking kept at each budget (budget forcing), and the per-boundary aggregation of J.

Command arguments (`parse_eval_args`):
  model=PATH        evaluate the HF causal-LM directory PATH, labelled PATH; a training run directory (one with
                    checkpoints/latest) stands for its latest checkpoint's hf/ policy;
  model=LABEL:PATH  the same, labelled LABEL (LABEL: letters, digits, `_ . + -`); repeat model= for several models;
  model=LABEL:openai:URL
                    the model served behind the OpenAI-compatible completions API at URL, its /v1 base (e.g.
                    http://127.0.0.1:8000/v1; vLLM's OpenAI server), sampled over HTTP (`eval.endpoint.*`);
  model=PRESET      a model preset of conf/model (e.g. smollm2; a path of that name wins): its keys are applied and
                    its base model is evaluated, labelled PRESET (training runs of that model: model=LABEL:RUN_DIR);
  data=embedded     the embedded chain-arithmetic task (task.name=embedded task.grader=exact);
  data=FILE         FILE's held-out rows, the same ones training holds out: its last eval.size usable rows
                    (task.name=file task.path=FILE task.grader=math; later key=value overrides win, e.g.
                    task.question_key=problem; task.eval_path=FILE2 evaluates FILE2's first eval.size rows instead).
Every other argument is a normal config override (`key=value` or `group=preset`; the `model` group's presets are
the model=PRESET form above).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mrt_ray.config import ConfigError, group_presets
from mrt_ray.episodes import thinking_region, token_boundaries
from mrt_ray.eval.forcing import BudgetPlan
from mrt_ray.progress.estimate import mean_progress_by_episode

_LABELLED = re.compile(r"^([A-Za-z0-9_.+-]+):(.+)$")
ENDPOINT = "openai:"  # a model= path with this prefix names a served model by its base URL


@dataclass(frozen=True)
class EvalArgs:
    models: tuple[tuple[str, str], ...]  # (label, path; "": the configured base model); empty: the base model only
    data: str  # "" (as configured), "embedded" or a file/directory path
    overrides: tuple[str, ...]  # config overrides: data's own first, then the user's in order


def parse_eval_args(args: Sequence[str]) -> EvalArgs:
    """Split `model=` and `data=` (eval's own arguments, see the module docstring) from the config overrides."""
    models: list[tuple[str, str]] = []
    data, rest = "", []
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "model":
            if not value:
                raise ConfigError(f"'{arg}': give model=PATH or model=LABEL:PATH")
            m = _LABELLED.match(value)
            label, path = (m.group(1), m.group(2)) if m else (value.rstrip("/") or value, value)
            if not m and value in group_presets("model") and not Path(value).exists():
                rest.append(arg)  # the preset's keys, applied like any group=preset override
                path = ""
            elif value.startswith(ENDPOINT):  # unlabelled served model: labelled by its URL
                label, path = value[len(ENDPOINT):], value
            elif re.match(r"^(\w+:)?https?://", value):
                raise ConfigError(f"'{arg}': a served model is model=LABEL:{ENDPOINT}URL (e.g. "
                                  f"model=mine:{ENDPOINT}http://127.0.0.1:8000/v1)")
            if path:
                endpoint_url(path, arg)
            if label in dict(models):
                raise ConfigError(f"'{arg}': the label {label!r} is already used by another model=; "
                                  f"name them apart with model=LABEL:PATH")
            models.append((label, path))
        elif key == "data":
            if data:
                raise ConfigError(f"'{arg}': data= given twice (data={data}); one dataset per eval call")
            if not value:
                raise ConfigError(f"'{arg}': give data=embedded or data=FILE")
            data = value
        else:
            rest.append(arg)
    if data == "embedded":
        own = ["task.name=embedded", "task.grader=exact"]
    elif data:
        if not Path(data).exists():
            raise ConfigError(f"data={data}: no such file or directory")
        own = ["task.name=file", f"task.path={data}", "task.grader=math"]
    else:
        own = []
    return EvalArgs(tuple(models), data, tuple(own + rest))


def endpoint_url(path: str, arg: str = "") -> str | None:
    """The base URL of a served model's path (`openai:URL`), None for a model directory. A URL that is not
    http(s)://HOST[:PORT][/PATH], or that carries credentials, is a ConfigError naming `arg`."""
    if not path.startswith(ENDPOINT):
        return None
    url = path[len(ENDPOINT):].rstrip("/")
    where = arg or path
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"'{where}': {ENDPOINT} needs the server's base URL, e.g. "
                          f"model=LABEL:{ENDPOINT}http://127.0.0.1:8000/v1")
    if parts.username or parts.password or parts.query:
        raise ConfigError(f"'{where}': no credentials or query in the URL; the API key is read from the environment "
                          f"variable eval.endpoint.api_key_env names (OPENAI_API_KEY by default)")
    return url


def natural_thinking(ids: Sequence[int], decode: Callable[[Sequence[int]], str], think_open: str,
                     think_close: str) -> int:
    """Tokens of the completion `ids` up to its last thinking character: before the close tag, trailing whitespace
    dropped (so a forced answer or a continuation marker attaches as in training); the whole completion, bar trailing
    whitespace, when the thinking never closes (a truncated trace). Found on the decoded text, so it holds for any
    tokenizer (a close tag merged with its neighbours into other tokens included)."""
    text = decode(ids)
    _, end = thinking_region(text, think_open, think_close)
    return token_boundaries(ids, [len(text[:end].rstrip())], decode)[0]


def budget_thinking(ids: Sequence[int], plan: BudgetPlan, marker_ids: Sequence[int],
                    extension: Sequence[int] = (), extension_natural: int = 0) -> list[list[int]]:
    """The thinking token ids kept at each budget of `plan` (same order), before the forcing text.

    cut: the first `keep` natural thinking tokens of `ids`. extend: the whole natural thinking, the continuation
    marker, then the first min(new_tokens, extension_natural) tokens of `extension` (the model's continuation after
    the marker, whose own natural thinking has `extension_natural` tokens: it may close its thinking early).
    """
    if plan.extensions and extension_natural > len(extension):
        raise ValueError(f"budget_thinking: extension_natural = {extension_natural} exceeds the extension's "
                         f"{len(extension)} tokens")
    out = []
    for s in plan.steps:
        if s.kind == "cut":
            out.append(list(ids[:s.keep]))
        else:
            out.append([*ids[:plan.natural_length], *marker_ids, *extension[:min(s.new_tokens, extension_natural)]])
    return out


def equal_token_pairs(budgets: Sequence[int], n_samples: int) -> list[tuple[int, int]]:
    """(short, long) budget pairs for a majority vote over short traces at the cost of one long one: long is the
    largest budget, short every smaller budget whose vote size m = long // short is in [2, n_samples]."""
    if not budgets:
        return []
    long = max(budgets)
    return [(b, long) for b in sorted(set(budgets)) if b < long and 2 <= long // b <= n_samples]


def episode_curve(j_lists: Sequence[Sequence[float]], cut_lists: Sequence[Sequence[int]]) -> list[dict]:
    """J and thinking tokens at each episode boundary, averaged over the traces that reach it.

    j_lists[t] = [J(c_-1), J(c_0), ..., J(c_k)] of trace t; cut_lists[t] = [0, cut_0, ..., cut_k] (thinking tokens
    before each forced answer). Row i is boundary i - 1 (episode -1: no thinking at all).
    """
    if len(j_lists) != len(cut_lists):
        raise ValueError(f"episode_curve: {len(j_lists)} J lists but {len(cut_lists)} cut lists")
    for t, (j, c) in enumerate(zip(j_lists, cut_lists)):
        if len(j) != len(c):
            raise ValueError(f"episode_curve: trace {t} has {len(j)} J values but {len(c)} cuts")
    js = mean_progress_by_episode([list(j) for j in j_lists])  # mean by index (the values need not be progress)
    tokens = mean_progress_by_episode([[float(x) for x in c] for c in cut_lists])
    counts = [sum(len(j) > i for j in j_lists) for i in range(len(js))]
    return [{"episode": i - 1, "j": js[i], "thinking_tokens_mean": tokens[i], "traces": counts[i]}
            for i in range(len(js))]
