"""`mrt-ray eval`: how well one or more models use test-time compute, sampled on Ray rollout workers (the training
rollout actors: vLLM by default, `rollout.backend=hf` without it), or, for a served model (model=LABEL:openai:URL),
through its OpenAI-compatible completions API from this process (`rollout.openai_engine`; no Ray then): the same
plan, token-id prompts and completions, so every budget counts the served model's own tokens.

Per model, on the eval problems (`PromptSource.eval`; arguments in `mrt_ray.eval.plan`):
  1. sampled: eval.n_samples traces per problem at eval.temperature (rollout.max_new_tokens) -> pass@1 with stderr,
     maj@k (k = eval.n_samples; truncated samples cast no vote), completion tokens mean/p50/p90, truncation rate,
     accuracy per 1k tokens; greedy accuracy too when eval.greedy. With task.traces=backtrack also the
     linearised-search view of every trace (`sampled.search`, `eval/search.py`): maj over the answers of its attempts
     against its final answer, and what its backtracks did.
  2. budget forcing: for every sampled trace and every budget B in eval.budgets keep B thinking tokens (cut the
     natural thinking; past its natural end append eval.continue_marker and let the model think on, once per trace
     for its largest budget), append the forcing text and take ONE GREEDY answer (the sampled traces are the only
     randomness). Accuracy at B is pass@1 over these answers; normalised regret at every budget comes from that curve
     (J piecewise linear through (0, 0) and the (B, accuracy) points, `regret.regret_curve`); tokens to reach
     eval.target_accuracy (when > 0); majority vote over floor(max B / B) traces forced at B, at the cost of one
     trace forced at max B (`metrics.majority_at_equal_tokens`).
  3. episodes (eval.episode_curve): segment every trace into episodes and estimate J after each prefix with the MRT
     meta-prover (`progress.pool.Estimator`: up to progress.samples forced answers at progress.temperature, adaptive)
     -> J by episode index and by mean thinking tokens at each boundary.
  4. by difficulty: accuracy and tokens per difficulty bucket (the embedded task's number of terms,
     or a data row's `task.difficulty_key`), and with the episode stage the over-thinking measures (share of thinking
     after the first right episode, flip rate, progress by episode): `eval/difficulty.py`.
  5. budget adherence (eval.targets, L1/LCPO): for each target budget T the eval problems carry T in the prompt
     (`PromptSource.cued`, kind eval.target_kind), eval.n_samples samples each -> accuracy at T, mean tokens used,
     mean |used - T|, share over T (`adherence.adherence_row`); plots of used and of accuracy against T.
Writes <run.dir>/eval.json (default run.dir: runs/eval-<time>), eval_config.yaml, PNG plots (every model on each
plot) and W&B tables and images (offline unless wandb.mode says otherwise); a progress bar counts the stages.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mrt_ray import console
from mrt_ray.actors import Placement, init_ray, stop
from mrt_ray.config import Config, ConfigError, to_yaml
from mrt_ray.eval.adherence import adherence_row
from mrt_ray.eval.difficulty import TraceRecord, by_difficulty
from mrt_ray.eval.extrapolate import run_extrapolation
from mrt_ray.eval.forcing import BudgetPlan, extend_prompt, force_answer_prompt
from mrt_ray.eval.heldout import grade_groups, sample_stats
from mrt_ray.eval.metrics import (
    accuracy_per_1k_tokens,
    maj_at_k,
    majority_at_equal_tokens,
    pass_at_1,
    token_stats,
    tokens_to_reach,
)
from mrt_ray.eval.outputs import json_clean, log_tables, plot_results
from mrt_ray.eval.plan import budget_thinking, endpoint_url, episode_curve, equal_token_pairs, natural_thinking
from mrt_ray.eval.regret import regret_curve
from mrt_ray.eval.search import sampled_search_stats
from mrt_ray.models import load_tokenizer, resolve_model, resolve_model_path
from mrt_ray.progress.pool import Estimator, segment_trajectory
from mrt_ray.rewards import extract_answer, get_grader
from mrt_ray.rollout.http import EndpointError
from mrt_ray.rollout.openai_engine import EndpointPool, OpenAIEngine, RemoteTokenizer
from mrt_ray.rollout.pool import RolloutPool, request_seed, sample_groups
from mrt_ray.rollout.types import Request, SamplingSpec
from mrt_ray.rollout.worker import RolloutWorker
from mrt_ray.tasks.budget import Budget
from mrt_ray.tasks.embedded import ANSWER_MARK
from mrt_ray.tasks.source import PromptSource
from mrt_ray.tracking import Tracker
from mrt_ray.trajectory import Trajectory
from mrt_ray.utils import new_run_dir

STAGES = ("sampled", "greedy", "budget forcing", "episodes", "budget adherence")


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 0.0  # one prompt: no spread, stderr reported as 0 (as heldout does)


def _each(threads: int):
    """A list map over `threads` threads (in the caller's thread when 1)."""
    def run(fn, items) -> list:
        if threads <= 1 or len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(threads, thread_name_prefix="mrt-decode") as ex:
            return list(ex.map(fn, items))
    return run


class EvalRunner:
    """Evaluates `models` [(label, HF directory, training run directory or openai:URL)]; the embedded base model if
    empty. Served models are asked for their models list here, so a wrong URL fails before anything starts."""

    def __init__(self, cfg: Config, models: Sequence[tuple[str, str]] = ()):
        ec = cfg.eval
        if ec.size < 1 or ec.n_samples < 1 or not ec.budgets:
            raise ConfigError(f"eval needs eval.size >= 1 (got {ec.size}), eval.n_samples >= 1 (got {ec.n_samples}) "
                              f"and a non-empty eval.budgets (got {ec.budgets})")
        if not ec.continue_marker:
            raise ConfigError("eval.continue_marker is empty: budgets past a trace's end need a marker (e.g. 'Wait')")
        if ec.endpoint.tokenizer and not Path(ec.endpoint.tokenizer).is_dir():
            raise FileNotFoundError(f"eval.endpoint.tokenizer={ec.endpoint.tokenizer}: not a directory (the served "
                                    f"model's tokenizer files are expected)")
        self.endpoints: dict[str, OpenAIEngine] = {}  # label -> served model, opened before anything starts
        self.each = _each(1)
        if models:
            self.models = [(label, path if endpoint_url(path) else resolve_model_path(path, cfg.model) if path
                            else resolve_model(cfg))
                           for label, path in models]
            for label, path in self.models:  # fail before Ray starts
                if url := endpoint_url(path):
                    self.endpoints[label] = self._open(label, url, ec.endpoint)
                elif not Path(path).is_dir():
                    raise FileNotFoundError(f"model={label}: {path} is not a directory (an HF causal-LM directory or "
                                            f"a training run directory is expected)")
        else:
            self.models = [(cfg.model.path or "base", resolve_model(cfg))]
        self.dir = new_run_dir(cfg.run.dir, "eval", "eval.json", "choose another run.dir")
        cfg.run.dir = str(self.dir)
        console.attach(self.dir)  # quiet console: the libraries' output to <run>/logs/
        cfg.wandb.name = cfg.wandb.name or self.dir.name
        (self.dir / "eval_config.yaml").write_text(to_yaml(cfg))
        self.cfg = cfg
        self.grader = get_grader(cfg.task.grader, cfg.task.answer_marker, cfg.task.grader_timeout, cfg.task.dataset)
        self.stages = [s for s in STAGES if (s != "greedy" or ec.greedy) and (s != "episodes" or ec.episode_curve)
                       and (s != "budget adherence" or ec.targets)]

    def _open(self, label: str, url: str, ec) -> OpenAIEngine:
        try:
            return OpenAIEngine(url, ec)
        except EndpointError as e:
            for engine in self.endpoints.values():
                engine.close()
            raise EndpointError(f"model={label}: {e}") from None

    def vote_grader(self, voted: str, gold: str) -> bool:
        """Grades an extracted (voted) answer with the task's grader, which reads the text after '#### '."""
        return bool(self.grader(f"{ANSWER_MARK}{voted}", gold))

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        """Evaluate every model, write eval.json, plots and W&B tables; returns the headline numbers."""
        cfg, placement = self.cfg, None
        self.tracker = Tracker(cfg, self.dir, len(self.models) * len(self.stages), desc="eval", unit="stage")
        try:
            if len(self.endpoints) < len(self.models):  # served models need no Ray
                init_ray(cfg)
                self.placement = placement = Placement(cfg, with_estimators=False, roles=("rollout",))
            results = {label: self.evaluate_model(label, path) for label, path in self.models}
            figures = plot_results(results, self.dir)
            report = {"task": cfg.task.name, "data": cfg.task.eval_path or cfg.task.path or "embedded",
                      "grader": cfg.task.grader, "seed": cfg.seed, "eval": asdict(cfg.eval),
                      "models": results, "plots": {k: str(v) for k, v in figures.items()}}
            (self.dir / "eval.json").write_text(json.dumps(json_clean(report), indent=2))
            log_tables(self.tracker, results, figures, max(cfg.eval.budgets))
        finally:
            self.tracker.close()
            if placement is not None:
                placement.remove()
            for engine in self.endpoints.values():
                engine.close()
        top = max(cfg.eval.budgets)
        return {"dir": str(self.dir), "eval_json": str(self.dir / "eval.json"), "models": {
            label: {"pass@1": r["sampled"]["accuracy"], "maj@k": r["sampled"]["maj@k"],
                    "tokens_mean": r["sampled"]["tokens_mean"],
                    **({"search_maj": r["sampled"]["search"]["maj_accuracy"]} if "search" in r["sampled"] else {}),
                    f"regret@{top}": next(b["regret"] for b in r["budget_forcing"] if b["budget"] == top)}
            for label, r in results.items()}}

    def _stage(self, label: str, stage: str) -> None:
        self.tracker.bar.set_postfix_str(f"{label}: {stage}")

    def evaluate_model(self, label: str, path: str) -> dict:
        cfg, t0 = self.cfg, time.perf_counter()
        engine = self.endpoints.get(label)
        if engine is None:
            tok, max_len = load_tokenizer(path, cfg.model), cfg.model.max_model_len
        else:  # the served model's tokenizer (a local copy, else the server's) and context length
            ep = cfg.eval.endpoint
            tok = load_tokenizer(ep.tokenizer, cfg.model) if ep.tokenizer else RemoteTokenizer(engine)
            max_len = engine.max_model_len or cfg.model.max_model_len
        mcfg = copy.deepcopy(cfg)
        mcfg.model.max_model_len = max_len  # real-data prompts are kept by the context of the model evaluated
        source = PromptSource(mcfg, tok)
        force_ids = source.encode(source.force_text)
        self._check_lengths(source, force_ids, max_len, label)
        if engine is None:
            workers = [self.placement.actor(RolloutWorker, "rollout", i, cfg, path, i, threads=cfg.rollout.threads,
                                            max_restarts=cfg.rollout.max_restarts)
                       for i in range(cfg.rollout.num_workers)]
            pool, close = RolloutPool(workers, "eval"), lambda: stop(workers)
        else:
            pool = EndpointPool(engine)
            close = pool.close
        decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
        # each decode of a tokenizer behind HTTP is a request: traces are decoded side by side
        self.each = _each(cfg.eval.endpoint.max_concurrency if isinstance(tok, RemoteTokenizer) else 1)
        out: dict = {"path": path, "problems": len(source.eval)}
        try:
            self._stage(label, "sampled")
            spec = SamplingSpec(n=cfg.eval.n_samples, temperature=cfg.eval.temperature, top_p=cfg.eval.top_p,
                                max_tokens=cfg.rollout.max_new_tokens)
            groups, _ = sample_groups(pool, source.eval, source.encode, spec, (cfg.seed, "eval", "sampled"))
            correct = grade_groups(groups, self.grader)
            out["sampled"] = self.sampled_stats(groups, correct)
            self.tracker.bar.update(1)
            if cfg.eval.greedy:
                self._stage(label, "greedy")
                spec = SamplingSpec(n=1, temperature=0.0, max_tokens=cfg.rollout.max_new_tokens)
                greedy, _ = sample_groups(pool, source.eval, source.encode, spec, (cfg.seed, "eval", "greedy"))
                out["greedy"] = sample_stats(greedy, self.grader)
                self.tracker.bar.update(1)
            self._stage(label, "budget forcing")
            out.update(self.budget_forcing(groups, pool, source, force_ids, decode))
            self.tracker.bar.update(1)
            j_lists, cuts = [], []
            if cfg.eval.episode_curve:
                self._stage(label, "episodes")
                out["episodes"], j_lists, cuts = self.episodes(groups, pool, source, force_ids, decode)
                self.tracker.bar.update(1)
            out["by_difficulty"] = self.difficulty_table(groups, decode, j_lists, cuts)
            if cfg.eval.extrapolation_steps:
                self._stage(label, "extrapolation")
                tc = cfg.task
                traces = [t for g in groups for t in g]
                natural = [natural_thinking(t.completion.ids, decode, tc.think_open, tc.think_close) for t in traces]
                out["extrapolation"] = run_extrapolation(traces, pool.generate, source.encode, decode, self.grader,
                                                         cfg, natural)
            if cfg.eval.targets:
                self._stage(label, "budget adherence")
                out["budget_adherence"] = self.budget_adherence(pool, source)
                self.tracker.bar.update(1)
        finally:
            close()
        if engine is not None:
            out["endpoint"] = {**engine.info(), "tokenizer": cfg.eval.endpoint.tokenizer or "server"}
        out["seconds"] = time.perf_counter() - t0
        return out

    def _check_lengths(self, source: PromptSource, force_ids: list[int], max_len: int, label: str) -> None:
        cfg = self.cfg
        cued = [source.cued(p, Budget(max(cfg.eval.targets), cfg.eval.target_kind)) for p in source.eval_plain
                ] if cfg.eval.targets else []
        longest = max(len(source.encode(p.prompt)) for p in source.eval + cued)
        think = max(max(cfg.eval.budgets), cfg.rollout.max_new_tokens)
        need = longest + think + len(force_ids) + cfg.progress.max_answer_tokens
        if need > max_len:
            context = (f"model={label}: the server's max_model_len={max_len}" if label in self.endpoints
                       else f"model.max_model_len={max_len}")
            raise ConfigError(
                f"{context} is too short for the eval: the longest prompt "
                f"({longest} tokens) + max(eval.budgets, rollout.max_new_tokens) ({think}) + the forcing text "
                f"({len(force_ids)}) + progress.max_answer_tokens ({cfg.progress.max_answer_tokens}) = {need}")

    # ------------------------------------------------------------------ measurements
    def sampled_stats(self, groups: list[list[Trajectory]], correct: list[list[bool]]) -> dict:
        cfg = self.cfg
        k = cfg.eval.n_samples
        stats = sample_stats(groups, self.grader, correct)
        marker = cfg.task.answer_marker
        answers = [[extract_answer(t.completion.text, marker) if t.completion.finished else None for t in g]
                   for g in groups]
        golds = [g[0].problem.answer for g in groups]
        stats.update({
            "maj@k": maj_at_k(answers, golds, k, self.vote_grader), "k": k,
            "tokens_p50": token_stats([t.length for g in groups for t in g])["p50"],
            "accuracy_per_1k_tokens": accuracy_per_1k_tokens(stats["accuracy"], stats["tokens_mean"]),
        })
        if cfg.task.traces == "backtrack":  # each trace is a search: its attempts' answers vote (eval/search.py)
            stats["search"] = sampled_search_stats(groups, correct, self.vote_grader, cfg.task.think_open,
                                                   cfg.task.think_close)
        return stats

    def budget_forcing(self, groups: list[list[Trajectory]], pool: RolloutPool, source: PromptSource,
                       force_ids: list[int], decode) -> dict:
        cfg, ec = self.cfg, self.cfg.eval
        tc = cfg.task
        marker_ids, close_ids = source.encode(ec.continue_marker), source.encode(tc.think_close)
        traces = [t for g in groups for t in g]
        naturals = self.each(lambda t: natural_thinking(t.completion.ids, decode, tc.think_open, tc.think_close),
                             traces)
        plans = [BudgetPlan.build(ec.budgets, n, len(marker_ids)) for n in naturals]
        # 1. one continuation per trace that has budgets past its natural end, long enough for its largest budget
        ext = [i for i, p in enumerate(plans) if p.max_new_tokens > 0]
        reqs = [Request(extend_prompt(traces[i].prompt_ids, traces[i].completion.ids[:naturals[i]], marker_ids,
                                      close_ids),
                        SamplingSpec(n=1, temperature=ec.temperature, top_p=cfg.eval.top_p,
                                     max_tokens=plans[i].max_new_tokens,
                                     seed=request_seed(cfg.seed, "eval", "extend", i)))
                for i in ext]
        continued = dict(zip(ext, (g[0].ids for g in pool.generate(reqs)[0]))) if reqs else {}
        e_nats = dict(zip(ext, self.each(lambda i: natural_thinking(continued[i], decode, "", tc.think_close)
                                         if continued[i] else 0, ext)))
        # 2. the thinking kept at each budget, then one greedy forced answer per distinct forced prompt
        thinking = [budget_thinking(t.completion.ids, plans[i], marker_ids, continued.get(i, []), e_nats.get(i, 0))
                    for i, t in enumerate(traces)]  # [trace][budget] -> thinking token ids
        forced: dict[tuple, int] = {}
        keys = [[forced.setdefault(tuple(force_answer_prompt(t.prompt_ids, th, force_ids)), len(forced))
                 for th in thinking[i]] for i, t in enumerate(traces)]
        spec = SamplingSpec(n=1, temperature=0.0, max_tokens=cfg.progress.max_answer_tokens)
        answers = [source.force_text + g[0].text for g in pool.generate([Request(list(p), spec) for p in forced])[0]]
        gold_of = {k: traces[i].problem.answer for i, ks in enumerate(keys) for k in ks}  # a prompt holds its problem
        verdicts = self.grader.many(answers, [gold_of[k] for k in range(len(answers))])
        # 3. per budget: pass@1 over the forced answers, thinking tokens spent, share of extended traces
        rows, votes = [], {}
        for b, budget in enumerate(ec.budgets):
            correct, samples, pos = [], [], 0
            for g in groups:
                idx = range(pos, pos + len(g))
                pos += len(g)
                correct.append([verdicts[keys[i][b]] for i in idx])
                samples.append([(extract_answer(answers[keys[i][b]], tc.answer_marker), len(thinking[i][b]))
                                for i in idx])
            votes[budget] = samples
            acc, se = pass_at_1(correct)
            rows.append({"budget": budget, "accuracy": acc, "accuracy_se": _finite(se),
                         "thinking_tokens_mean": float(np.mean([len(th[b]) for th in thinking])),
                         "extended_share": float(np.mean([p.steps[b].kind == "extend" for p in plans]))})
        accs = [r["accuracy"] for r in rows]
        for r, reg in zip(rows, regret_curve(ec.budgets, accs, ec.budgets)):
            r["regret"] = reg
        golds = [g[0].problem.answer for g in groups]
        equal = []
        for short, long in equal_token_pairs(ec.budgets, ec.n_samples):
            v = majority_at_equal_tokens(votes[short], golds, short, long, self.vote_grader)
            equal.append({"budget_short": short, "budget_long": long, "m": v.m, "accuracy": v.accuracy,
                          "mean_total_tokens": v.mean_total_tokens,
                          "single_long_accuracy": accs[list(ec.budgets).index(long)]})
        return {"budget_forcing": rows, "majority_at_equal_tokens": equal,
                "tokens_to_target": (tokens_to_reach(ec.budgets, accs, ec.target_accuracy)
                                     if ec.target_accuracy > 0 else None),
                "forced_prompts": len(forced), "extensions": len(reqs)}

    def episodes(self, groups: list[list[Trajectory]], pool: RolloutPool, source: PromptSource,
                 force_ids: list[int], decode) -> dict:
        cfg = self.cfg
        traces = [t for g in groups for t in g]
        self.each(lambda t: segment_trajectory(t, cfg, decode), traces)
        cuts = [[0, *t.episode_cuts] for t in traces]  # thinking tokens before each forced answer (c_-1 first)
        prefixes = {tuple(t.prompt_ids + t.completion.ids[:c]): t.problem.answer for t, cs in zip(traces, cuts)
                    for c in cs}
        estimator = Estimator(cfg, force_ids, self.grader, source.force_text)
        j, stats = estimator.run(prefixes, lambda reqs: pool.generate(reqs)[0], (cfg.seed, "eval", "episodes"))
        j_lists = [[j[tuple(t.prompt_ids + t.completion.ids[:c])] for c in cs] for t, cs in zip(traces, cuts)]
        return ({"curve": episode_curve(j_lists, cuts),
                 "episodes_mean": float(np.mean([len(t.episode_spans) for t in traces])), **stats}, j_lists, cuts)

    def difficulty_table(self, groups: list[list[Trajectory]], decode, j_lists: list, cuts: list) -> list[dict]:
        """Per difficulty bucket: accuracy, tokens and, with J per episode, the over-thinking
        measures. The traces must be graded (`correct` set)."""
        tc = self.cfg.task
        records = []
        for g_idx, g in enumerate(groups):
            for t in g:
                records.append(TraceRecord(
                    prompt=g_idx, difficulty=t.problem.meta.get("difficulty"), correct=t.correct, tokens=t.length,
                    thinking=natural_thinking(t.completion.ids, decode, tc.think_open, tc.think_close)))
        for r, jl, cs in zip(records, j_lists, cuts):
            r.j, r.cuts = list(jl), list(cs)
        return by_difficulty(records)

    def budget_adherence(self, pool: RolloutPool, source: PromptSource) -> list[dict]:
        """One row per eval.targets entry (see the module doc); all targets are sampled in one rollout."""
        cfg, ec = self.cfg, self.cfg.eval
        problems = [dataclasses.replace(source.cued(p, Budget(t, ec.target_kind)), id=f"{p.id}@{t}")
                    for t in ec.targets for p in source.eval_plain]
        spec = SamplingSpec(n=ec.n_samples, temperature=ec.temperature, top_p=cfg.rollout.top_p,
                            max_tokens=cfg.rollout.max_new_tokens)
        groups, _ = sample_groups(pool, problems, source.encode, spec, (cfg.seed, "eval", "adherence"))
        correct = grade_groups(groups, self.grader)
        size, rows = len(source.eval_plain), []
        for k, target in enumerate(ec.targets):
            part = slice(k * size, (k + 1) * size)
            rows.append(adherence_row(target, correct[part], [[t.length for t in g] for g in groups[part]]))
        return rows

    # ------------------------------------------------------------------ outputs


def run_eval(cfg: Config, models: Sequence[tuple[str, str]] = ()) -> dict:
    """`mrt-ray eval`: EvalRunner(cfg, models).run() on a Ray cluster that is shut down afterwards."""
    import ray

    try:
        return EvalRunner(cfg, models).run()
    finally:
        ray.shutdown()
