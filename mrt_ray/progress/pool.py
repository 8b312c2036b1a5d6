"""Steps 3-4 of the data path (MRT): segment every trace into episodes, then estimate by Monte Carlo
J(c_j) = P(forced answer after prefix c_j is correct) on the estimator workers, and the progress J(c_j) - J(c_{j-1})
of each episode.

The meta-prover mu: prefix c_j = prompt + the completion's tokens up to episode j's answer cut, then the forced-
termination text; a short sampled answer is graded. c_-1 is the prompt with no thinking. Prefixes are deduplicated
across the step (all samples of a prompt share c_-1) and sampled in rounds, batched across the whole step; a prefix
stops once its estimate is settled (`should_stop`), so easy prefixes cost less than K samples. The workers are
RolloutWorkers with prefix caching: all forced answers of a trace share its KV prefix.
"""
from __future__ import annotations

from mrt_ray.config import Config
from mrt_ray.episodes import answer_cuts, segment, token_boundaries
from mrt_ray.progress.estimate import mean_progress_by_episode, plan_round, progress, share_nonpositive, should_stop
from mrt_ray.rollout.pool import request_seed
from mrt_ray.rollout.types import Request, SamplingSpec
from mrt_ray.trajectory import Trajectory


def segment_trajectory(t: Trajectory, cfg: Config, decode) -> None:
    """Fills episode token spans and the token counts after which answers are forced (one per episode)."""
    text = t.completion.text
    episodes = segment(text, cfg.progress.segment, cfg.task.think_open, cfg.task.think_close)
    if not episodes:
        t.episode_spans, t.episode_cuts = [], []
        return
    ids = t.completion.ids
    starts = token_boundaries(ids, [e.start for e in episodes], decode)
    ends = token_boundaries(ids, [e.end for e in episodes], decode)
    t.episode_spans = list(zip(starts, ends))
    t.episode_cuts = token_boundaries(ids, answer_cuts(text, episodes), decode)


class Estimator:
    """Adaptive Monte-Carlo estimation of J over a set of prefixes (pure logic; the sampling is injected)."""

    def __init__(self, cfg: Config, force_ids: list[int], grader, force_text: str):
        self.cfg, self.force_ids, self.grader, self.force_text = cfg, force_ids, grader, force_text

    def run(self, prefixes: dict[tuple, str], generate, seed_parts: tuple) -> tuple[dict[tuple, float], dict]:
        """prefixes: {prefix token ids: gold answer}. generate(requests) -> completions per request.
        Returns ({prefix: J estimate}, stats)."""
        pc = self.cfg.progress
        succ = dict.fromkeys(prefixes, 0)
        trials = dict.fromkeys(prefixes, 0)
        open_ = list(prefixes)
        rounds = tokens = 0
        while open_:
            reqs = []
            for i, p in enumerate(open_):
                spec = SamplingSpec(n=plan_round(trials[p], pc), temperature=pc.temperature, top_p=pc.top_p,
                                    max_tokens=pc.max_answer_tokens, seed=request_seed(*seed_parts, rounds, i))
                reqs.append(Request(list(p) + self.force_ids, spec))
            outs = generate(reqs)
            answers = [(p, c) for p, comps in zip(open_, outs) for c in comps]
            verdicts = self.grader.many([self.force_text + c.text for _, c in answers],
                                        [prefixes[p] for p, _ in answers])
            for (p, c), ok in zip(answers, verdicts):
                succ[p] += bool(ok)
                trials[p] += 1
                tokens += len(c.ids)
            open_ = [p for p in open_ if not should_stop(succ[p], trials[p], pc)]
            rounds += 1
        j = {p: succ[p] / trials[p] for p in prefixes}
        return j, {"estimate_samples": sum(trials.values()), "estimate_tokens": tokens, "estimate_rounds": rounds,
                   "estimate_prefixes": len(prefixes)}


class EstimatorPool:
    """Segments a step's traces and estimates J for every episode boundary. `generate(requests)` samples on the
    estimator workers (the controller's re-arming pool over RolloutWorkers with prefix caching)."""

    def __init__(self, cfg: Config, source, grader, generate):
        self.cfg, self.source, self.generate = cfg, source, generate
        self.estimator = Estimator(cfg, source.encode(source.force_text), grader, source.force_text)

    def estimate(self, groups: list[list[Trajectory]], step: int) -> dict:
        decode = lambda ids: self.source.tok.decode(ids, skip_special_tokens=True)  # noqa: E731
        prefixes: dict[tuple, str] = {}
        for g in groups:
            for t in g:
                segment_trajectory(t, self.cfg, decode)
                for cut in [0] + t.episode_cuts:
                    prefixes[tuple(t.prompt_ids + t.completion.ids[:cut])] = t.problem.answer
        j, stats = self.estimator.run(prefixes, lambda reqs: self.generate(reqs)[0],
                                      (self.cfg.seed, "estimate", step))
        for g in groups:
            for t in g:
                t.j_values = [j[tuple(t.prompt_ids + t.completion.ids[:cut])] for cut in [0] + t.episode_cuts]
                t.progress = progress(t.j_values)
        plists = [t.progress for g in groups for t in g if t.progress]
        by_ep = mean_progress_by_episode(plists) if plists else []
        j_curve = mean_progress_by_episode([t.j_values for g in groups for t in g])
        stats.update({
            "episodes_mean": sum(len(t.episode_spans) for g in groups for t in g) / sum(len(g) for g in groups),
            "progress_nonpositive_share": share_nonpositive(plists) if plists else float("nan"),
        })
        stats.update({f"progress_ep{i}": v for i, v in enumerate(by_ep[:6])})
        stats.update({f"j_c{i - 1}": v for i, v in enumerate(j_curve[:7])})
        return stats
