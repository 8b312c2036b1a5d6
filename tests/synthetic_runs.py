"""Small synthetic run directories in the formats mrt-ray writes (config.yaml from the real config loader,
metrics.jsonl rows with the trainer's keys, samples.jsonl trace records, eval.json of `mrt-ray eval`), so the report
can be tested without a training run. Values follow smooth curves with seeded noise."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mrt_ray.config import load_config, to_yaml

STEPS, EVAL_EVERY = 40, 10


def _metrics(rng, steps: int, mrt: bool, gain: float) -> list[dict]:
    rows = [{"step": -1, "eval/sampled_accuracy": 0.5, "eval/sampled_accuracy_se": 0.03,
             "eval/sampled_tokens_mean": 70.0, "eval/greedy_accuracy": 0.55, "eval/greedy_accuracy_se": 0.04}]
    for s in range(steps):
        f = s / steps
        row = {"step": s, "reward": 0.5 + gain * f + rng.normal(0, 0.05),
               "accuracy": 0.5 + gain * f + rng.normal(0, .05),
               "tokens_mean": 70 - 30 * f + rng.normal(0, 2), "generate_seconds": 0.3 + rng.uniform(0, .05),
               "score_seconds": 0.01, "learn_seconds_wall": 0.12, "push_seconds": 0.05 + rng.uniform(0, .01),
               "push_probe_diff": float(rng.uniform(1e-7, 1e-6)), "logprob_diff": float(rng.uniform(1e-7, 3e-7)),
               "policy_version": s + 1}
        if mrt:
            row["estimate_seconds"] = 0.2 + rng.uniform(0, .03)
            j = [0.3 + 0.1 * f] + [min(1.0, 0.3 + 0.1 * f + (0.12 + 0.1 * f) * (i + 1)) for i in range(6)]
            row.update({f"j_c{i - 1}": v for i, v in enumerate(j)})
            row.update({f"progress_ep{i}": j[i + 1] - j[i] for i in range(6)})
            row["progress_nonpositive_share"] = 0.4 - 0.2 * f
        row["step_seconds"] = sum(v for k, v in row.items() if k.endswith(("_seconds", "_wall"))) + 0.02
        rows.append(row)
        if (s + 1) % EVAL_EVERY == 0:  # like the trainer: in the step's row, the last one in a row of its own
            acc = 0.5 + gain * (s + 1) / steps + rng.normal(0, 0.02)
            held = {"eval/sampled_accuracy": acc, "eval/sampled_accuracy_se": 0.03, "eval/greedy_accuracy": acc + .03,
                    "eval/sampled_tokens_mean": 70 - 30 * (s + 1) / steps, "eval/greedy_accuracy_se": 0.04}
            row.update(held) if s + 1 < steps else rows.append({"step": steps, **held})
    return rows


def _samples(rng, steps: int) -> list[dict]:
    out = []
    for step in (0, steps - 10):
        for i in range(4):
            eps = ["7+5 = 12", " Wait, 12-3 = 9", " Wait, let me check: 9+4 = 13", " Wait, 13 again"]
            prog = [round(float(p), 3) for p in rng.uniform(-0.3, 0.4, len(eps))]
            j = [0.2]
            for p in prog:
                j.append(round(min(1.0, max(0.0, j[-1] + p)), 3))
            segments = [["<think>", -1]] + [[e, k] for k, e in enumerate(eps)] + [["</think> #### 13", -1]]
            out.append({"step": step, "prompt": f"Compute 7+5-3+4 (trace {i}).", "answer": "13", "reward": 1.0,
                        "correct": i % 2 == 0, "finished": True, "length": 80, "segments": segments,
                        "spans": [[k * 10, k * 10 + 9] for k in range(len(eps))], "progress": prog, "j": j})
    return out


def make_run(root: Path, name: str, seed: int, algo: str, gain: float, steps: int = STEPS) -> Path:
    d = root / name
    d.mkdir(parents=True)
    cfg = load_config(None, [f"algo={algo}", f"seed={seed}", f"run.dir={d}", f"train.steps={steps}"])
    (d / "config.yaml").write_text(to_yaml(cfg))
    rng = np.random.default_rng(seed)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _metrics(rng, steps, algo == "mrt", gain)))
    if algo == "mrt":
        (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _samples(rng, steps)))
    (d / "summary.json").write_text(json.dumps({"steps": steps, "train_seconds": 30.0 + seed}))
    return d


def make_eval(root: Path) -> Path:
    d = root / "eval-1"
    d.mkdir(parents=True)
    models = {}
    for m, k in (("base", 0.6), ("mrt", 0.8)):
        budgets = [8, 16, 32, 64]
        bf = [{"budget": b, "accuracy": k * (1 - np.exp(-b / 20)), "accuracy_se": 0.03, "thinking_tokens_mean": b,
               "extended_share": 0.0, "regret": 0.5 * np.exp(-b / 30) / k} for b in budgets]
        curve = [{"episode": e, "j": min(1.0, 0.2 + k * 0.2 * (e + 1)), "thinking_tokens_mean": 10.0 * (e + 1),
                  "traces": 16} for e in range(-1, 4)]
        models[m] = {"sampled": {"accuracy": k - 0.1, "accuracy_se": 0.03, "maj@k": k, "tokens_mean": 50.0},
                     "budget_forcing": bf, "tokens_to_target": None, "episodes": {"curve": curve}}
    (d / "eval.json").write_text(json.dumps({"task": "embedded", "models": models}))
    return d
