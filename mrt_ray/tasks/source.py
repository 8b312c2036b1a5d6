"""Step 1 of the data path: prompts. A `PromptSource` gives the prompts of training step k as a pure function of
(seed, k), so a resumed run sees exactly the prompts an uninterrupted run would (the data position is the step).
With `algo.budget` on, every prompt also carries a token budget drawn for (seed, stream, index) (L1/LCPO).
Tasks: the embedded chain arithmetic, reasoning-gym generators (`tasks.gym`) and real data files (`tasks.data`)."""
from __future__ import annotations

import dataclasses
import random

from mrt_ray.config import Config
from mrt_ray.tasks import Problem
from mrt_ray.tasks.budget import Budget, cue_text, draw_budget
from mrt_ray.tasks.embedded import ANSWER_MARK, BUDGET_CUE, BUDGET_MAX_CUE, FORCE_TEXT, cued_prompt, task_problem

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
        limit = (cfg.model.max_model_len - cfg.rollout.max_new_tokens - self._cue_tokens()
                 if tokenizer is not None else None)
        if tc.name == "embedded":
            self.train: list[Problem] | None = None
            eval_set = [task_problem(tc, cfg.seed, "eval", i) for i in range(cfg.eval.size)]
        elif tc.name == "reasoning_gym":
            from mrt_ray.tasks.gym import GymTask

            self.gym = GymTask(tc, cfg.seed, tokenizer, limit)
            self.train = None
            eval_set = [self.gym.problem("eval", i) for i in range(cfg.eval.size)]
        else:
            from mrt_ray.tasks.data import DataError, load_problems

            res = load_problems(tc, tc.path, tokenizer, limit)
            self.skipped = dict(res.skipped)
            problems = res.problems
            if tc.eval_path:
                self.train = problems
                eval_set = load_problems(tc, tc.eval_path, tokenizer, limit).problems[: cfg.eval.size]
            else:
                if len(problems) <= cfg.eval.size:
                    raise DataError(f"{tc.path}: {len(problems)} usable rows, but eval.size={cfg.eval.size} are held "
                                    f"out; lower eval.size or give task.eval_path")
                self.train, eval_set = problems[: -cfg.eval.size], problems[-cfg.eval.size:]
        self.eval_plain = eval_set  # without budget cues (`mrt-ray eval` puts its own targets in)
        self.eval = [self.cued(p, draw_budget(cfg.algo.budget, cfg.seed, "eval", i)) for i, p in enumerate(eval_set)]

    @property
    def force_text(self) -> str:
        """Appended after a thinking prefix to force the final answer (the meta-prover, `progress.meta_prover`)."""
        return meta_prover_text(self.cfg)

    def batch(self, step: int) -> list[Problem]:
        k = self.cfg.train.prompts_per_step
        tc = self.cfg.task
        if self.gym is not None:
            out = [self.gym.problem("train", step * k + i) for i in range(k)]
        elif self.train is None:
            out = [task_problem(tc, self.cfg.seed, "train", step * k + i) for i in range(k)]
        else:
            out = []
            for i in range(step * k, (step + 1) * k):
                epoch, pos = divmod(i, len(self.train))
                out.append(self.train[self._order(epoch)[pos]])
        return [self.cued(p, draw_budget(self.cfg.algo.budget, self.cfg.seed, "train", step * k + i))
                for i, p in enumerate(out)]

    def cued(self, p: Problem, budget: Budget | None) -> Problem:
        """`p` asking for `budget` in its prompt (meta["budget"] records it); `p` itself when budget is None. The cue
        goes before the embedded task's thinking tag, or after a real question (before its template is applied)."""
        if budget is None:
            return p
        if p.meta.get("budget") is not None:
            raise ValueError(f"problem {p.id} already carries a budget ({p.meta['budget']}); cue its plain version")
        if self.cfg.task.name == "embedded":
            prompt = cued_prompt(p.prompt, cue_text(budget, BUDGET_CUE, BUDGET_MAX_CUE))
        else:
            from mrt_ray.tasks.data import render_prompt

            bc = self.cfg.algo.budget
            prompt = render_prompt(self.cfg.task, f"{p.meta['question']} {cue_text(budget, bc.cue, bc.max_cue)}",
                                   self.tok)
        return dataclasses.replace(p, prompt=prompt, meta={**p.meta, "budget": budget})

    def _cue_tokens(self) -> int:
        """Most prompt tokens a budget cue adds to a real question, plus one for a merge at the seam (0 without
        budgets or a tokenizer)."""
        top = max([self.cfg.algo.budget.max_tokens, *self.cfg.eval.targets])
        if not top or self.tok is None:
            return 0
        bc = self.cfg.algo.budget
        return 1 + max(len(self.encode(f" {cue_text(Budget(top, k), bc.cue, bc.max_cue)}")) for k in ("exact", "max"))

    def _order(self, epoch: int) -> list[int]:
        """Epoch e visits the rows in a seeded permutation (cached for the current epoch)."""
        if getattr(self, "_epoch", None) != epoch:
            self._epoch, self._perm = epoch, list(range(len(self.train)))
            random.Random(f"{self.cfg.seed}/epoch/{epoch}").shuffle(self._perm)
        return self._perm

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]
