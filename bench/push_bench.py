"""Weight-push benchmark: mrt-ray's push (learner rank 0 -> one inference worker, real Ray actors and engine) against a
raw gloo broadcast of the same buckets between two fresh processes, at several state-dict sizes.

Per size: one learner (ZeRO-0) and one rollout worker on a Qwen2 model of about that many MiB (character vocabulary,
random weights), then `--rounds` rounds, each a block of raw broadcasts followed by a block of pushes. Each round gives
two ratios (raw seconds / push seconds, medians of the round's blocks): the broadcast (learner rank 0's send loop after
the ready gate: packing, checksums, broadcasts) and the push end to end (RPCs, transfer, engine reload, receiver
checksums; not the probe). Reported: median [min, max] over rounds; alternation spreads any drift of the machine's
load over both sides. Also reported per push: the ready gate wait, the probe, and the worker's peak RSS growth.

With several variants, every round runs each variant's raw and push blocks in turn (the order reversed every other
round) on the same actors, the weight group rebuilt for each with one untimed push; the paired ratio of each
variant's end-to-end push time to the first's, per round, is reported too. Variants: bucket sizes (`--bucket-mib
32,256`; 0 is the backend's default) times send paths (`--send view,pack`: buckets sent from the learner's own
parameter storage, the default, or packed into send buffers first, the older path).

    .venv/bin/python bench/push_bench.py --sizes 3,100,500 --rounds 3 --block 5
    .venv/bin/python bench/push_bench.py --sizes 100,500 --rounds 4 --block 4 --bucket-mib 32,256
    .venv/bin/python bench/push_bench.py --sizes 3,100,500 --rounds 4 --block 4 --send view,pack
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from raw_broadcast import bucket_sizes, raw_broadcast_seconds  # noqa: E402

MiB = 2**20


def model_dims(mib: float) -> tuple[int, int]:
    """(hidden size, layers) of a Qwen2 (intermediate 2.75 x hidden) whose fp32 weights take about `mib` MiB."""
    for hidden, layers in ((128, 4), (512, 8), (1024, 10)):
        if abs(4 * layers * 12.25 * hidden**2 / MiB - mib) <= 0.2 * mib:
            return hidden, layers
    hidden = 512 if mib < 1000 else 1024
    return hidden, max(1, round(mib * MiB / (4 * 12.25 * hidden**2)))


def build_model(mib: float, root: Path) -> str:
    import torch

    from mrt_ray.bootstrap import build_model as qwen2
    from mrt_ray.bootstrap import build_tokenizer
    from mrt_ray.config import BootstrapConfig

    hidden, layers = model_dims(mib)
    path = root / f"qwen2-{hidden}x{layers}"
    if not (path / "config.json").exists():
        tok = build_tokenizer()
        torch.manual_seed(0)
        qwen2(BootstrapConfig(hidden_size=hidden, num_layers=layers, num_heads=hidden // 64,
                              intermediate_size=hidden * 11 // 4), len(tok), 320, seed=0).save_pretrained(path)
        tok.save_pretrained(path)
    return str(path)


def _peak_rss_growth_mib(pid: int, push) -> tuple[dict, float]:
    """Run `push()` and return its stats and the peak RSS growth of process `pid` during it (reset via clear_refs)."""
    def field(key: str) -> int:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key))

    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    before = field("VmRSS")
    stats = push()
    return stats, (field("VmHWM") - before) / 1024


def bench_size(mib: float, args, root: Path) -> list[dict]:
    """One result per variant: bucket size of `args.bucket_mib` x send path of `args.send` (see the module doc)."""
    import ray

    from mrt_ray.actors import Placement, weight_backend
    from mrt_ray.config import load_config
    from mrt_ray.learner.group import LearnerGroup
    from mrt_ray.rollout.worker import RolloutWorker
    from mrt_ray.weight_sync.buckets import bucket_bytes, plan_buckets
    from mrt_ray.weight_sync.push import WeightSync

    model = build_model(mib, root)
    cfg = load_config(None, [f"model.path={model}", "learner.num_ranks=1", "learner.zero_stage=0",
                             "rollout.num_workers=1", f"rollout.backend={args.backend}", "wandb.mode=disabled",
                             f"ray.num_cpus={args.ray_cpus}", f"run.dir={root / 'run'}"])
    placement = Placement(cfg, with_estimators=False)
    learners = LearnerGroup(cfg, placement, model, local=True)
    worker = placement.actor(RolloutWorker, "rollout", 0, cfg, model, 0, threads=cfg.rollout.threads)
    try:
        sync = WeightSync(learners, [worker], placement, list(range(3, 60)),
                          cfg.learner.collective_timeout_s, 1e-3, cfg.rollout.startup_timeout_s)
        pid = ray.get(worker.ready.remote())["pid"]
        backend = weight_backend(placement.roles)
        variants = [(plan_buckets(sync.metas, bucket_bytes(b, backend)), send) for b in args.bucket_mib
                    for send in args.send]
        rounds: list[list[dict]] = [[] for _ in variants]  # per variant, its rounds
        version = 0
        for r in range(args.rounds):
            for i in (range(len(variants)) if r % 2 == 0 else reversed(range(len(variants)))):
                sync.plan, send = variants[i]
                sync.zero_copy = send == "view"
                sync.connect()  # a new weight group carrying this plan
                sync.push(version)  # untimed: the new group's first transfer
                version += 1
                raw = raw_broadcast_seconds(bucket_sizes(sync), reps=args.block, threads=max(cfg.learner.threads, 1))
                pushes = []
                for _ in range(args.block):
                    stats, rss = _peak_rss_growth_mib(pid, lambda v=version: sync.push(v))
                    pushes.append({**stats, "worker_peak_rss_growth_mib": rss})
                    version += 1
                rounds[i].append({"raw_seconds": raw, "pushes": pushes})
        return [{"mib": sync.bytes / MiB, "buckets": len(p.buckets), "bucket_mib": p.max_bucket / MiB, "send": send,
                 "model": model, "rounds": rs} for (p, send), rs in zip(variants, rounds, strict=True)]
    finally:
        for a in learners.actors + [worker]:
            ray.kill(a)
        placement.remove()


def spread(xs: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(xs))} [{fmt.format(min(xs))}, {fmt.format(max(xs))}]"


def report(results: list[dict]) -> str:
    med = statistics.median
    lines = ["| state dict | buckets | send | packed | raw gloo ms | broadcast ms | end to end ms | broadcast / raw "
             "| end to end / raw | gate ms | probe ms | worker peak RSS growth MiB |", "|" + "---|" * 12]
    for r in results:
        bc = [med(x["raw_seconds"]) / med([p["push_broadcast_seconds"] for p in x["pushes"]]) for x in r["rounds"]]
        e2e = [med(x["raw_seconds"]) / med([p["push_seconds"] for p in x["pushes"]]) for x in r["rounds"]]
        pushes = [p for x in r["rounds"] for p in x["pushes"]]
        raw = [t for x in r["rounds"] for t in x["raw_seconds"]]

        def ms(key: str, pushes: list[dict] = pushes) -> str:
            return f"{med([p[key] for p in pushes]) * 1e3:.1f}"

        packed = max(p["push_packed_buckets"] for p in pushes)
        lines.append(f"| {r['mib']:.1f} MiB | {r['buckets']} x <= {r['bucket_mib']:.0f} MiB | {r['send']} | {packed} | "
                     f"{med(raw) * 1e3:.1f} | "
                     f"{ms('push_broadcast_seconds')} | {ms('push_seconds')} | {spread(bc)} | {spread(e2e)} | "
                     f"{ms('push_gate_seconds')} | {ms('push_probe_seconds')} | "
                     f"{max(p['worker_peak_rss_growth_mib'] for p in pushes):.0f} |")
    return "\n".join(lines)


def paired(results: list[dict]) -> str:
    """Per state-dict size with several variants: each variant's end-to-end push time over the first's, per round
    (the variants ran in the same round, back to back)."""
    med = statistics.median
    lines = []
    for mib in dict.fromkeys(round(r["mib"], 1) for r in results):
        rs = [r for r in results if round(r["mib"], 1) == mib]
        for r in rs[1:]:
            ratio = [med([p["push_seconds"] for p in b["pushes"]]) / med([p["push_seconds"] for p in a["pushes"]])
                     for a, b in zip(rs[0]["rounds"], r["rounds"], strict=True)]
            lines.append(f"- {mib} MiB: end to end with {r['bucket_mib']:.0f} MiB buckets, {r['send']} / with "
                         f"{rs[0]['bucket_mib']:.0f} MiB, {rs[0]['send']}: {spread(ratio)} over {len(ratio)} rounds")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="3,100,500", help="state-dict sizes in MiB, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--block", type=int, default=5, help="raw broadcasts, then pushes, per round")
    ap.add_argument("--backend", default="vllm", choices=("vllm", "hf"))
    ap.add_argument("--bucket-mib", default="0", help="bucket sizes in MiB, comma-separated (0: the backend's "
                    "default); several are alternated round by round")
    ap.add_argument("--send", default="view", help="send paths, comma-separated: view (from the learner's parameter "
                    "storage where the layout allows) and/or pack (into send buffers); several are alternated")
    ap.add_argument("--ray-cpus", type=int, default=4)
    ap.add_argument("--out", default="", help="write the raw measurements here as JSON")
    args = ap.parse_args()
    args.bucket_mib = [float(b) for b in args.bucket_mib.split(",")]
    args.send = args.send.split(",")
    if not set(args.send) <= {"view", "pack"}:
        ap.error(f"--send takes view and/or pack, got {','.join(args.send)}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from mrt_ray.actors import init_ray
    from mrt_ray.config import Config

    cfg = Config()
    cfg.ray.num_cpus = args.ray_cpus
    init_ray(cfg)
    load = [os.getloadavg()[0]]
    results = []
    with tempfile.TemporaryDirectory(prefix="push-bench-") as tmp:
        for mib in (float(s) for s in args.sizes.split(",")):
            t0 = time.perf_counter()
            results.extend(bench_size(mib, args, Path(tmp)))
            load.append(os.getloadavg()[0])
            print(f"{mib:g} MiB done in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"\n## weight push vs raw gloo broadcast ({args.backend} engine, {args.rounds} rounds x {args.block}; "
          f"ratios: median [min, max] over rounds)\n")
    print(report(results))
    if len(args.bucket_mib) * len(args.send) > 1:
        print("\nPaired over rounds:\n" + paired(results))
    print(f"\n1-minute load average at the start and after each size (2 cores: > 2 is contention): "
          f"{', '.join(f'{x:.1f}' for x in load)}")
    if args.out:
        Path(args.out).write_text(json.dumps({"argv": sys.argv, "load": load, "results": results}, indent=1))


if __name__ == "__main__":
    main()
