"""Extrapolation, as the MRT reference evaluates it (analysis/code/pass_at_k_extrapolate.py): push a model to think
past its natural end, step by step, and measure whether the extra thinking helps.

Per sampled trace, starting from its natural thinking (up to the close tag), forcing step w = 1..W appends "\\n" and
the next cue of `eval.extrapolation_cues` (cycled: "Wait", "But wait", "Alternatively", "But hold on") and lets the
model think on for at most `eval.extrapolation_step_tokens` tokens, stopping at the close tag. A step cut at the
token cap drops its unfinished last paragraph (the text after its last "\\n\\n"; everything when there is none).
Before the first step and after every `eval.extrapolation_every` steps, `eval.extrapolation_samples` free
continuations (no stop: the model may close its thinking and answer) are sampled and graded: accuracy after w steps,
and the thinking tokens it took.
"""
from __future__ import annotations

from collections.abc import Sequence


def drop_last_paragraph(text: str) -> str:
    """A step cut at its token cap keeps its finished paragraphs only (the reference: split on "\\n\\n", drop the
    last piece, rejoin, end with one "\\n")."""
    pieces = text.split("\n\n")
    return "\n\n".join(pieces[:-1]) + "\n"


def extend(thinking: str, cue: str, generated: str, truncated: bool) -> str:
    """The thinking after one forcing step: the cue on a new line, then what the model wrote (its finished
    paragraphs only when the step hit the cap)."""
    return thinking + "\n" + cue + (drop_last_paragraph(generated) if truncated else generated)


def checkpoints(steps: int, every: int) -> list[int]:
    """The numbers of forcing steps after which continuations are sampled: 0, every, 2*every, ... <= steps."""
    if steps < 0 or every < 1:
        raise ValueError(f"extrapolation: steps={steps} must be >= 0 and every={every} >= 1")
    return list(range(0, steps + 1, every))


def cue(cues: Sequence[str], step: int) -> str:
    """The cue of forcing step `step` (0-based), cycling through `cues`."""
    if not cues:
        raise ValueError("eval.extrapolation_cues is empty")
    return cues[step % len(cues)]


def run_extrapolation(traces: Sequence, generate, encode, decode, grader, cfg, natural: Sequence[int]) -> dict:
    """The stage on the first `eval.extrapolation_traces` of `traces` (sampled Trajectories) whose natural thinking
    has `natural[i]` tokens. `generate(requests)` samples on the eval workers. Returns {"rows": [{"steps": w,
    "accuracy": ..., "accuracy_se": ..., "thinking_tokens_mean": ..., "traces": ...}], "forcing_steps": W}."""
    from mrt_ray.eval.metrics import pass_at_1
    from mrt_ray.rollout.pool import request_seed
    from mrt_ray.rollout.types import Request, SamplingSpec

    ec, tc, mlen = cfg.eval, cfg.task, cfg.model.max_model_len
    traces = list(traces)[: ec.extrapolation_traces]
    state = [decode(t.completion.ids[:n]) for t, n in zip(traces, natural)]
    rows = []
    for w in range(ec.extrapolation_steps + 1):
        if w in checkpoints(ec.extrapolation_steps, ec.extrapolation_every):
            prompts = [t.prompt_ids + encode(s) for t, s in zip(traces, state)]
            room = [min(cfg.rollout.max_new_tokens, mlen - len(p) - 1) for p in prompts]
            live = [i for i, r in enumerate(room) if r > 0]
            reqs = [Request(prompts[i], SamplingSpec(n=ec.extrapolation_samples, temperature=ec.temperature,
                                                     top_p=ec.top_p, max_tokens=room[i],
                                                     seed=request_seed(cfg.seed, "extrapolate", w, i)))
                    for i in live]
            outs = generate(reqs)[0] if reqs else []
            flat = [(i, c) for i, comps in zip(live, outs) for c in comps]
            ok = grader.many([c.text for _, c in flat], [traces[i].problem.answer for i, _ in flat])
            correct = [[bool(c.finished and v) for (j, c), v in zip(flat, ok) if j == i] for i in live]
            acc, se = pass_at_1(correct) if correct else (float("nan"), float("nan"))
            rows.append({"steps": w, "accuracy": acc, "accuracy_se": 0.0 if se != se else se,
                         "thinking_tokens_mean": sum(len(encode(state[i])) for i in live) / max(1, len(live)),
                         "traces": len(live)})
        if w == ec.extrapolation_steps:
            break
        c = cue(ec.extrapolation_cues, w)
        prompts = [t.prompt_ids + encode(s + "\n" + c) for t, s in zip(traces, state)]
        room = [min(ec.extrapolation_step_tokens, mlen - len(p) - 1) for p in prompts]
        live = [i for i, r in enumerate(room) if r > 0]
        reqs = [Request(prompts[i], SamplingSpec(n=1, temperature=ec.temperature, top_p=ec.top_p, max_tokens=room[i],
                                                 seed=request_seed(cfg.seed, "force", w, i), stop=(tc.think_close,)))
                for i in live]
        for i, comps in zip(live, generate(reqs)[0] if reqs else []):
            state[i] = extend(state[i], c, comps[0].text, truncated=not comps[0].finished)
    return {"rows": rows, "forcing_steps": ec.extrapolation_steps}
