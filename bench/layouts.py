"""Which learner/rollout layout is fastest on this machine: several layouts side by side in one invocation.

    .venv/bin/python bench/layouts.py [--rounds 4] [--block 3] [--warmup 1] \\
        [--layout LABEL=key=value,key=value ...] [key=value ...]

Every layout is an mrt-ray session (its own actors, one local Ray cluster) on the same workload (bench/harness.py's
WORKLOAD, the embedded base model); all stay up, and after `warmup` untimed steps each they take turns in blocks of
`block` steps, the order reversed every round (ABC, CBA, ...), so drift on the machine hits every layout alike. The
first layout is the reference: per round, each layout's median step over the reference's gives a paired ratio. An
async layout's prefetched rollout is drained (untimed) at the end of each block, so a block's first step generates
in full. A benchmark, not a test: nothing is asserted.

With `--one-at-a-time` (for a model whose sessions do not fit in memory together, e.g. two SmolLM2 sessions on
24 GiB) only one session is up at a time: each block starts its layout's session, runs the warm-up and the block, and
closes it. Every block then runs the same steps (the same prompts and seeds) from the base policy.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from harness import WORKLOAD, MrtSession, bench_config, markdown_table, median, phase_summary, spread

DEFAULT_LAYOUTS = [
    "two_ranks=learner.num_ranks=2",  # the default before learner.num_ranks=0 (derived)
    "default=",  # the derived layout: on CPU one rank on the node's cores (async: one thread)
    "one_rank_z0=learner.zero_stage=0",
    "async_z0=learner.zero_stage=0,train.async_rollout=true",
]


def parse_layout(text: str) -> tuple[str, list[str]]:
    label, _, overrides = text.partition("=")
    if not label.replace("_", "").isalnum():
        raise SystemExit(f"--layout {text!r}: the label before '=' must be letters, digits and '_'")
    return label, [o for o in overrides.split(",") if o]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4, help="alternation rounds (each: one block per layout)")
    ap.add_argument("--block", type=int, default=3, help="steps per block")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per layout first")
    ap.add_argument("--layout", action="append", help="LABEL=key=value,key=value (repeatable; default: four)")
    ap.add_argument("--one-at-a-time", action="store_true", help="a fresh session per block, closed after it (see "
                    "the module doc)")
    ap.add_argument("--out", type=Path, help="write the raw records here (JSON)")
    ap.add_argument("overrides", nargs="*", help="config key=value overrides for every layout")
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    layouts = [parse_layout(t) for t in (args.layout or DEFAULT_LAYOUTS)]
    # room in Ray's bookkeeping for every layout's actors at once (each is idle while another is timed)
    base = [*WORKLOAD, f"ray.num_cpus={2 * len(layouts) + 2}", *args.overrides]
    sessions: dict[str, MrtSession] = {}
    rounds: dict[str, list[list[dict]]] = {label: [] for label, _ in layouts}
    ranks: dict[str, int] = {}
    load = [os.getloadavg()[0]]

    def start(label: str, overrides: list[str]) -> MrtSession:
        session = MrtSession(bench_config(f"layout-{label}", [*base, *overrides]))
        ranks[label] = session.trainer.cfg.learner.num_ranks
        try:
            if args.warmup:
                session.steps(args.warmup)
        except BaseException:
            session.close()
            raise
        return session

    try:
        if not args.one_at_a_time:
            for label, overrides in layouts:
                sessions[label] = start(label, overrides)
        load.append(os.getloadavg()[0])
        for r in range(args.rounds):
            for label, overrides in (layouts if r % 2 == 0 else layouts[::-1]):
                session = sessions.get(label) or start(label, overrides)
                try:
                    rounds[label].append(session.steps(args.block))
                finally:
                    if args.one_at_a_time:
                        session.close()
        load.append(os.getloadavg()[0])
    finally:
        for s in sessions.values():
            s.close()
    report = {"argv": sys.argv, "layouts": dict(layouts), "ranks": ranks, "rounds": rounds, "load_average_1min": load}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    ref = layouts[0][0]
    ref_medians = [median([r["step_seconds"] for r in block]) for block in rounds[ref]]
    rows = []
    for label, overrides in layouts:
        steps = [r for block in rounds[label] for r in block]
        ph = phase_summary(steps)
        ratios = [median([r["step_seconds"] for r in block]) / m for block, m in zip(rounds[label], ref_medians)]
        step = spread([r["step_seconds"] for r in steps])
        rows.append([label, " ".join(overrides) or "(defaults)", ranks[label], step,
                     ph.get("generate_seconds", float("nan")), ph.get("learn_seconds_wall", float("nan")),
                     ph.get("push_seconds", float("nan")), spread(ratios)])
    print(f"\n{args.rounds} rounds x {args.block} steps per layout, after {args.warmup} warm-up step(s) each; "
          f"overrides: {' '.join(args.overrides) or '(none)'}\n")
    print(markdown_table(["layout", "overrides", "learner ranks", "step s, median [min, max]", "generate s",
                          "learn s", "push s", f"step / {ref}'s, per round"], rows))
    print(f"\n1-minute load average (start, after warm-up, after the rounds): {', '.join(f'{x:.1f}' for x in load)}")


if __name__ == "__main__":
    main()
