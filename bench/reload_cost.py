"""The floor of the weight push's end-to-end time: vLLM's `reload_weights` of a whole state dict already in the
worker's memory (no transfer, no RPC), on the models of bench/push_bench.py (random Qwen2s of about 3, 100 and 500
MiB, fp32). The push runs this same call on the buckets as they land, so a push can end no sooner than the reload
plus the last bucket's transfer.

    .venv/bin/python bench/reload_cost.py [--sizes 3,100,500] [--reps 6]

One in-process vLLM engine per size (the rollout worker's, 1 thread); the first reload is a warm-up and dropped;
then `--reps` timed reloads and prefix-cache resets, as `receive_weights` does them. A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import markdown_table, spread  # noqa: E402
from push_bench import MiB, build_model  # noqa: E402


def reload_seconds(model: str, reps: int) -> list[float]:
    from safetensors.torch import load_file

    from mrt_ray.config import load_config
    from mrt_ray.rollout.worker import RolloutWorker

    cfg = load_config(None, [f"model.path={model}", "wandb.mode=disabled"])
    llm = RolloutWorker(cfg, model).engine.llm
    state: dict = {}
    for f in sorted(Path(model).glob("*.safetensors")):
        state.update(load_file(f))
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(list(state.items())),
                                                     "is_checkpoint_format": True})
        llm.reset_prefix_cache()
        times.append(time.perf_counter() - t0)
    return times[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="3,100,500", help="state-dict sizes in MiB, comma-separated")
    ap.add_argument("--reps", type=int, default=6)
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("vllm").setLevel(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(prefix="reload-cost-") as tmp:
        for mib in (float(s) for s in args.sizes.split(",")):
            model = build_model(mib, Path(tmp))
            nbytes = sum(f.stat().st_size for f in Path(model).glob("*.safetensors"))
            rows.append([f"{nbytes / MiB:.1f} MiB", spread([t * 1e3 for t in reload_seconds(model, args.reps)])])
    print("\n## vLLM reload_weights from memory (ms, median [min, max])\n")
    print(markdown_table(["state dict (file)", "reload + prefix-cache reset ms"], rows))


if __name__ == "__main__":
    main()
