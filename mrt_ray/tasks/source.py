"""Step 1 of the data path: prompts. A `PromptSource` gives the prompts of training step k as a pure function of
(seed, k), so a resumed run sees exactly the prompts an uninterrupted run would (the data position is the step)."""
from __future__ import annotations

import random

from mrt_ray.config import Config
from mrt_ray.tasks import Problem
from mrt_ray.tasks.embedded import FORCE_TEXT, task_problem


class PromptSource:
    def __init__(self, cfg: Config, tokenizer=None):
        self.cfg = cfg
        self.tok = tokenizer
        tc = cfg.task
        self.skipped: dict[str, int] = {}
        if tc.name == "embedded":
            self.train: list[Problem] | None = None
            self.eval = [task_problem(tc, cfg.seed, "eval", i)
                         for i in range(cfg.eval.size)]
        else:
            from mrt_ray.tasks.data import DataError, load_problems

            limit = cfg.model.max_model_len - cfg.rollout.max_new_tokens
            res = load_problems(tc, tc.path, tokenizer, limit if tokenizer is not None else None)
            self.skipped = dict(res.skipped)
            problems = res.problems
            if tc.eval_path:
                self.train = problems
                self.eval = load_problems(tc, tc.eval_path, tokenizer, limit).problems[: cfg.eval.size]
            else:
                if len(problems) <= cfg.eval.size:
                    raise DataError(f"{tc.path}: {len(problems)} usable rows, but eval.size={cfg.eval.size} are held "
                                    f"out; lower eval.size or give task.eval_path")
                self.train, self.eval = problems[: -cfg.eval.size], problems[-cfg.eval.size:]

    @property
    def force_text(self) -> str:
        """Appended after a thinking prefix to force the final answer (the meta-prover's cue)."""
        return FORCE_TEXT if self.cfg.task.name == "embedded" else self.cfg.progress.force_text

    def batch(self, step: int) -> list[Problem]:
        k = self.cfg.train.prompts_per_step
        tc = self.cfg.task
        if self.train is None:
            return [task_problem(tc, self.cfg.seed, "train", step * k + i)
                    for i in range(k)]
        out = []
        for i in range(step * k, (step + 1) * k):
            epoch, pos = divmod(i, len(self.train))
            out.append(self.train[self._order(epoch)[pos]])
        return out

    def _order(self, epoch: int) -> list[int]:
        """Epoch e visits the rows in a seeded permutation (cached for the current epoch)."""
        if getattr(self, "_epoch", None) != epoch:
            self._epoch, self._perm = epoch, list(range(len(self.train)))
            random.Random(f"{self.cfg.seed}/epoch/{epoch}").shuffle(self._perm)
        return self._perm

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]
