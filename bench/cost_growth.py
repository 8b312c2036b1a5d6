"""How a training step's cost grows with the workload (issue 15, item 4): step time and its phases against prompts x
samples and against rollout.max_new_tokens, and the peak resident memory of every actor at each point.

    .venv/bin/python bench/cost_growth.py [--steps 2] [--warmup 1] [--rounds 2] [--plot FILE.png] [key=value ...]

Each workload is one fresh session of the default layout (1 vLLM worker; learner ranks and threads derived from the
resources, docs/performance.md section 11; the embedded base policy) with the bench workload of issue 9
(harness.WORKLOAD: 16 prompts x 8 samples, <= 64 new tokens), changed in one dimension at a time: prompts x samples over
PS (max_new_tokens 64), max_new_tokens over MNT (16 x 8). Per session: `--warmup` untimed steps, then each actor's peak
RSS is reset (/proc/<pid>/clear_refs) and `--steps` steps are timed. With `--rounds 2` the workloads run a second time
in reverse order, so the machine's drift falls on both ends of each curve; medians over rounds are reported. Trailing
key=value pairs override every session.
A benchmark, not a test: nothing is asserted about time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from harness import WORKLOAD, MrtSession, actor_pids, bench_config, markdown_table, phase_summary

PS = ((4, 4), (8, 8), (16, 8), (16, 16))  # (prompts per step, samples per prompt) at max_new_tokens 64
MNT = (32, 64, 128, 192)  # max_new_tokens at 16 prompts x 8 samples


def workloads() -> list[tuple[str, list[str]]]:
    out = [(f"{p}x{s}", [f"train.prompts_per_step={p}", f"rollout.n_samples={s}", "rollout.max_new_tokens=64"])
           for p, s in PS]
    out += [(f"mnt{m}", ["train.prompts_per_step=16", "rollout.n_samples=8", f"rollout.max_new_tokens={m}"])
            for m in MNT if m != 64]  # 16 x 8 at 64 is the first list's third point
    return out


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))


def run_workload(label: str, overrides: list[str], args) -> dict:
    cfg = bench_config(f"cost-{label}", [*WORKLOAD, *overrides, *args.overrides])
    session = MrtSession(cfg)
    try:
        session.steps(args.warmup)
        pids = actor_pids(session.trainer)
        for pid in pids.values():  # peak RSS from here on (VmHWM := VmRSS)
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        rows = session.steps(args.steps)
        peak = {name: _status_kib(pid, "VmHWM") / 1024 for name, pid in pids.items()}
    finally:
        session.close()
    return {"label": label, "overrides": overrides, "summary": phase_summary(rows), "peak_rss_mib": peak,
            "rows": rows}


def table(results: list[dict]) -> str:
    """Medians over rounds per workload: step and phase seconds, tokens, and each actor's peak RSS."""
    by = {}
    for r in results:
        by.setdefault(r["label"], []).append(r)
    names = sorted({n for r in results for n in r["peak_rss_mib"]})
    keys = ("step_seconds", "generate_seconds", "learn_seconds_wall", "push_seconds", "tokens_mean")
    rows = []
    for label, rs in by.items():
        med = {k: statistics.median(r["summary"].get(k, float("nan")) for r in rs) for k in keys}
        rss = [statistics.median(r["peak_rss_mib"].get(n, float("nan")) for r in rs) for n in names]
        rows.append([label, *[med[k] for k in keys], *[round(x) for x in rss], len(rs)])
    return markdown_table(["workload", "step s", "generate s", "learn s", "push s", "tokens / sample",
                           *[f"peak RSS {n} MiB" for n in names], "rounds"], rows)


def plot(results: list[dict], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    med = statistics.median

    def points(labels: list[str], x: list[float]) -> tuple[list[float], dict[str, list[float]]]:
        """The panel's x values and median seconds per phase, over the workloads that ran (`--only` may skip some)."""
        xs, ys = [], {k: [] for k in ("step_seconds", "generate_seconds", "learn_seconds_wall")}
        for label, xv in zip(labels, x, strict=True):
            if rs := [r for r in results if r["label"] == label]:
                xs.append(xv)
                for k in ys:
                    ys[k].append(med(r["summary"].get(k, float("nan")) for r in rs))
        return xs, ys

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    panels = [([f"{p}x{s}" for p, s in PS], [p * s for p, s in PS], "prompts x samples (max_new_tokens 64)"),
              ([f"mnt{m}" if m != 64 else "16x8" for m in MNT], list(MNT), "max_new_tokens (16 prompts x 8 samples)")]
    for ax, (labels, x, xlabel) in zip(fig.subplots(1, 2), panels):
        x, ys = points(labels, x)
        for k, name in (("step_seconds", "step"), ("generate_seconds", "generate"), ("learn_seconds_wall", "learn")):
            ax.plot(x, ys[k], marker="o", label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("seconds (median)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("mrt-ray step cost against the workload (bench/cost_growth.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2, help="timed steps per workload")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--rounds", type=int, default=2, help="passes over the workloads, every other one reversed")
    ap.add_argument("--only", default="", help="comma-separated workload labels (default: all)")
    ap.add_argument("--plot", default="", help="write the two-panel plot here (PNG)")
    ap.add_argument("--out", default="", help="write every step's row here (JSON)")
    ap.add_argument("overrides", nargs="*", help="config key=value overrides for every session")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    todo = [w for w in workloads() if not args.only or w[0] in args.only.split(",")]
    results, load = [], [os.getloadavg()[0]]
    for r in range(args.rounds):
        for label, overrides in (todo if r % 2 == 0 else todo[::-1]):
            results.append(run_workload(label, overrides, args))
            load.append(os.getloadavg()[0])
            print(f"round {r + 1}: {label} step {results[-1]['summary']['step_seconds']:.2f} s", flush=True)
    print(f"\n## step cost against the workload ({args.steps} timed steps after {args.warmup} warm-up per session, "
          f"{args.rounds} rounds; medians)\n")
    print(table(results))
    print(f"\n1-minute load average at the start and after each session (2 cores: > 2 is contention): "
          f"{', '.join(f'{x:.1f}' for x in load)}")
    if args.plot:
        plot(results, args.plot)
    if args.out:
        Path(args.out).write_text(json.dumps({"overrides": args.overrides, "load": load, "results": results},
                                             indent=1))


if __name__ == "__main__":
    main()
