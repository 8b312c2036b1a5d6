"""`mrt-ray` command line: train, bootstrap, eval, sweep, star, grid, report. The console shows mrt-ray's own lines
and one progress bar; the output of the libraries underneath goes to the run's logs/ folder (mrt_ray/console.py;
`-v` shows it here). User mistakes print one clear message (no traceback) and exit 2; a failure inside the run prints
one line with the log that holds its traceback and exits 1; `--dry-run` prints the resolved configuration and
exits."""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from mrt_ray import console
from mrt_ray.config import ConfigError, load_config, to_yaml
from mrt_ray.validation import validate

COMMANDS = {
    "train": "train a policy (GRPO/RLOO/Dr.GRPO, length penalty, MRT) on Ray",
    "bootstrap": "build and SFT the embedded base policy (cached by config hash)",
    "eval": "evaluate models (model=[LABEL:]PATH or model=LABEL:openai:URL for a served model ... "
            "data=embedded|FILE): pass@1, maj@k, budget forcing, regret, J by episode",
    "sweep": "train the length-penalty family (algo=length_penalty, one model per sweep.alphas, same seed and "
             "steps) and write a table and a Pareto plot of held-out accuracy against mean tokens",
    "star": "MRT-STaR (algo=star): sample, estimate J after every episode, fine-tune on the correct traces that make "
            "the most progress",
    "grid": "train every method of grid.methods with every seed of grid.seeds, evaluate each member as soon as it is "
            "trained beside its seed's base policy, and rewrite the seed statistics after every member (mean +- 95% "
            "CI, paired differences against grid.baseline); rerun with the same run.dir to continue or to add "
            "methods or seeds",
}
REPORT = ("write one self-contained HTML page for training runs, eval directories and sweeps: learning curves, step "
          "times, push checks, progress and J by episode, budget forcing and regret, traces coloured by progress; "
          "runs of one config with several seeds are shown as means with 95% confidence intervals")
VERBOSE = "also show the output of vLLM, DeepSpeed, Ray, W&B and torch here (else: <run>/logs/); or MRT_RAY_VERBOSE=1"


def _user_error(e: BaseException) -> bool:
    """Errors caused by the user's input (or a served model that cannot be reached): their message is enough."""
    return isinstance(e, (ConfigError, FileNotFoundError, FileExistsError)) or (
        isinstance(e, (ValueError, ConnectionError)) and type(e).__module__.startswith("mrt_ray")
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mrt-ray", description="RL for efficient LLM reasoning on Ray.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in COMMANDS.items():
        s = sub.add_parser(name, help=help_.replace("%", "%%"), description=help_)  # help is %-formatted
        s.add_argument("--config", help="a YAML file merged over conf/default.yaml")
        s.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
        s.add_argument("-v", "--verbose", action="store_true", help=VERBOSE)
        s.add_argument("overrides", nargs="*", help="key=value (OmegaConf dotlist) or group=preset (algo=mrt)")
    s = sub.add_parser("report", help=REPORT.split(":")[0], description=REPORT)
    s.add_argument("paths", nargs="+", metavar="RUN",
                   help="a run directory (metrics.jsonl), an eval directory (eval.json) or a sweep directory")
    s.add_argument("-o", "--out", help="the HTML file (default: RUN/report.html for one run, else "
                                       "report-<time>.html beside the runs)")
    s.add_argument("-v", "--verbose", action="store_true", help=VERBOSE)
    return p


def _trained(cfg, summary: dict) -> str:
    """The one line that ends `mrt-ray train`: where the run is and its final held-out numbers."""
    run_dir = console.shown(cfg.resume or cfg.run.dir)
    acc, se = summary.get("eval/sampled_accuracy"), summary.get("eval/sampled_accuracy_se")
    held = "" if acc is None else (f"; held-out sampled accuracy {100 * acc:.1f}% ± {100 * (se or 0):.1f}, "
                                   f"{summary.get('eval/sampled_tokens_mean', float('nan')):.1f} tokens")
    return (f"trained {summary['steps']} steps in {summary['train_seconds']:.0f} s{held}. Summary: "
            f"{run_dir}/summary.json; see it: mrt-ray report {run_dir}")


def run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    console.setup(args.verbose)
    if args.command == "report":
        from mrt_ray.report import write_report

        path = write_report([Path(p) for p in args.paths], Path(args.out) if args.out else None)
        console.log.info("wrote %s", console.shown(path))
        return 0
    overrides = args.overrides
    if args.command == "eval":  # model= and data= are eval's own arguments (mrt_ray/eval/plan.py), not config keys
        from mrt_ray.eval.plan import parse_eval_args

        eval_args = parse_eval_args(overrides)
        overrides = list(eval_args.overrides)
    if args.command in ("sweep", "star"):  # the preset comes first, so the user's algo.* overrides still apply
        overrides = ["algo=length_penalty" if args.command == "sweep" else "algo=star", *overrides]
    cfg = load_config(args.config, overrides)
    if not (cfg.ray.address or os.environ.get("RAY_ADDRESS")):
        # a local cluster with token authentication; Ray reads this once, when it is imported: validation is the
        # first to import it (through the method registry), so this comes before it
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    validate(cfg)
    if args.dry_run:
        print(to_yaml(cfg), end="", file=console.out())
        return 0
    if args.command in ("train", "star", "sweep", "grid") and not cfg.resume:
        from mrt_ray.models import check_model

        check_model(cfg)  # before a run directory is made
    if args.command == "bootstrap":
        from mrt_ray.bootstrap import bootstrap

        console.attach(cfg.bootstrap.cache_dir, "bootstrap")
        path = bootstrap(cfg)
        result = {"model": str(path), **json.loads((path / "bootstrap.json").read_text())}
    elif args.command in ("train", "star"):
        from mrt_ray.trainer import train

        console.log.info(_trained(cfg, train(cfg)))
        return 0
    elif args.command == "eval":
        from mrt_ray.eval.runner import run_eval

        result = run_eval(cfg, eval_args.models)
    elif args.command == "sweep":
        from mrt_ray.sweep import run_sweep

        result = run_sweep(cfg)
    else:  # grid
        from mrt_ray.grid import run_grid

        result = run_grid(cfg, args.config, list(overrides))
    print(json.dumps(result, indent=2), file=console.out())
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        print("mrt-ray: interrupted", file=console.term())
        return 130
    except Exception as e:  # noqa: BLE001 - user errors get one line; a failure one line and its log
        if _user_error(e):
            print(f"mrt-ray: {e}", file=console.term())
            return 2
        if console.verbose() or (console.log_file() is None and console.failure_line(e) is None):
            raise  # the traceback on the console: asked for, or there is no log to point to
        traceback.print_exc()  # into the driver's log (stderr is redirected there)
        print(f"mrt-ray: {console.error_line(e)}", file=console.term())
        return 1
    finally:
        console.restore()
