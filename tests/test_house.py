"""The house rules, checked: ruff is clean, modules import one another without circles and along the data path's
layers, and files stay small."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "mrt_ray"


def _module(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def import_graph(top_level_only: bool) -> dict[str, set[str]]:
    """module -> the mrt_ray modules it imports (at import time only, or anywhere in its body)."""
    mods = {_module(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        for node in nodes:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mrt_ray"):
                names = [f"{node.module}.{a.name}" for a in node.names]
                targets = {n for n in names if n in mods} or {node.module}
            elif isinstance(node, ast.Import):
                targets = {a.name for a in node.names if a.name.startswith("mrt_ray")}
            else:
                continue
            graph[mod] |= {t for t in targets if t in mods and t != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                found.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_no_import_circles():
    graph = import_graph(top_level_only=True)
    for m in list(graph):  # a package's __init__ re-exporting its own modules is not a circle
        graph[m] = {t for t in graph[m] if not (t.startswith(m + ".") and m.count(".") < t.count("."))}
    assert cycles(graph) == []


# (importer prefix, imported prefix): arrows that would run back up the data path or across its two ends
FORBIDDEN = [
    ("mrt_ray.rollout", "mrt_ray.learner"), ("mrt_ray.learner", "mrt_ray.rollout"),
    ("mrt_ray.config", "mrt_ray.validation"), ("mrt_ray.config", "mrt_ray.algos"),
    ("mrt_ray.config", "mrt_ray.rewards"), ("mrt_ray.eval", "mrt_ray.trainer"),
    ("mrt_ray.trainer", "mrt_ray.bootstrap"), ("mrt_ray.rollout", "mrt_ray.recovery"),
    ("mrt_ray.weight_sync.group", "mrt_ray.learner"), ("mrt_ray.weight_sync.group", "mrt_ray.rollout"),
]
CONTROLLERS = ("mrt_ray.trainer", "mrt_ray.cli", "mrt_ray.grid", "mrt_ray.sweep", "mrt_ray.eval.runner")


def test_imports_follow_the_layers():
    graph = import_graph(top_level_only=False)
    bad = [(m, t) for m, ts in graph.items() for t in ts for a, b in FORBIDDEN if m.startswith(a) and t.startswith(b)]
    assert bad == []
    lower = ("mrt_ray.config", "mrt_ray.registry", "mrt_ray.utils", "mrt_ray.tasks", "mrt_ray.rollout",
             "mrt_ray.algos", "mrt_ray.rewards", "mrt_ray.weight_sync", "mrt_ray.learner", "mrt_ray.progress",
             "mrt_ray.episodes", "mrt_ray.trajectory", "mrt_ray.models", "mrt_ray.stats")
    up = [(m, t) for m, ts in graph.items() if m.startswith(lower) for t in ts if t.startswith(CONTROLLERS)]
    assert up == []  # no lower layer reaches up into a controller


def test_files_stay_small():
    big = {str(p.relative_to(REPO)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 420}
    assert big == {}


def test_ruff_is_clean():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "mrt_ray", "tests", "bench", "scripts"], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]
