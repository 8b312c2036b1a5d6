"""Step 1 of the data path: prompts. A `PromptSource` gives the prompts of training step k as a pure function of
(seed, k), so a resumed run sees exactly the prompts an uninterrupted run would (the data position is the step).
Tasks: the embedded chain arithmetic, reasoning-gym generators (`tasks.gym`) and real data files (`tasks.data`)."""
from __future__ import annotations

import random

from mrt_ray.config import Config
from mrt_ray.tasks import Problem
from mrt_ray.tasks.embedded import ANSWER_MARK, FORCE_TEXT, task_problem

TIME_IS_UP = ("Time is up.\n\nGiven the time I've spent and the approaches I've tried, I should stop thinking and "
              "formulate a final answer based on what I already have.")


def meta_prover_text(cfg: Config) -> str:
    """The text appended after a thinking prefix to force an answer.

    cue: the answer cue (the embedded task: its own FORCE_TEXT, the text that ends every training trace; real data:
    `progress.force_text`). time_is_up: the MRT reference's meta-prover: a new paragraph "Time is up. Given the time
    I've spent ...", the close tag, a blank line and the start of an answer (`progress.answer_start`; the embedded
    task: its "#### " mark, which its grader reads)."""
    embedded = cfg.task.name == "embedded"
    if cfg.progress.meta_prover == "cue":
        return FORCE_TEXT if embedded else cfg.progress.force_text
    start = ANSWER_MARK if embedded else cfg.progress.answer_start
    return f"\n\n{TIME_IS_UP}\n{cfg.task.think_close}\n\n{start}"


class PromptSource:
    def __init__(self, cfg: Config, tokenizer=None):
        self.cfg = cfg
        self.tok = tokenizer
        tc = cfg.task
        self.skipped: dict[str, int] = {}
        self.gym = None
        limit = cfg.model.max_model_len - cfg.rollout.max_new_tokens if tokenizer is not None else None
        if tc.name == "embedded":
            self.train: list[Problem] | None = None
            self.eval = [task_problem(tc, cfg.seed, "eval", i)
                         for i in range(cfg.eval.size)]
        elif tc.name == "reasoning_gym":
            from mrt_ray.tasks.gym import GymTask

            self.gym = GymTask(tc, cfg.seed, tokenizer, limit)
            self.train = None
            self.eval = [self.gym.problem("eval", i) for i in range(cfg.eval.size)]
        else:
            from mrt_ray.tasks.data import DataError, load_problems

            res = load_problems(tc, tc.path, tokenizer, limit)
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
        """Appended after a thinking prefix to force the final answer (the meta-prover, `progress.meta_prover`)."""
        return meta_prover_text(self.cfg)

    def batch(self, step: int) -> list[Problem]:
        k = self.cfg.train.prompts_per_step
        tc = self.cfg.task
        if self.gym is not None:
            return [self.gym.problem("train", step * k + i) for i in range(k)]
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
