"""Procedural tasks from the `reasoning-gym` package (`task.name=reasoning_gym task.dataset=NAME`): offline
generators (chain_sum, basic_arithmetic, gsm_symbolic, ...) configured by their own keys (`task.dataset_config`).

Problem `index` of a split ("train" or "eval") is item `index` of the generator seeded with `split_seed(seed,
split)`: a pure function of (seed, split, index), so a resumed run sees exactly the problems an uninterrupted run
would. The two splits' generator seeds lie EVAL_OFFSET apart; the arithmetic generators draw item i from
Random(generator seed + i), so train and eval never share a draw (a question can still recur when the problem space
is small). The prompt is the question rendered like real data (`task.chat_template`, `task.system_prompt`); the gold
answer is the generator's; `task.difficulty_key` names the item's metadata field recorded as `meta["difficulty"]`
(e.g. chain_sum's `num_terms`) for the per-difficulty evaluation.

Grading (`task.grader`): `math` (math-verify on the extracted answer) suits the generators whose answers are
numbers; `reasoning_gym` applies the generator's own scorer to the extracted answer (full credit counts as right),
for the generators whose scorer needs nothing but the gold answer (`check_scorer` rejects the others, such as
countdown, whose scorer reads the problem's numbers).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
from typing import Any

from mrt_ray.config import TaskConfig
from mrt_ray.tasks import Problem
from mrt_ray.tasks.data import DataError, check_prompt_settings, render_prompt

EVAL_OFFSET = 2**30  # eval generator seed = train generator seed + EVAL_OFFSET (both < 2**31: numpy-safe)
VIRTUAL_SIZE = 10**9  # the generators' virtual length; items are generated on demand
SPLITS = ("train", "eval")


def import_gym():
    try:
        import reasoning_gym
    except ImportError:
        raise DataError("task.name=reasoning_gym needs the reasoning-gym package: pip install 'mrt-ray[gym]'") from None
    return reasoning_gym


def split_seed(seed: int, split: str) -> int:
    """The generator seed of `split` for run seed `seed`."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {list(SPLITS)}")
    base = int.from_bytes(hashlib.sha256(f"reasoning_gym/{seed}".encode()).digest()[:4], "little") % EVAL_OFFSET
    return base + (EVAL_OFFSET if split == "eval" else 0)


def make_generator(tc: TaskConfig, seed: int, split: str):
    """The reasoning-gym dataset object of `split`; a bad name or config key is a DataError naming it."""
    rg = import_gym()
    names = sorted(rg.factory.DATASETS)
    if tc.dataset not in names:
        near = difflib.get_close_matches(tc.dataset, names, n=3, cutoff=0.4) or names[:8]
        raise DataError(f"task.dataset={tc.dataset!r} is not a reasoning-gym dataset; nearest: {', '.join(near)} "
                        f"({len(names)} in all: python -c 'import reasoning_gym; print(sorted("
                        f"reasoning_gym.factory.DATASETS))')")
    config_cls = rg.factory.DATASETS[tc.dataset][1]
    keys = sorted(f.name for f in dataclasses.fields(config_cls) if f.name not in ("seed", "size"))
    bad = sorted(set(tc.dataset_config) - set(keys))
    if bad:
        raise DataError(f"task.dataset_config.{bad[0]}: {tc.dataset} has no such key ('seed' and 'size' are set by "
                        f"mrt-ray); its keys: {', '.join(keys)}")
    try:
        return rg.create_dataset(tc.dataset, seed=split_seed(seed, split), size=VIRTUAL_SIZE, **tc.dataset_config)
    except (AssertionError, ValueError, TypeError) as e:  # the generators validate with assert
        raise DataError(f"task.dataset_config for {tc.dataset} is invalid: {e or type(e).__name__} "
                        f"(given {dict(tc.dataset_config)})") from None


def _difficulty(tc: TaskConfig, item: dict) -> Any:
    node: Any = item["metadata"]
    for part in tc.difficulty_key.split("."):
        if not isinstance(node, dict) or part not in node:
            keys = sorted(k for k in item["metadata"] if k != "difficulty")
            raise DataError(f"task.difficulty_key={tc.difficulty_key!r}: {tc.dataset} problems have no such metadata "
                            f"field; theirs: {', '.join(keys)}")
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, (str, int, float)):
        raise DataError(f"task.difficulty_key={tc.difficulty_key!r} is a {type(node).__name__} in {tc.dataset} "
                        f"problems; a number or a label is needed")
    return node


class GymTask:
    """The problems of one run: `problem(split, index)`, rendered with `tokenizer` (needed for chat templates and
    the prompt-length check against `max_prompt_tokens`)."""

    def __init__(self, tc: TaskConfig, seed: int, tokenizer: Any = None, max_prompt_tokens: int | None = None):
        check_prompt_settings(tc, tokenizer)
        if not tc.dataset:
            raise DataError("task.name=reasoning_gym needs task.dataset (a reasoning-gym generator, e.g. chain_sum)")
        self.tc, self.tok, self.max_prompt_tokens = tc, tokenizer, max_prompt_tokens
        self.generators = {split: make_generator(tc, seed, split) for split in SPLITS}
        if tc.grader == "reasoning_gym":
            check_scorer(tc.dataset, self.generators["eval"][0])

    def problem(self, split: str, index: int) -> Problem:
        item = self.generators[split][index]
        pid = f"{self.tc.dataset}-{split}-{index}"
        prompt = render_prompt(self.tc, item["question"], self.tok)
        meta: dict[str, Any] = {"index": index, "question": item["question"]}  # the question: budget cues re-render
        if self.tc.difficulty_key:
            meta["difficulty"] = _difficulty(self.tc, item)
        if self.tok is not None and self.max_prompt_tokens is not None:
            n = len(self.tok.encode(prompt, add_special_tokens=not self.tc.chat_template))
            if n > self.max_prompt_tokens:
                raise DataError(f"{pid}: the prompt has {n} tokens > model.max_model_len - rollout.max_new_tokens = "
                                f"{self.max_prompt_tokens}; raise model.max_model_len or make the problems smaller")
            meta["prompt_tokens"] = n
        return Problem(id=pid, prompt=prompt, answer=str(item["answer"]), meta=meta)


def check_scorer(dataset: str, item: dict) -> None:
    """The dataset's scorer grades from the gold answer alone (what `task.grader=reasoning_gym` gives it): its own
    answer scores 1 against {"answer": gold}; otherwise a DataError."""
    scorer = _scorer(dataset)
    try:
        ok = scorer(str(item["answer"]), {"answer": str(item["answer"])}) == 1.0
    except Exception:  # noqa: BLE001 - e.g. KeyError: the scorer reads the problem's metadata
        ok = False
    if not ok:
        raise DataError(f"task.grader=reasoning_gym: the {dataset} scorer needs more of the problem than its gold "
                        f"answer, which is all mrt-ray passes it; use task.grader=math when the answers are numbers, "
                        f"or another dataset")


@functools.cache
def _scorer(dataset: str):
    return import_gym().get_score_answer_fn(dataset)  # builds a default generator: once per process


def score(dataset: str, gold: str, pred: str) -> bool:
    """The dataset's own verdict on an extracted answer: full credit (1.0) is right."""
    return _scorer(dataset)(pred, {"answer": gold}) == 1.0
