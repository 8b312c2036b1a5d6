"""Real math data: load problems from JSONL, JSON, Parquet or a saved HF dataset into `Problem`s.

Formats by path: `*.jsonl` (one JSON object per line; blank lines are not rows), `*.json` (a list of objects),
`*.parquet`, or a directory written by `datasets.Dataset.save_to_disk` (a `DatasetDict` contributes `cfg.split`).
Rows are numbered from 1 (JSONL: the line number) and a problem's id is "<file stem>-<row>".

A malformed row raises `DataError` naming the file, the row and the reason; with `cfg.on_bad_row == "skip"` it is
skipped and counted by reason in `LoadResult.skipped` (the first message per reason is kept in
`LoadResult.skipped_examples`). Problems that concern the whole file (missing, unreadable, zero usable rows) always
raise.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrt_ray.config import TaskConfig
from mrt_ray.tasks import Problem

BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
FORMATS = ".jsonl, .json, .parquet or a directory saved by datasets' save_to_disk"


class DataError(ValueError):
    """Bad input data; the message names the file, the row and the reason."""


@dataclass
class LoadResult:
    problems: list[Problem]
    skipped: dict[str, int]  # reason -> rows skipped (on_bad_row=skip)
    source: str  # the path read, with the split for a DatasetDict
    skipped_examples: dict[str, str] = field(default_factory=dict)  # reason -> first message


class _RowError(Exception):
    """One bad row: `reason` is the skip-count key, `detail` the human message."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- readers: (row number, object | _RowError)

Rows = Iterator[tuple[int, Any]]


def _jsonl_rows(path: Path) -> Rows:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                detail = f"not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})"
                yield lineno, _RowError("not_utf8", detail)
                continue
            if not text.strip():
                continue
            try:
                yield lineno, json.loads(text)
            except json.JSONDecodeError as e:
                yield lineno, _RowError("invalid_json", f"invalid JSON: {e.msg} at column {e.colno}")


def _json_rows(path: Path) -> Rows:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: not valid UTF-8 at line {line} (byte {data[e.start]:#04x})") from None
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(items, list):
        raise DataError(f"{path}: a .json data file must hold a list of objects, got {type(items).__name__}")
    yield from enumerate(items, 1)


def _parquet_rows(path: Path) -> Rows:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for corrupt or foreign files
        raise DataError(f"{path}: not a readable Parquet file: {e}") from None
    row = 0
    for batch in pf.iter_batches(batch_size=1024):
        for obj in batch.to_pylist():
            row += 1
            yield row, obj


def _hf_rows(path: Path, split: str) -> tuple[Rows, str]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except FileNotFoundError as e:
        raise DataError(f"{path}: a directory, but not one saved by datasets' save_to_disk ({e})") from None
    source = str(path)
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: no split '{split}' (task.split); the dataset has splits {sorted(ds)}")
        ds, source = ds[split], f"{path}[{split}]"
    return enumerate(iter(ds), 1), source


def _open(path: Path, split: str) -> tuple[Rows, str, str]:
    """(rows, source, unit word for messages)."""
    if path.is_dir():
        rows, source = _hf_rows(path, split)
        return rows, source, "row"
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_rows(path), str(path), "line"
    if suffix == ".json":
        return _json_rows(path), str(path), "item"
    if suffix == ".parquet":
        return _parquet_rows(path), str(path), "row"
    raise DataError(f"{path}: unsupported data format '{suffix}'; use {FORMATS}")


# --------------------------------------------------------------------------- fields


def _get(obj: dict, key: str, what: str) -> Any:
    """obj[key], or a dotted path ("meta.answer") when `key` itself is not a key of obj."""
    if key in obj:
        return obj[key]
    node: Any = obj
    where = "row"
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            has = f"keys: {sorted(node)}" if isinstance(node, dict) else f"is a {type(node).__name__}"
            raise _RowError(f"missing_{what}_key", f"missing {what} key '{key}' ({where} {has})")
        node, where = node[part], f"'{part}'"
    return node


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces matched; None when there is none."""
    matches = list(BOXED.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    raise _RowError("unbalanced_boxed", "answer has an unbalanced \\boxed{")


def normalize_answer(value: Any) -> str:
    """Gold answer as a string: after the last "####" (GSM8K), else the last \\boxed{} content (MATH), else
    the stripped string; numbers become strings (42.0 -> "42")."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _RowError("bad_answer_type", f"answer must be a string or a number, got {type(value).__name__}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _RowError("bad_answer_type", f"answer is {value}")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    if "####" in value:
        answer = value.rsplit("####", 1)[1].strip()
    else:
        boxed = _last_boxed(value)
        answer = (boxed if boxed is not None else value).strip()
    if not answer:
        raise _RowError("empty_answer", f"empty answer (raw: {value[:80]!r})")
    return answer


def render_prompt(cfg: TaskConfig, question: str, tokenizer: Any) -> str:
    """The text the policy continues: `task.template` with the question, or the tokenizer's chat template with
    `task.system_prompt` and the question as the user message (`task.chat_template=true`)."""
    if not cfg.chat_template:
        return cfg.template.replace("{question}", question)
    messages = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    messages.append({"role": "user", "content": question})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def check_prompt_settings(cfg: TaskConfig, tokenizer: Any) -> None:
    """The prompt keys (`render_prompt`) agree with each other and with the tokenizer; DataError otherwise."""
    if cfg.on_bad_row not in ("error", "skip"):
        raise DataError(f"task.on_bad_row={cfg.on_bad_row!r} is not one of ['error', 'skip']")
    if cfg.chat_template:
        if tokenizer is None:
            raise DataError("task.chat_template=true needs the model's tokenizer")
        if not getattr(tokenizer, "chat_template", None):
            raise DataError("task.chat_template=true but the tokenizer has no chat template; set it to false")
    else:
        if "{question}" not in cfg.template:
            raise DataError(f"task.template={cfg.template!r} has no {{question}} placeholder")
        if cfg.system_prompt:
            raise DataError("task.system_prompt is only used with task.chat_template=true; "
                            "put the text in task.template instead")


def _make_problem(obj: Any, row: int, stem: str, cfg: TaskConfig, tokenizer: Any,
                  max_prompt_tokens: int | None) -> Problem:
    if not isinstance(obj, dict):
        raise _RowError("not_an_object", f"row is not a JSON object (got {type(obj).__name__})")
    question = _get(obj, cfg.question_key, "question")
    if not isinstance(question, str):
        raise _RowError("bad_question_type", f"question '{cfg.question_key}' must be a string, "
                                             f"got {type(question).__name__}")
    question = question.strip()
    if not question:
        raise _RowError("empty_question", f"empty question '{cfg.question_key}'")
    answer = normalize_answer(_get(obj, cfg.answer_key, "answer"))
    prompt = render_prompt(cfg, question, tokenizer)
    meta: dict[str, Any] = {"row": row, "question": question}
    if cfg.difficulty_key:
        level = _get(obj, cfg.difficulty_key, "difficulty")
        if isinstance(level, bool) or not isinstance(level, (str, int, float)):
            raise _RowError("bad_difficulty_type", f"difficulty '{cfg.difficulty_key}' must be a string or a number, "
                                                   f"got {type(level).__name__}")
        meta["difficulty"] = level
    if tokenizer is not None and max_prompt_tokens is not None:
        # a chat template writes its own special tokens; a plain prompt gets the tokenizer's (as generation would)
        n = len(tokenizer.encode(prompt, add_special_tokens=not cfg.chat_template))
        if n > max_prompt_tokens:
            raise _RowError("prompt_too_long", f"prompt has {n} tokens > max_prompt_tokens={max_prompt_tokens}")
        meta["prompt_tokens"] = n
    return Problem(id=f"{stem}-{row}", prompt=prompt, answer=answer, meta=meta)


def load_problems(cfg: TaskConfig, path: str | None = None, tokenizer: Any = None,
                  max_prompt_tokens: int | None = None) -> LoadResult:
    """Problems of `path` (default `cfg.path`) in file order; raises DataError on bad input (see module doc)."""
    path_str = path if path is not None else cfg.path
    if not path_str:
        raise DataError("no data path: set task.path (a JSONL/JSON/Parquet file or a saved HF dataset directory)")
    check_prompt_settings(cfg, tokenizer)
    p = Path(path_str)
    rows, source, unit = _open(p, cfg.split)
    problems: list[Problem] = []
    skipped: dict[str, int] = {}
    examples: dict[str, str] = {}
    for row, obj in rows:
        try:
            if isinstance(obj, _RowError):
                raise obj
            problems.append(_make_problem(obj, row, p.stem, cfg, tokenizer, max_prompt_tokens))
        except _RowError as e:
            message = f"{source} {unit} {row}: {e.detail}"
            if cfg.on_bad_row == "error":
                raise DataError(f"{message}; set task.on_bad_row=skip to skip bad rows") from None
            skipped[e.reason] = skipped.get(e.reason, 0) + 1
            examples.setdefault(e.reason, message)
    if not problems:
        why = f"; skipped {skipped}, e.g. {next(iter(examples.values()))}" if skipped else ""
        raise DataError(f"{source}: no usable rows{why}")
    return LoadResult(problems=problems, skipped=skipped, source=source, skipped_examples=examples)


def champ_to_jsonl(out_path: str | Path) -> int:
    """Write the `champ-dataset` package's 270 competition problems as JSONL rows {"id", "question", "answer",
    "category"} (its "@@" math markers removed); returns the number of rows written."""
    try:
        import champ_dataset
    except ImportError:
        raise DataError("champ_to_jsonl needs the champ-dataset package (pip install champ-dataset==1.0.0)") from None
    problems = champ_dataset.load("v0").problems
    with Path(out_path).open("w", encoding="utf-8") as f:
        for pid, prob in problems.items():
            row = {"id": pid, "question": prob.text, "answer": prob.answer, "category": prob.category}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(problems)
