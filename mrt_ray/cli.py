"""`mrt-ray` command line: train, bootstrap, eval, sweep, star. User mistakes print one clear message (no traceback)
and exit 2; `--dry-run` prints the resolved configuration and exits."""
from __future__ import annotations

import argparse
import json
import sys

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
}


def _user_error(e: BaseException) -> bool:
    """Errors caused by the user's input (or a served model that cannot be reached): their message is enough."""
    return isinstance(e, (ConfigError, FileNotFoundError, FileExistsError)) or (
        isinstance(e, (ValueError, ConnectionError)) and type(e).__module__.startswith("mrt_ray")
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mrt-ray", description="RL for efficient LLM reasoning on Ray.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in COMMANDS.items():
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("--config", help="a YAML file merged over conf/default.yaml")
        s.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
        s.add_argument("overrides", nargs="*", help="key=value (OmegaConf dotlist) or group=preset (algo=mrt)")
    return p


def run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    overrides = args.overrides
    if args.command == "eval":  # model= and data= are eval's own arguments (mrt_ray/eval/plan.py), not config keys
        from mrt_ray.eval.plan import parse_eval_args

        eval_args = parse_eval_args(overrides)
        overrides = list(eval_args.overrides)
    if args.command in ("sweep", "star"):  # the preset comes first, so the user's algo.* overrides still apply
        overrides = ["algo=length_penalty" if args.command == "sweep" else "algo=star", *overrides]
    cfg = load_config(args.config, overrides)
    validate(cfg)
    if args.dry_run:
        print(to_yaml(cfg), end="")
        return 0
    if args.command == "bootstrap":
        from mrt_ray.bootstrap import bootstrap

        path = bootstrap(cfg)
        print(json.dumps({"model": str(path), **json.loads((path / "bootstrap.json").read_text())}, indent=2))
    elif args.command in ("train", "star"):
        from mrt_ray.trainer import train

        summary = train(cfg)
        print(json.dumps(summary, indent=2))
    elif args.command == "eval":
        from mrt_ray.eval.runner import run_eval

        print(json.dumps(run_eval(cfg, eval_args.models), indent=2))
    elif args.command == "sweep":
        from mrt_ray.sweep import run_sweep

        print(json.dumps(run_sweep(cfg), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        print("mrt-ray: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - user errors get one line, bugs keep their traceback
        if _user_error(e):
            print(f"mrt-ray: {e}", file=sys.stderr)
            return 2
        raise
