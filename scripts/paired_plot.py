"""One paired plot from several `mrt-ray grid` reports: each method's change from its own grid's baseline (Δ tokens in
%, Δ pass@1 in points, 95% CI bars on both axes), e.g. methods trained on two testbed versions, each against the
baseline trained on the same base policy and seeds.

    .venv/bin/python scripts/paired_plot.py runs/grid7/grid.json runs/grid_l1/grid.json:cued \\
        --out docs/img/paired_vs_grpo_all.png

A `:suffix` after a grid.json labels that grid's methods ("l1_exact (cued)"). Prints the points as a table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mrt_ray.eval import plots


def points(spec: str) -> list[tuple[str, float, float, float, float]]:
    """(label, Δ tokens %, Δ pass@1 points, CI of Δ pass@1, CI of Δ tokens) per method of one grid.json[:suffix]."""
    path, _, suffix = spec.partition(":")
    if not Path(path).is_file():
        raise SystemExit(f"paired_plot: {path} not found (run `mrt-ray grid` to write it)")
    out = []
    for method, row in json.loads(Path(path).read_text())["summary"].items():
        vs = row.get("vs_baseline")
        if method == "base" or not vs:
            continue
        acc, tok = vs["accuracy"], vs["tokens_rel"]
        out.append((f"{method} ({suffix})" if suffix else method, 100 * tok["mean"], 100 * acc["mean"],
                    100 * (acc["ci95"] or 0.0), 100 * (tok["ci95"] or 0.0)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("grids", nargs="+", help="grid.json paths, each optionally with :suffix")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--baseline", default="GRPO", help="the baseline's name in the axis labels")
    args = ap.parse_args()
    pts = [p for g in args.grids for p in points(g)]
    plots.plot_pareto(pts, args.out, (f"Change from {args.baseline} on the same seeds (paired, 95% CI)",
                                      f"Δ mean completion tokens vs {args.baseline} (%)", "Δ pass@1 (points)"))
    print("| method | Δ tokens % | Δ pass@1 (points) |\n|---|---|---|")
    for label, tok, acc, acc_ci, tok_ci in pts:
        print(f"| {label} | {tok:+.1f} ± {tok_ci:.1f} | {acc:+.1f} ± {acc_ci:.1f} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
